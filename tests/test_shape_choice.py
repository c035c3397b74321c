"""``--draft-budget auto`` on a tree weighs the chain each step (``runtime/shape_choice.py``): the chooser drafts
the shape that delivered the most tokens per ms, explores the other, and decoding stays exact whichever it drafts."""

from __future__ import annotations

import pytest

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.runtime.shape_choice import CHAIN, TREE, ShapeChoiceSettings, ShapeChooser

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
