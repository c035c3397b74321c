"""Sampled draft trees (runtime/sampled_tree.py): children drawn without replacement, each with its own law,
and a shape that never depends on a node's own draw. Their exactness is tested in test_sampling_exactness.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.core.errors import SettingsError
from evospec.runtime.sampled_tree import draws_without_replacement, frontier_per_level
from evospec.runtime.tree import DraftRequest
from evospec.testing.tiny import TINY_SHAPES, tiny_drafter, tiny_target


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=24), st.integers(1, 6), st.integers(0, 10_000))
def test_draws_without_replacement_and_their_laws(weights, count, seed):
    q = torch.tensor(weights, dtype=torch.float64)
    if float(q.sum()) == 0.0:
        q[0] = 1.0
    q = q / q.sum()
    ids, laws = draws_without_replacement(q, count, torch.Generator().manual_seed(seed))
    assert len(ids) == min(count, int((q > 0).sum())) == laws.shape[0]
    assert len(set(ids)) == len(ids)
    for i, x in enumerate(ids):
        expected = q.clone()
        expected[ids[:i]] = 0.0  # q without the draws before it, renormalised
        assert torch.allclose(laws[i], expected / expected.sum(), atol=1e-12)
        assert float(laws[i][x]) > 0.0


@pytest.mark.parametrize(("width", "depth", "budget", "expected"), [
    (2, 5, 10, 1), (2, 5, 18, 2), (2, 5, 64, 2), (4, 5, 20, 1), (8, 5, 32, 1), (2, 1, 10, 0), (3, 3, 3, 1)])
def test_frontier_per_level_spreads_the_budget_over_the_depth(width, depth, budget, expected):
    req = DraftRequest(hidden=torch.zeros(1, 4), logits=torch.zeros(8), committed=0, width=width, depth=depth,
                       budget=budget, temperature=1.0)
    assert frontier_per_level(req) == expected


class TreeCapture(SpeculativeGenerator):
    """The decoding loop unchanged, with every drafted tree kept."""

    trees: list

    def _draft(self, *args, **kwargs):
        tree, root_s, tree_s = super()._draft(*args, **kwargs)
        self.trees.append(tree)
        return tree, root_s, tree_s


def drafted_trees(settings_: DecodeSettings) -> list:
    model = tiny_target(TINY_SHAPES["llama"], seed=3)
    generator = TreeCapture.from_models(model, tiny_drafter(model, draft_vocab=48, seed=4, init_std=0.8))
    generator.trees = []
    generator.generate([3, 17, 42, 5, 9], settings_)
    assert len(generator.trees) >= 5
    return generator.trees


def test_sampled_tree_keeps_every_draw_and_grows_the_first_draws_to_full_depth():
    """Depth 4, 2 children a node, 8 nodes: every tree holds the path of first draws to depth 4 (the sampled
    chain), each of its nodes with a second draw beside it; siblings are consecutive, in draw order, each with its
    own law (the one before it without that draw)."""
    trees = drafted_trees(DecodeSettings(max_new_tokens=40, temperature=1.0, seed=2, draft_tree="tree", draft_depth=4,
                                         draft_topk=2, draft_tokens=8, tree_children="sampled"))
    for tree in trees:
        assert tree.size == 8 and tree.proposals is not None and tree.proposals.shape[0] == 8
        children = tree.children()
        node, depth = -1, 0
        while children[node + 1]:  # down the first draws
            kids = children[node + 1]
            assert kids == list(range(kids[0], kids[0] + len(kids)))  # consecutive, in draw order
            first = tree.proposals[kids[0]]
            for j, kid in enumerate(kids[1:], start=1):
                earlier = torch.zeros_like(first, dtype=torch.bool)
                for prior in kids[:j]:
                    earlier |= tree.proposal_ids == tree.tokens[prior]
                expected = first.masked_fill(earlier, 0.0)
                assert torch.allclose(tree.proposals[kid], expected / expected.sum(), atol=1e-12)
            node, depth = kids[0], depth + 1
        assert depth == 4


def test_greedy_trees_and_topk_children_stay_deterministic():
    """Greedy decoding and ``tree_children = "topk"`` draft the drafter's likeliest children (no laws)."""
    for s in (DecodeSettings(max_new_tokens=24, draft_tree="tree", draft_depth=3, draft_topk=2, draft_tokens=6,
                             tree_children="sampled"),
              DecodeSettings(max_new_tokens=24, temperature=1.0, draft_tree="tree", draft_depth=3, draft_topk=2,
                             draft_tokens=6, tree_children="topk")):
        assert all(tree.proposals is None for tree in drafted_trees(s))


def test_tree_children_setting_is_checked():
    with pytest.raises(SettingsError, match="tree_children must be 'auto', 'sampled' or 'topk'"):
        DecodeSettings(tree_children="random")


def test_every_node_drafts_from_its_own_path_as_a_chain_would():
    """The drafter's scratch (slots, masks, states) across a sampled tree: the law a node's children were drawn
    from (its first child's proposals) equals the drafter's distribution computed afresh along that node's path,
    as a chain over the same tokens, from a copy of the cache taken before the tree was drafted."""
    import copy

    import evospec.runtime.generator as generator_module
    from evospec.runtime import sampled_tree

    captured = []

    def capture(drafter, cache, req, generator):
        before = copy.deepcopy(cache)
        tree = sampled_tree.draft_sampled_tree(drafter, cache, req, generator)
        captured.append((drafter, before, req, tree))
        return tree

    model = tiny_target(TINY_SHAPES["llama"], seed=3)
    generator = SpeculativeGenerator.from_models(model, tiny_drafter(model, draft_vocab=48, seed=4, init_std=0.8))
    original = generator_module.draft_sampled_tree
    generator_module.draft_sampled_tree = capture
    try:
        generator.generate([3, 17, 42, 5, 9], DecodeSettings(
            max_new_tokens=24, temperature=1.0, seed=5, draft_tree="tree", draft_depth=4, draft_topk=2, draft_tokens=14,
            tree_children="sampled"))
    finally:
        generator_module.draft_sampled_tree = original
    checked = 0
    for drafter, before, req, tree in captured[:4]:
        children, parents = tree.children(), tree.parents.tolist()
        for node in range(tree.size):
            if not children[node + 1]:
                continue
            path = [node]
            while parents[path[-1]] >= 0:
                path.append(parents[path[-1]])
            path.reverse()
            cache = copy.deepcopy(before)
            hidden = req.hidden[None]
            for level, n in enumerate(path, start=1):
                start = req.committed + level - 1
                mask = torch.ones(1, start + 1, dtype=torch.bool)
                positions = torch.full((1, 1), req.committed - 1 + level, dtype=torch.long)
                hidden, logits = drafter(hidden, tree.tokens[n].reshape(1, 1), positions, cache, start, mask)
            q = torch.softmax(logits[0, 0].double() / req.temperature, dim=-1)
            assert torch.allclose(tree.proposals[children[node + 1][0]], q / q.sum(), atol=1e-6)
            checked += 1
    assert checked >= 8
