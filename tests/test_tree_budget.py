"""Value-based tree budgets (``draft_budget = "auto"``): the tree it keeps, the cost model it learns,
and exactness of decoding with it."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evospec import DecodeSettings, SettingsError, SpeculativeGenerator
from evospec.runtime.drafter import DrafterKVCache
from evospec.runtime.shape_choice import TREE, ShapeChoiceSettings, ShapeChooser
from evospec.runtime.tree import EDGE_BINS, DraftTree, StepCosts
from evospec.runtime.tree_costs import SEED_FRACTIONS, StepCostModel, StepTiming, tried_edges
from evospec.testing.tiny import TINY_SHAPES, tiny_drafter, tiny_target

from .conftest import hf_greedy
from .test_cli import run
from .test_sampling_exactness import (
    QUICK_ERROR,
    assert_joint_matches,
    end_to_end_pair,
    equal_halves,
    exact_joint,
    halves_samples,
    sample_joint,
)


class FixedCosts:
    """A cost model that measures nothing: every step gets the same costs, so trees are deterministic."""

    def __init__(self, costs: StepCosts) -> None:
        self.costs = costs
        self.timings: list[StepTiming] = []

    def plan(self, max_budget: int, width: int) -> tuple[int, StepCosts]:
        return max_budget, self.costs

    def observe(self, timing: StepTiming) -> None:
        self.timings.append(timing)


@pytest.fixture(scope="module")
def random_pair():
    model = tiny_target(TINY_SHAPES["llama"], seed=21, dtype=torch.float64, layer_scale=0.3)
    return model, tiny_drafter(model, draft_vocab=64, seed=22)


def drafted(pair, prompt: list[int], width: int, depth: int, budget: int, costs: StepCosts | None) -> DraftTree:
    """One tree drafted after the prompt's prefill, as the decoding loop drafts it."""
    model, drafter = pair
    generator = SpeculativeGenerator.from_models(model, drafter)
    target = generator.target
    out = target.forward(torch.tensor([prompt]), torch.arange(len(prompt))[None], target.new_cache())
    root = int(out.logits[-1].argmax())
    cache = DrafterKVCache(drafter.config, len(prompt) + 1 + depth * width, target.device, drafter.dtype)
    s = DecodeSettings(draft_tree="chain" if width == 1 else "tree", draft_depth=depth, draft_topk=width,
                       draft_tokens=budget, draft_budget="fixed" if costs is None else "auto")
    tree, _, _ = generator._draft(cache, out.features, prompt[1:] + [root], s, torch.Generator(), width, budget, costs)
    return tree


def as_rows(tree: DraftTree) -> list[tuple]:
    return list(zip(tree.tokens.tolist(), tree.parents.tolist(), tree.depths.tolist(), strict=True))


def first_choice_path(pair, prompt: list[int], length: int) -> list[int]:
    """The drafter's greedy chain of ``length`` tokens after the prompt (a fixed chain, no costs)."""
    return drafted(pair, prompt, 1, length, length, None).tokens.tolist() if length else []


def spine_nodes(tree: DraftTree, path: list[int]) -> list[int]:
    """Indices of the nodes that spell ``path`` from the root, each its predecessor's child; fails if absent.
    Siblings hold distinct tokens (top-k of one distribution), so the path is unique."""
    nodes, parent = [], -1
    for depth, token in enumerate(path, start=1):
        match = [i for i, (t, p, d) in enumerate(as_rows(tree)) if (t, p, d) == (token, parent, depth)]
        assert len(match) == 1, f"the first-choice path {path} is not in the tree at depth {depth}: {as_rows(tree)}"
        parent = match[0]
        nodes.append(parent)
    return nodes


