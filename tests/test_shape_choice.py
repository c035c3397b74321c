"""``--draft-budget auto`` on a tree weighs the chain each step (``runtime/shape_choice.py``): the chooser drafts
the shape that delivered the most tokens per ms, explores the other, and decoding stays exact whichever it drafts."""

from __future__ import annotations

import pytest
import torch

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.runtime.shape_choice import CHAIN, TREE, ShapeChoiceSettings, ShapeChooser, chain_tokens
from evospec.runtime.tree import DraftTree

from .conftest import hf_greedy
from .test_sampling_exactness import (
    QUICK_ERROR,
    assert_joint_matches,
    end_to_end_pair,
    equal_halves,
    exact_joint,
    halves_samples,
    sample_joint,
)


def drive(chooser: ShapeChooser, rates: dict[str, float], steps: int) -> list[str]:
    """Shapes drafted over ``steps`` steps where each shape delivers ``rates[shape]`` tokens per ms."""
    drafted = []
    for _ in range(steps):
        shape = chooser.next()
        drafted.append(shape)
        chooser.observe(shape, 3, 3 / rates[shape])
    return drafted


def test_warm_up_alternates_then_the_faster_shape_wins_with_exploration():
    chooser = ShapeChooser(ShapeChoiceSettings(window=16, warmup=3, explore_every=5))
    drafted = drive(chooser, {CHAIN: 0.2, TREE: 0.1}, 40)
    assert drafted[:6] == [TREE, CHAIN] * 3  # both shapes measured before rates decide
    after = drafted[6:]
    assert after.count(CHAIN) > after.count(TREE) > 0  # the faster shape, and the other now and then
    assert all(shape == TREE for i, shape in enumerate(after, start=6) if i % 5 == 4)
    assert chooser.ahead() == CHAIN and chooser.chosen == {CHAIN: drafted.count(CHAIN), TREE: drafted.count(TREE)}


def test_the_choice_follows_a_change_in_which_shape_pays():
    chooser = ShapeChooser(ShapeChoiceSettings(window=6, warmup=2, explore_every=3))
    drive(chooser, {CHAIN: 0.3, TREE: 0.1}, 30)
    assert chooser.ahead() == CHAIN
    drafted = drive(chooser, {CHAIN: 0.1, TREE: 0.3}, 30)  # the tree starts paying (a domain where its tau pulls ahead)
    assert chooser.ahead() == TREE and drafted[-10:].count(TREE) > drafted[-10:].count(CHAIN)


def test_without_exploration_the_losing_shape_is_not_drafted_after_warm_up():
    chooser = ShapeChooser(ShapeChoiceSettings(warmup=2, explore_every=0))
    drafted = drive(chooser, {CHAIN: 0.1, TREE: 0.2}, 20)
    assert drafted[4:] == [TREE] * 16


def test_trees_that_hold_the_chain_compare_it_on_their_own_text():
    """The chain's few steps fell on hard text (1 token in 10 ms), the tree's on easy text (3 tokens in 15 ms).
    Unpaired, the tree looks twice as fast. Each tree step also says the chain would have emitted 3 tokens
    there: at the chain's 10 ms a step that is 0.3 tokens per ms against the tree's 0.2, so the chain wins."""
    settings = ShapeChoiceSettings(warmup=3, explore_every=0)
    unpaired, paired = ShapeChooser(settings), ShapeChooser(settings)
    for chooser, said in ((unpaired, None), (paired, 3)):
        for _ in range(3):
            chooser.observe(CHAIN, 1, 10.0)
            chooser.observe(TREE, 3, 15.0, said)
    assert unpaired.ahead() == TREE and unpaired.rate(CHAIN) == pytest.approx(0.1)
    assert paired.ahead() == CHAIN and paired.rate(CHAIN) == pytest.approx(0.3)
    assert paired.rate(TREE) == pytest.approx(0.2)
    early = ShapeChooser(settings)  # fewer paired tree steps than warmup: the chain's own steps decide
    early.observe(CHAIN, 1, 10.0)
    early.observe(TREE, 3, 15.0, 3)
    assert early.rate(CHAIN) == pytest.approx(0.1)


