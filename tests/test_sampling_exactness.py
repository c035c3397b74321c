"""Speculative sampling reproduces the target's distribution exactly (statistical tests).

Each test draws many samples with fixed seeds and applies a chi-square test at a false-alarm
rate of about 1e-6; a negative control shows the same test rejects a verifier whose residual
ignores the tokens the drafter cannot propose.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from evospec.runtime.sampling import sampling_probs
from evospec.runtime.tree import DraftTree
from evospec.runtime.verify import verify_sampling

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.tiny import TinyShape, tiny_drafter, tiny_target

Z = 4.75  # one-sided normal quantile for a ~1e-6 false-alarm rate


def chi_square_ok(counts: dict, expected: dict, n: int) -> tuple[bool, float, float]:
    """Pool cells expected below 5 counts, then compare the statistic with the Wilson-Hilferty quantile."""
    stat, pooled_obs, pooled_exp, cells = 0.0, 0, 0.0, 0
    for key, p in expected.items():
        e, o = p * n, counts.get(key, 0)
        if e < 5:
            pooled_obs, pooled_exp = pooled_obs + o, pooled_exp + e
            continue
        stat += (o - e) ** 2 / e
        cells += 1
    if pooled_exp > 0:
        stat += (pooled_obs - pooled_exp) ** 2 / max(pooled_exp, 1e-9)
        cells += 1
    unexpected = sum(c for k, c in counts.items() if expected.get(k, 0.0) == 0.0)
    df = max(cells - 1, 1)
    critical = df * (1 - 2 / (9 * df) + Z * math.sqrt(2 / (9 * df))) ** 3
    return stat < critical and unexpected == 0, stat, critical


def first_token_counts(tree: DraftTree, logits: torch.Tensor, n: int, verifier=verify_sampling) -> dict:
    g = torch.Generator().manual_seed(1234)
    counts: dict[int, int] = {}
    for _ in range(n):
        verdict = verifier(tree, logits, 1.0, 1.0, g)
        token = int(tree.tokens[verdict.accepted[0]]) if verdict.accepted else verdict.bonus
        counts[token] = counts.get(token, 0) + 1
    return counts


def root_tree(tokens: list[int], proposals: torch.Tensor | None) -> DraftTree:
    n = len(tokens)
    return DraftTree(
        tokens=torch.tensor(tokens), parents=torch.full((n,), -1), depths=torch.ones(n, dtype=torch.long),
        proposals=proposals,
    )


LOGITS = torch.tensor([[2.0, 1.5, 0.2, -0.5, 1.0, 0.0]])  # the target likes tokens 0, 1 and 4


@pytest.mark.parametrize("children", [[0], [3], [1, 3, 2], [5, 4, 0, 1]])
def test_deterministic_siblings_emit_target_distribution(children):
    p = sampling_probs(LOGITS[0], 1.0)
    counts = first_token_counts(root_tree(children, None), LOGITS.repeat(len(children) + 1, 1), 20_000)
    ok, stat, critical = chi_square_ok(counts, dict(enumerate(p.tolist())), 20_000)
    assert ok, (counts, stat, critical)


def _drafter_q(draft_vocab: list[int], weights: list[float]) -> torch.Tensor:
    q = torch.zeros(6, dtype=torch.float64)
    q[draft_vocab] = torch.tensor(weights, dtype=torch.float64)
    return q / q.sum()


def test_sampled_draft_with_narrow_vocabulary_emits_target_distribution():
    """q is zero on tokens 0 and 1, which the target likes most: the residual must keep their mass."""
    q = _drafter_q([2, 3, 4, 5], [0.4, 0.3, 0.2, 0.1])
    p = sampling_probs(LOGITS[0], 1.0)
    g = torch.Generator().manual_seed(7)
    counts: dict[int, int] = {}
    n = 20_000
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=g))
        tree = root_tree([x], q[None])
        verdict = verify_sampling(tree, LOGITS.repeat(2, 1), 1.0, 1.0, g)
        token = x if verdict.accepted else verdict.bonus
        counts[token] = counts.get(token, 0) + 1
    ok, stat, critical = chi_square_ok(counts, dict(enumerate(p.tolist())), n)
    assert ok, (counts, stat, critical)


def test_negative_control_wrong_residual_is_rejected():
    """A residual restricted to the drafter's vocabulary (a classic bug) fails the same test."""
    from evospec.runtime import verify as verify_module

    def wrong_verifier(tree, logits, temperature, top_p, generator):
        p = sampling_probs(logits[0], temperature, top_p)
        x = int(tree.tokens[0])
        q = tree.proposals[0]
        if float(torch.rand(1, generator=generator, dtype=torch.float64)) * float(q[x]) < float(p[x]):
            return verify_module.Verdict([0], 0)
        p_draft = p * (q > 0)
        p_draft = p_draft / p_draft.sum()  # target renormalised on the draft vocabulary: mass of 0, 1 lost
        residual = (p_draft - q).clamp_min(0)
        return verify_module.Verdict([], int(torch.multinomial(residual / residual.sum(), 1, generator=generator)))

    q = _drafter_q([2, 3, 4, 5], [0.4, 0.3, 0.2, 0.1])
    p = sampling_probs(LOGITS[0], 1.0)
    g = torch.Generator().manual_seed(7)
    counts: dict[int, int] = {}
    n = 20_000
    for _ in range(n):
        x = int(torch.multinomial(q, 1, generator=g))
        verdict = wrong_verifier(root_tree([x], q[None]), LOGITS.repeat(2, 1), 1.0, 1.0, g)
        token = x if verdict.accepted else verdict.bonus
        counts[token] = counts.get(token, 0) + 1
    ok, _, _ = chi_square_ok(counts, dict(enumerate(p.tolist())), n)
    assert not ok