costs_strategy = st.builds(
    StepCosts,
    fixed_ms=st.floats(0.1, 50.0),
    level_ms=st.floats(0.0, 10.0),
    row_ms=st.floats(1e-3, 5.0),
    level_row_ms=st.floats(0.0, 3.0),
    rates=st.none() | st.lists(st.floats(0.01, 1.0), min_size=len(EDGE_BINS) + 1, max_size=len(EDGE_BINS) + 1).map(tuple),
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    costs=costs_strategy,
    width=st.integers(1, 6),
    depth=st.integers(1, 5),
    budget=st.integers(1, 20),
    prompt=st.lists(st.integers(0, 95), min_size=1, max_size=8),
    spine=st.integers(0, 6),
)
def test_auto_tree_is_closed_bounded_valued_and_deterministic(random_pair, costs, width, depth, budget, prompt, spine):
    costs = dataclasses.replace(costs, spine=spine)
    tree = drafted(random_pair, prompt, width, depth, budget, costs)
    assert tree.size <= budget
    assert tree.size <= max(1, depth if width == 1 else budget)
    parents, depths = tree.parents.tolist(), tree.depths.tolist()
    for i, p in enumerate(parents):  # ancestor closure, in topological order
        assert -1 <= p < i
        assert depths[i] == (1 if p == -1 else depths[p] + 1) <= depth
    # the spine: the greedy chain's first min(spine, depth, budget) nodes, as a path from the root
    path = first_choice_path(random_pair, prompt, min(spine, depth, budget))
    on_path = spine_nodes(tree, path)
    # every other kept node paid for its row: p_i / row_ms >= E / C over the spine and the nodes kept before
    # it, p_i the product of its path's edge rates
    log_values: list[float] = []
    for i, p in enumerate(parents):
        edge = tree.scores[i] - (tree.scores[p] if p >= 0 else 0.0)
        log_values.append((log_values[p] if p >= 0 else 0.0) + float(costs.log_rate(edge[None])[0]))
    values = sorted((costs.value(v) for i, v in enumerate(log_values) if i not in on_path), reverse=True)
    tokens, cost = 1.0, costs.fixed_ms + costs.levels_ms(tree.level_rows)
    for i in on_path:
        tokens, cost = tokens + costs.value(log_values[i]), cost + costs.row_ms
    for p in values:
        assert p * cost >= tokens * costs.row_ms * (1 - 1e-9)
        tokens, cost = tokens + p, cost + costs.row_ms
    assert tree.expansions <= depth - 1
    assert all(1 <= f <= width for f in tree.level_rows)
    again = drafted(random_pair, prompt, width, depth, budget, costs)
    assert as_rows(again) == as_rows(tree) and again.expansions == tree.expansions


@pytest.mark.parametrize("width", [1, 2, 4])
def test_free_rows_keep_the_fixed_tree_and_dear_rows_keep_none(random_pair, width):
    prompt = [5, 9, 2, 7]
    fixed = drafted(random_pair, prompt, width, 4, 12, None)
    free = drafted(random_pair, prompt, width, 4, 12, StepCosts(fixed_ms=1.0, level_ms=0.0, row_ms=1e-300))
    assert as_rows(free) == as_rows(fixed)
    dear = drafted(random_pair, prompt, width, 4, 12, StepCosts(fixed_ms=1.0, level_ms=1.0, row_ms=1e9))
    assert dear.size == 0 and dear.expansions == 0  # the first level is free, none of it pays: nothing more drafted


@pytest.mark.parametrize("width", [1, 2, 4])
def test_the_spine_keeps_the_chain_whatever_it_costs(random_pair, width):
    """With ``spine`` at the chain's depth the tree holds the greedy chain even when no row pays: dear rows
    keep exactly the chain (the rule alone keeps nothing), and free rows keep the chain and more."""
    prompt, depth = [5, 9, 2, 7], 5
    chain = drafted(random_pair, prompt, 1, depth, depth, None)
    dear = StepCosts(fixed_ms=1.0, level_ms=1.0, row_ms=1e9, spine=depth)
    assert drafted(random_pair, prompt, width, depth, 12, dataclasses.replace(dear, spine=0)).size == 0
    kept = drafted(random_pair, prompt, width, depth, 12, dear)
    assert as_rows(kept) == as_rows(chain) and kept.expansions == depth - 1
    assert list(kept.level_rows) == [1] * (depth - 1)  # only the path's tip was expanded
    free = drafted(random_pair, prompt, width, depth, 12, StepCosts(fixed_ms=1.0, level_ms=0.0, row_ms=1e-300, spine=depth))
    assert len(spine_nodes(free, chain.tokens.tolist())) == depth and free.size == (depth if width == 1 else 12)
    short = drafted(random_pair, prompt, width, depth, 12, dataclasses.replace(dear, spine=2))
    assert as_rows(short) == as_rows(chain)[:2]  # the rule prices the path past the spine


