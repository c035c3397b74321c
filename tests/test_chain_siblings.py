"""A greedy chain with siblings (``DecodeSettings.draft_siblings``): the drafter's second choice at each of the
first levels, verified as a leaf beside the chain. The chain inside is the plain chain, the siblings are the
second choices, output stays the target's greedy output, and siblings are accepted where the second choice is
right."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evospec import DecodeSettings, SettingsError, SpeculativeGenerator
from evospec.runtime import generator as generator_module
from evospec.runtime.drafter import DrafterKVCache
from evospec.runtime.tree import DraftRequest, draft_tree
from evospec.testing.tiny import TINY_SHAPES, tiny_drafter, tiny_target

from .conftest import hf_greedy


@pytest.mark.parametrize(("fields", "message"), [
    ({"draft_siblings": 6, "draft_depth": 5}, "draft_siblings must be between 0 and draft_depth"),
    ({"draft_siblings": -1}, "draft_siblings must be between 0 and draft_depth"),
    ({"draft_siblings": 2, "draft_tree": "tree"}, "a tree has its own children"),
    ({"draft_siblings": 2, "draft_tree": "chain", "temperature": 0.7}, "needs greedy decoding"),
    ({"draft_siblings": 2, "draft_tree": "chain", "draft_sibling_ratio": 1.0}, "must be 0 .* or > 1"),
    ({"draft_siblings": 2, "draft_tree": "chain", "draft_sibling_ratio": -2.0}, "must be 0 .* or > 1"),
    ({"draft_tree": "chain", "draft_sibling_ratio": 2.0}, "needs draft_siblings > 0"),
])
def test_settings_refuse_siblings_they_cannot_verify(fields, message):
    with pytest.raises(SettingsError, match=message):
        DecodeSettings(**fields)


def _chain(drafter, siblings: int, depth: int = 4, ratio: float = 0.0, seed: int = 0):
    """One greedy chain drafted from a fixed root state, and the root logits it started from."""
    torch.manual_seed(seed)
    cache = DrafterKVCache(drafter.config, 64, torch.device("cpu"), drafter.dtype)
    hidden = torch.randn(1, drafter.config.hidden_size, dtype=drafter.dtype)
    logits = torch.randn(drafter.config.draft_vocab_size, dtype=drafter.dtype)
    req = DraftRequest(hidden=hidden, logits=logits, committed=8, width=1, depth=depth, budget=depth,
                       siblings=siblings, sibling_ratio=ratio)
    return draft_tree(drafter, cache, req, torch.Generator()), logits


def test_siblings_are_second_choices_after_the_unchanged_chain():
    model = tiny_target(TINY_SHAPES["llama"], seed=2, dtype=torch.float64)
    drafter = tiny_drafter(model, draft_vocab=48, seed=3)
    plain, _ = _chain(drafter, 0)
    tree, root_logits = _chain(drafter, 3)
    n = plain.size
    assert n == 4 and tree.size == n + 3
    assert tree.tokens[:n].tolist() == plain.tokens.tolist()  # the chain inside is the plain chain
    assert tree.parents.tolist() == [-1, 0, 1, 2, -1, 0, 1]  # each sibling beside the chain's node of its level
    assert tree.depths.tolist() == [1, 2, 3, 4, 1, 2, 3]
    second = int(drafter.draft_to_target(root_logits.topk(2).indices[1]))
    assert int(tree.tokens[n]) == second  # level 1's sibling: the root logits' second choice
    assert int(tree.tokens[n]) != int(tree.tokens[0])
    # a sibling's score is its parent's cumulative log-probability plus its own, below its chain neighbour's
    assert float(tree.scores[n]) < float(tree.scores[0])
    assert all(float(tree.scores[n + k]) < float(tree.scores[k]) for k in range(3))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sibling_ratio_keeps_exactly_the_levels_whose_first_choice_is_under_it(seed):
    """``sibling_ratio``: a level keeps its second choice only where the first is less than ratio times as
    likely. The kept siblings are the unfiltered tree's siblings of exactly those levels (same ids, parents,
    depths, scores), after the unchanged chain."""
    model = tiny_target(TINY_SHAPES["llama"], seed=2, dtype=torch.float64)
    drafter = tiny_drafter(model, draft_vocab=48, seed=3)
    every, _ = _chain(drafter, 5, depth=5, seed=seed)
    n = 5
    assert every.size == 2 * n
    # the log-probability gap between each level's first and second choice, from the unfiltered tree's scores
    gaps = [float(every.scores[k] - every.scores[n + k]) for k in range(n)]
    ordered = sorted(gaps)
    ratio = math.exp((ordered[1] + ordered[2]) / 2)  # between the second and third smallest gap: 2 levels kept
    kept = [k for k in range(n) if gaps[k] < math.log(ratio)]
    assert len(kept) == 2
    tree, _ = _chain(drafter, 5, depth=5, ratio=ratio, seed=seed)
    assert tree.tokens[:n].tolist() == every.tokens[:n].tolist()
    assert tree.size == n + len(kept)
    assert tree.tokens[n:].tolist() == [int(every.tokens[n + k]) for k in kept]
    assert tree.parents.tolist() == list(range(-1, n - 1)) + [k - 1 for k in kept]
    assert tree.depths.tolist() == list(range(1, n + 1)) + [k + 1 for k in kept]
    assert torch.equal(tree.scores[n:], every.scores[n:][kept])
    # a ratio above every level's gap keeps them all
    assert _chain(drafter, 5, depth=5, ratio=math.exp(ordered[-1]) * 1.01, seed=seed)[0].size == 2 * n


def test_siblings_are_never_priced_by_a_value_rule():
    from evospec.runtime.tree import StepCosts

    model = tiny_target(TINY_SHAPES["llama"], seed=2, dtype=torch.float64)
    drafter = tiny_drafter(model, draft_vocab=48, seed=3)
    cache = DrafterKVCache(drafter.config, 64, torch.device("cpu"), drafter.dtype)
    req = DraftRequest(hidden=torch.randn(1, drafter.config.hidden_size, dtype=drafter.dtype),
                       logits=torch.randn(48, dtype=drafter.dtype), committed=8, width=1, depth=3, budget=3,
                       siblings=2, costs=StepCosts(fixed_ms=1.0, level_ms=1.0, row_ms=1.0))
    with pytest.raises(SettingsError, match="siblings are drafted whole"):
        draft_tree(drafter, cache, req, torch.Generator())


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(sorted(TINY_SHAPES)),
    seed=st.integers(0, 10_000),
    prompt=st.lists(st.integers(0, 95), min_size=1, max_size=12),
    depth=st.integers(1, 5),
    ratio=st.sampled_from([0.0, 1.5, 4.0]),
    data=st.data(),
)
def test_chains_with_siblings_match_hf_greedy(family, seed, prompt, depth, ratio, data):
    model = tiny_target(TINY_SHAPES[family], seed=seed, dtype=torch.float64, layer_scale=0.3)
    drafter = tiny_drafter(model, draft_vocab=data.draw(st.integers(8, 96)), seed=seed + 1)
    decode = DecodeSettings(max_new_tokens=data.draw(st.integers(1, 24)), draft_tree="chain", draft_depth=depth,
                            draft_siblings=data.draw(st.integers(1, depth)), draft_sibling_ratio=ratio)
    result = SpeculativeGenerator.from_models(model, drafter).generate(prompt, decode)
    assert result.token_ids == hf_greedy(model, prompt, decode.max_new_tokens)


def test_siblings_are_accepted_and_keep_the_target_greedy_output(trained_pair, monkeypatch):
    """On the trained pair the second choice is right on some steps where the first is wrong: those steps accept
    a sibling (its cache slot moves, the chain's rolls back) and the output is still the target's own."""
    model, drafter = trained_pair
    accepted_siblings = []
    verify = generator_module.verify_greedy

    def recording(tree, logits):
        verdict = verify(tree, logits)
        parents = tree.parents.tolist()
        accepted_siblings.extend(i for i in verdict.accepted_nodes if parents[i] != i - 1)
        return verdict

    monkeypatch.setattr(generator_module, "verify_greedy", recording)
    generator = SpeculativeGenerator.from_models(model, drafter)
    chain = DecodeSettings(max_new_tokens=40, draft_tree="chain", draft_depth=4)
    with_siblings = DecodeSettings(max_new_tokens=40, draft_tree="chain", draft_depth=4, draft_siblings=2)
    for prompt in ([3, 14, 15, 92], [2, 7, 1, 8], [50, 60], [11, 5, 9, 30, 2]):
        expected = hf_greedy(model, prompt, 40)
        before = len(accepted_siblings)
        plain_chain = generator.generate(prompt, chain)
        assert len(accepted_siblings) == before  # a plain chain has no sibling to accept
        result = generator.generate(prompt, with_siblings)
        assert plain_chain.token_ids == expected and result.token_ids == expected
    assert accepted_siblings, "no step accepted a sibling: the sibling path never ran"


def _recorded_trees(monkeypatch) -> list:
    trees = []
    verify = generator_module.verify_greedy

    def recording(tree, logits):
        trees.append(tree)
        return verify(tree, logits)

    monkeypatch.setattr(generator_module, "verify_greedy", recording)
    return trees


def _has_siblings(tree) -> bool:
    return any(p != i - 1 for i, p in enumerate(tree.parents.tolist()))


def test_auto_budget_chooses_between_the_chain_and_the_chain_with_siblings(trained_pair, monkeypatch):
    """``draft_budget="auto"`` with siblings: steps draft the plain chain or the whole chain with its siblings (no
    value rule cuts it), the chooser compares them on the same text, and the output is the target's own."""
    model, drafter = trained_pair
    trees = _recorded_trees(monkeypatch)
    generator = SpeculativeGenerator.from_models(model, drafter)
    s = DecodeSettings(max_new_tokens=60, draft_tree="chain", draft_depth=4, draft_siblings=2, draft_budget="auto")
    for prompt in ([3, 14, 15, 92], [2, 7, 1, 8], [50, 60]):
        assert generator.generate(prompt, s).token_ids == hf_greedy(model, prompt, 60)
    assert generator.shapes.chosen["chain"] >= 6 and generator.shapes.chosen["tree"] >= 6  # both shapes drafted
    with_siblings = [t for t in trees if _has_siblings(t)]
    plain = [t for t in trees if not _has_siblings(t)]
    assert with_siblings and plain
    assert all(t.depths.tolist()[:4] == [1, 2, 3, 4] for t in with_siblings)  # the whole chain, then its siblings
    assert all(t.parents.tolist() == list(range(-1, t.size - 1)) for t in plain)  # a chain step: the plain chain
    # a step with siblings holds the chain whole (its first nodes), so it says what the chain would have emitted
    assert generator.shapes.rate("chain") is not None and any(c is not None for *_, c in generator.shapes._steps["tree"])
    assert generator.step_costs._seen == 0  # chosen whole, never priced by the value rule