def test_chain_tokens_follow_first_children_until_the_first_miss():
    # the first-choice path is 0 -> 2 -> 4; node 1 is the root's second child and node 3 is node 0's
    tree = DraftTree(tokens=torch.tensor([10, 11, 12, 13, 14]), parents=torch.tensor([-1, -1, 0, 0, 2]),
                     depths=torch.tensor([1, 1, 2, 2, 3]))
    assert chain_tokens(tree, [0, 2, 4], 4) == 4  # the whole path, and the bonus
    assert chain_tokens(tree, [0, 2, 4], 3) == 3  # cut as the step was
    assert chain_tokens(tree, [0, 3], 3) == 2  # 3 is a sibling: the chain stops after 0 with its bonus
    assert chain_tokens(tree, [1], 2) == 1  # the root's second child: the chain's first node was rejected
    assert chain_tokens(tree, [], 1) == 1


def test_one_shape_pins_the_choice_and_bad_settings_are_refused():
    chooser = ShapeChooser(ShapeChoiceSettings(shapes=(TREE,)))
    assert drive(chooser, {CHAIN: 1.0, TREE: 0.01}, 5) == [TREE] * 5
    for bad in ({"window": 0}, {"warmup": 0}, {"explore_every": -1}, {"shapes": ()}, {"shapes": ("star",)}):
        with pytest.raises(ValueError):
            ShapeChoiceSettings(**bad)


def test_greedy_auto_tree_drafting_both_shapes_equals_target_greedy(trained_pair):
    model, drafter = trained_pair
    generator = SpeculativeGenerator.from_models(model, drafter)
    generator.shapes = ShapeChooser(ShapeChoiceSettings(warmup=2, explore_every=2))  # switches shape often
    for prompt in ([1, 2, 3], [40, 41, 3, 9, 17], [7]):
        result = generator.generate(prompt, DecodeSettings(max_new_tokens=40, draft_tree="tree", draft_budget="auto"))
        assert result.token_ids == hf_greedy(model, prompt, 40)
    assert generator.shapes.chosen[CHAIN] > 2 and generator.shapes.chosen[TREE] > 2
    # past the cost model's seed steps every tree held the chain: it says what the chain would have emitted,
    # never more than the tree did, and sometimes less (a sibling accepted past the chain's miss)
    said = [(tokens, chain) for tokens, _, chain in generator.shapes._steps[TREE] if chain is not None]
    assert len(said) > 2 and all(chain <= tokens for tokens, chain in said)


def test_fixed_budgets_and_chains_never_consult_the_chooser(trained_pair):
    model, drafter = trained_pair
    generator = SpeculativeGenerator.from_models(model, drafter)
    for decode in (DecodeSettings(max_new_tokens=12, draft_tree="tree"),
                   DecodeSettings(max_new_tokens=12, draft_tree="chain", draft_budget="auto")):
        generator.generate([1, 2, 3], decode)
    assert generator.shapes.chosen == {CHAIN: 0, TREE: 0}


def test_sampled_auto_tree_switching_shapes_emits_the_target_distribution():
    """Joint law of the first 3 new tokens while the chooser alternates the sampled chain and the tree."""
    model, drafter = end_to_end_pair()
    generator = SpeculativeGenerator.from_models(model, drafter)
    generator.shapes = ShapeChooser(ShapeChoiceSettings(warmup=1, explore_every=2))
    prompt, temperature, top_p = [1, 4, 2], 1.0, 0.9
    expected = exact_joint(model, prompt, 3, temperature, top_p)
    n = halves_samples(sum(expected[k] for k in equal_halves(expected)), QUICK_ERROR)
    counts, accepted = sample_joint(generator, prompt, n, temperature=temperature, top_p=top_p, draft_tree="tree",
                                    draft_depth=3, draft_topk=3, draft_tokens=6, draft_budget="auto")
    assert_joint_matches(counts, expected, n, QUICK_ERROR)
    assert accepted > n // 10
    assert min(generator.shapes.chosen.values()) > n // 4  # both shapes drafted many of the steps