def test_dear_levels_stop_drafting_early(random_pair):
    prompt = [5, 9, 2, 7]
    cheap = drafted(random_pair, prompt, 4, 5, 100, StepCosts(fixed_ms=10.0, level_ms=0.0, row_ms=1e-6))
    dear = drafted(random_pair, prompt, 4, 5, 100, StepCosts(fixed_ms=10.0, level_ms=1e6, row_ms=1e-6))
    full = drafted(random_pair, prompt, 4, 5, 20, StepCosts(fixed_ms=10.0, level_ms=0.0, row_ms=1e-6))
    assert cheap.expansions == 4
    # 4 + 16 candidates fill the budget after one level; deeper levels still pay by replacing the
    # weakest kept nodes, so the tree is the fixed one
    assert as_rows(full) == as_rows(drafted(random_pair, prompt, 4, 5, 20, None)) and full.expansions > 1
    assert dear.expansions == 0 and 1 <= dear.size <= 4  # first-level nodes cost only their rows


EDGES = ((-0.1, True, True), (-0.1, True, True), (-0.1, False, True), (-0.1, True, True), (-3.0, False, False),
         (-3.0, False, False))  # p 0.90 (first choices), 0.05 (other children)
SIBLINGS = len(EDGE_BINS) + 1  # where the other children's table starts


def timing(rows: int, verify_ms: float, expansions: int = 2, width: int = 8) -> StepTiming:
    return StepTiming(rows=rows, verify_ms=verify_ms, root_ms=3.0, tree_ms=4.0 * expansions,
                      level_rows=(width,) * expansions, width=width, edges=EDGES)


def test_cost_model_seeds_fits_and_explores_deterministically():
    model = StepCostModel(window=16, explore_every=8)
    plans = []
    for step in range(24):
        plans.append(model.plan(32, 8))
        budget = plans[-1][0]
        model.observe(timing(1 + budget, 15.0 + 0.5 * (1 + budget)))
    assert [b for b, c in plans[: len(SEED_FRACTIONS)]] == [round(32 * f) for f in SEED_FRACTIONS]
    assert all(c is None for _, c in plans[: len(SEED_FRACTIONS)])
    explored = [(i, b) for i, (b, c) in enumerate(plans) if c is None and i >= len(SEED_FRACTIONS)]
    assert explored == [(8, round(32 * SEED_FRACTIONS[1])), (16, round(32 * SEED_FRACTIONS[2]))]
    costs = model.costs(8)
    assert costs.row_ms == pytest.approx(0.5)
    assert costs.fixed_ms == pytest.approx(3.0 + 15.0 + 0.5)  # root call + target pass over the root
    assert costs.level_ms == pytest.approx(4.0)
    assert costs.level_row_ms == 0.0  # every level had 8 rows: a level costs its mean
    high, low = len(EDGE_BINS), 1  # the bins of p = 0.90 and p = 0.0498
    assert costs.rates[high] == pytest.approx((3 * 16 + 2 * 0.95) / (4 * 16 + 2))  # 16 steps in the window
    assert costs.rates[SIBLINGS + low] == pytest.approx((0 + 2 * 0.035) / (2 * 16 + 2))  # exp(-3) is in [0.02, 0.05)
    assert costs.rates[low] == pytest.approx(0.035)  # no first choice there: the drafter's own probability
    assert costs.rates[SIBLINGS + high] == pytest.approx(0.95)
    assert costs.rates[4] == pytest.approx(0.25)
    assert model.costs(1).level_ms == pytest.approx(3.0)  # no width-1 level seen: one more drafter call
    twin = StepCostModel(window=16, explore_every=8)
    for step in range(24):
        budget, _ = twin.plan(32, 8)
        twin.observe(timing(1 + budget, 15.0 + 0.5 * (1 + budget)))
    assert twin.costs(8) == costs


def test_cost_model_splits_a_level_into_a_call_and_its_rows():
    model = StepCostModel(window=16, explore_every=0)
    for step, level_rows in enumerate([(8, 8), (1, 1, 1, 1), (8, 2), (4,), (1, 8, 8), (2, 2)] * 2):
        rows = 1 + sum(level_rows)
        model.observe(StepTiming(rows=rows, verify_ms=10.0 + step % 3 + rows, root_ms=3.0,
                                 tree_ms=sum(2.5 + 0.75 * f for f in level_rows), level_rows=level_rows, width=8))
    costs = model.costs(8)
    assert costs.level_ms == pytest.approx(2.5) and costs.level_row_ms == pytest.approx(0.75)
    assert costs.levels_ms((8, 1)) == pytest.approx(2 * 2.5 + 9 * 0.75)


