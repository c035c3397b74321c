"""Top-p verification decides most acceptances before building the row's nucleus (``TargetRow``).

The shortcut must change nothing: for the same draws, every verdict equals the one the full path (nucleus
first, then the exact test) gives. Checked over random trees, proposals of every kind, float32 and float64
logits, temperatures and top-p values; the shortcut must also fire (or it saves nothing), and a shortcut
that forgets its nucleus condition must fail the same comparison (the check has the power it claims)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.runtime import verify
from evospec.runtime.tree import DraftTree
from evospec.runtime.verify import TargetRow, verify_sampling

V = 64


def random_case(seed: int, kind: str, dtype: torch.dtype) -> tuple[DraftTree, torch.Tensor]:
    """A chain-and-siblings tree of 5 nodes over a peaked target (so children are often likely)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(6, V, generator=g, dtype=torch.float64) * 3.0).to(dtype)
    parents = torch.tensor([-1, -1, 0, 2, 2])
    depths = torch.tensor([1, 1, 2, 3, 3])
    likely = logits.argsort(dim=-1, descending=True)[:, :4]  # draft among the target's top tokens
    pick = torch.randint(0, 4, (5,), generator=g)
    rows = torch.tensor([0, 0, 1, 3, 3])
    tokens = likely[rows, pick]
    tokens[1] = likely[0, (int(pick[0]) + 1) % 4]  # siblings differ
    tokens[4] = likely[3, (int(pick[3]) + 1) % 4]
    if kind == "point":
        return DraftTree(tokens=tokens, parents=parents, depths=depths), logits
    q = torch.softmax(torch.randn(5, V, generator=g, dtype=torch.float64) * 2.0, dim=-1)
    if kind == "dense":
        return DraftTree(tokens=tokens, parents=parents, depths=depths, proposals=q), logits
    columns = torch.randperm(V, generator=g)[:40]
    columns[:5] = tokens  # the drafted tokens are head columns
    sparse = torch.softmax(torch.randn(5, 40, generator=g, dtype=torch.float64) * 2.0, dim=-1)
    return DraftTree(tokens=tokens, parents=parents, depths=depths, proposals=sparse, proposal_ids=columns), logits


def verdicts(tree: DraftTree, logits: torch.Tensor, temperature: float, top_p: float, seeds: range) -> list:
    out = []
    for seed in seeds:
        v = verify_sampling(tree, logits, temperature, top_p, torch.Generator().manual_seed(seed))
        out.append((v.accepted_nodes, v.bonus))
    return out


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), kind=st.sampled_from(["point", "dense", "sparse"]),
       dtype=st.sampled_from([torch.float32, torch.float64]), temperature=st.sampled_from([0.6, 1.0, 1.3]),
       top_p=st.sampled_from([0.5, 0.8, 0.9, 0.95]))
def test_shortcut_verdicts_equal_the_full_path_draw_for_draw(seed, kind, dtype, temperature, top_p):
    tree, logits = random_case(seed, kind, dtype)
    fast = verdicts(tree, logits, temperature, top_p, range(30))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(TargetRow, "surely_accepts", lambda self, x, threshold: False)
        full = verdicts(tree, logits, temperature, top_p, range(30))
    assert fast == full


def test_shortcut_fires_on_likely_children(monkeypatch):
    fired = []
    original = TargetRow.surely_accepts

    def counting(self, x, threshold):
        decided = original(self, x, threshold)
        fired.append(decided)
        return decided

    monkeypatch.setattr(TargetRow, "surely_accepts", counting)
    for seed in range(20):
        tree, logits = random_case(seed, "sparse", torch.float32)
        verdicts(tree, logits, 1.0, 0.9, range(10))
    assert sum(fired) > len(fired) // 4, f"the shortcut decided {sum(fired)} of {len(fired)} first children"


def test_a_shortcut_without_its_nucleus_condition_is_caught(monkeypatch):
    """Accepting on ``u q(x) T < softmax(x)`` alone ignores that x may be outside the nucleus (its exact
    weight 0): the comparison above must see the difference."""

    def careless(self, x, threshold):
        return threshold * self.total < float(self._probs[x])

    differs = False
    for seed in range(40):
        tree, logits = random_case(seed, "dense", torch.float64)
        tree.tokens[0] = int(logits[0].argsort()[V // 2])  # a token no nucleus at top-p 0.5 keeps
        exact = verdicts(tree, logits, 1.0, 0.5, range(20))
        with monkeypatch.context() as m:
            m.setattr(TargetRow, "surely_accepts", careless)
            differs |= verdicts(tree, logits, 1.0, 0.5, range(20)) != exact
    assert differs


def test_slack_covers_two_summation_orders():
    """The slack exceeds what reordering a float64 sum of a 151k-token row can change, by a wide margin."""
    assert verify.SUM_SLACK > 151_851 * 2.0**-53 * 10