def exact_joint(model, prompt: list[int], steps: int, temperature: float, top_p: float) -> dict:
    """P(first ``steps`` new tokens) under the target's tempered, top-p-filtered distribution."""
    vocab = model.config.vocab_size
    joint: dict[tuple, float] = {}
    with torch.no_grad():
        for seq in itertools.product(range(vocab), repeat=steps):
            prob = 1.0
            for i in range(steps):
                logits = model(torch.tensor([prompt + list(seq[:i])])).logits[0, -1]
                prob *= float(sampling_probs(logits, temperature, top_p)[seq[i]])
                if prob == 0.0:
                    break
            joint[seq] = prob
    return joint


@pytest.mark.parametrize(
    ("draft_tree", "top_p"),
    [("chain", 1.0), ("tree", 0.9)],
    ids=["sampled-chain", "deterministic-tree-top-p"],
)
def test_end_to_end_joint_distribution(draft_tree, top_p):
    """Joint law of the first 3 new tokens (prefill token + one speculative step) equals the target's."""
    shape = TinyShape(vocab_size=6, hidden_size=16, layers=4, heads=2, kv_heads=1, intermediate_size=32)
    model = tiny_target(shape, seed=11, init_std=0.8, dtype=torch.float64)
    # the drafter can only propose tokens 2..5; the target favours others often
    drafter = tiny_drafter(model, seed=12, draft_ids=torch.tensor([2, 3, 4, 5]), init_std=0.5)
    generator = SpeculativeGenerator.from_models(model, drafter)
    prompt, temperature, n = [1, 4, 2], 1.0, 2000
    expected = exact_joint(model, prompt, 3, temperature, top_p)
    counts: dict[tuple, int] = {}
    accepted = 0
    for seed in range(n):
        decode = DecodeSettings(
            max_new_tokens=3, temperature=temperature, top_p=top_p, seed=seed,
            draft_tree=draft_tree, draft_depth=3, draft_topk=2, draft_tokens=5,
        )
        result = generator.generate(prompt, decode)
        counts[tuple(result.token_ids)] = counts.get(tuple(result.token_ids), 0) + 1
        accepted += sum(result.stats.accepted_lengths)
    ok, stat, critical = chi_square_ok(counts, expected, n)
    assert ok, (stat, critical)
    assert accepted > n // 10, "the drafter must be accepted often enough for the test to mean something"