def test_a_node_is_expanded_only_if_one_child_worth_it_could_pay_for_its_rows(random_pair):
    """Greedy verification accepts at most one child of a node: a frontier node worth p is expanded only if
    p tokens could pay for one row of the target pass and one of the drafter's level. With free levels and
    cheap verification rows but dear drafter rows, nothing past the first level pays."""
    prompt = [5, 9, 2, 7]
    cheap = StepCosts(fixed_ms=10.0, level_ms=0.0, row_ms=1e-6, rates=(0.9,) * (len(EDGE_BINS) + 1))
    assert drafted(random_pair, prompt, 4, 5, 100, cheap).expansions == 4
    # a node is worth at most 0.9: C p < E level_row for every tree these costs allow
    dear_rows = dataclasses.replace(cheap, level_row_ms=1e4)
    tree = drafted(random_pair, prompt, 4, 5, 100, dear_rows)
    assert tree.expansions == 0 and tree.size == 4


def test_tried_edges_are_the_children_of_accepted_nodes():
    tree = DraftTree(tokens=torch.tensor([4, 5, 6, 7]), parents=torch.tensor([-1, -1, 0, 1]),
                     depths=torch.tensor([1, 1, 2, 2]), scores=torch.tensor([-0.5, -1.0, -0.75, -3.0]))
    assert tried_edges(tree, [0, 2]) == ((-0.5, True, True), (-1.0, False, False), (-0.25, True, True))
    assert tried_edges(tree, []) == ((-0.5, False, True), (-1.0, False, False))


def test_first_choices_and_other_children_have_their_own_rates():
    first, other = [0.1 * (i + 1) for i in range(SIBLINGS)], [0.01 * (i + 1) for i in range(SIBLINGS)]
    costs = StepCosts(fixed_ms=1.0, level_ms=1.0, row_ms=1.0, rates=tuple(first + other))
    logp = torch.tensor([[0.95, 0.03, 0.015], [0.25, 0.25, 0.25]]).log()  # [parents, children], drafter's order
    got = costs.log_rate(logp).exp()
    want = torch.tensor([[first[11], other[1], other[0]], [first[4], other[4], other[4]]])
    assert torch.allclose(got, want.to(got), rtol=1e-6)
    single = StepCosts(fixed_ms=1.0, level_ms=1.0, row_ms=1.0, rates=tuple(first))  # one table for both
    assert torch.allclose(single.log_rate(logp).exp(), torch.tensor([[first[11], first[1], first[0]],
                                                                      [first[4]] * 3]).to(got), rtol=1e-6)


def test_cost_model_keeps_its_last_line_when_rows_stop_varying():
    model = StepCostModel(window=4, explore_every=0)
    for rows in (33, 9, 17, 33):
        model.observe(timing(rows, 10.0 + rows))
    line = model.costs(8)
    for _ in range(4):
        model.observe(timing(6, 100.0))  # a window of one row count: no line through it
    later = model.costs(8)
    assert later.row_ms == line.row_ms
    assert model.costs(8).row_ms >= 1e-3
    assert StepCostModel().costs(8) is None


REGIMES = [
    StepCosts(fixed_ms=20.0, level_ms=3.0, row_ms=0.5),
    StepCosts(fixed_ms=20.0, level_ms=0.1, row_ms=0.01, rates=(0.5,) * (len(EDGE_BINS) + 1)),
    StepCosts(fixed_ms=5.0, level_ms=5.0, row_ms=2.0, rates=tuple(0.5 * b for b in (0.0, *EDGE_BINS))),
]


# default: the tree under medium-like costs and the chain under dear ones; the other four cases: -m slow
@pytest.mark.parametrize(("costs", "tree"), [
    pytest.param(costs, tree, id=f"{tree}-{name}",
                 marks=() if (name, tree) in {("medium-like", "tree"), ("dear", "chain")} else pytest.mark.slow)
    for tree in ("chain", "tree") for name, costs in zip(("medium-like", "cheap", "dear"), REGIMES, strict=True)])
def test_greedy_with_auto_budget_equals_target_greedy(trained_pair, costs, tree):
    model, drafter = trained_pair
    generator = SpeculativeGenerator.from_models(model, drafter)
    generator.step_costs = FixedCosts(costs)
    decode = DecodeSettings(max_new_tokens=48, draft_tree=tree, draft_depth=5, draft_topk=4, draft_tokens=16,
                            draft_budget="auto")
    for prompt in ([3, 14, 15, 92], [7], [1, 2, 3, 4, 5, 6]):
        result = generator.generate(prompt, decode)
        assert result.token_ids == hf_greedy(model, prompt, 48)
        assert all(1 + 0 <= t.rows <= 1 + 16 for t in generator.step_costs.timings)


def test_greedy_with_measured_costs_equals_plain_decoding(random_pair):
    model, drafter = random_pair
    generator = SpeculativeGenerator.from_models(model, drafter)
    for tree in ("chain", "tree"):
        for prompt in ([1, 2, 3], [40, 41, 3, 9, 17]):
            decode = DecodeSettings(max_new_tokens=40, draft_tree=tree, draft_budget="auto")
            result = generator.generate(prompt, decode)
            assert result.token_ids == hf_greedy(model, prompt, 40)
    assert generator.step_costs.costs(8) is not None


def test_sampled_chain_with_auto_budget_emits_target_distribution():
    """Joint law of the first 3 new tokens with a chain the value rule cuts on some steps."""
    model, drafter = end_to_end_pair()
    generator = SpeculativeGenerator.from_models(model, drafter)
    costs = FixedCosts(StepCosts(fixed_ms=10.0, level_ms=1.0, row_ms=4.0))
    generator.step_costs = costs
    prompt, temperature = [1, 4, 2], 1.0
    expected = exact_joint(model, prompt, 3, temperature, 1.0)
    n = halves_samples(sum(expected[k] for k in equal_halves(expected)), QUICK_ERROR)
    counts, accepted = sample_joint(generator, prompt, n, temperature=temperature, draft_tree="chain", draft_depth=3,
                                    draft_budget="auto")
    assert_joint_matches(counts, expected, n, QUICK_ERROR)
    assert accepted > n // 10
    sizes = {t.rows - 1 for t in costs.timings}
    assert len(sizes) > 1, sizes  # the rule cut some chains and kept others


@pytest.mark.parametrize("spine", [True, False])
def test_auto_budget_drafts_through_the_cpp_drafter_with_its_costs(random_pair, spine):
    """The C++ library (a stand-in here; tests/test_native_tree_budget.py runs the real one against Python's
    trees) drafts under the step's costs, with the chain's depth as its spine when ``draft_spine`` is on, and
    its scores, level rows and timings feed the cost model."""
    from evospec.runtime.native_drafter import NativeTree

    model, drafter = random_pair
    generator = SpeculativeGenerator.from_models(model, drafter)
    costs = StepCosts(fixed_ms=5.0, level_ms=1.0, row_ms=0.5)
    generator.step_costs = FixedCosts(costs)
    calls = []

    class Library:
        policy = None

        def start(self, prompt, greedy=False):
            pass

        def set_siblings(self, siblings, ratio=0.0):
            assert siblings == 0 and ratio == 0.0

        def propose(self, features, newest, depth, width, budget, costs=None):
            calls.append((budget, costs))
            return NativeTree([newest], [-1], [1], [-0.25], (1,), root_ms=2.0, tree_ms=3.0)

        def commit(self, accepted):
            pass

    generator.native = Library()
    generator.shapes = ShapeChooser(ShapeChoiceSettings(shapes=(TREE,)))  # the value rule's calls, no chain steps
    s = DecodeSettings(max_new_tokens=6, draft_budget="auto", draft_spine=spine)
    assert generator.generate([1, 2], s).token_ids == hf_greedy(model, [1, 2], 6)
    sent = dataclasses.replace(costs, spine=s.draft_depth if spine else 0)
    assert calls and all(call == (s.tree_budget, sent) for call in calls)
    timing = generator.step_costs.timings[0]
    assert (timing.rows, timing.root_ms, timing.tree_ms, timing.level_rows) == (2, 2.0, 3.0, (1,))
    assert timing.edges[0][0] == -0.25


def test_settings_reject_an_unknown_budget():
    with pytest.raises(SettingsError, match="draft_budget must be 'fixed' or 'auto'"):
        DecodeSettings(draft_budget="some")


@pytest.mark.parametrize("spine", ["--draft-spine", "--no-draft-spine"])
def test_generate_cli_with_auto_budget(checkpoint_dirs, spine):
    target_dir, drafter_dir, model, _ = checkpoint_dirs
    proc = run("generate", "--target", str(target_dir), "--drafter", str(drafter_dir), "--prompt-ids", "1,2,3",
               "--max-new-tokens", "20", "--draft-tree", "tree", "--draft-depth", "3", "--draft-topk", "2",
               "--draft-tokens", "6", "--draft-budget", "auto", spine, "--json")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["token_ids"] == hf_greedy(model, [1, 2, 3], 20)
