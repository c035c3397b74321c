"""The C++ drafter's value-based tree budget (``--draft-budget auto`` with ``--drafter-runtime cpp``) keeps the
trees Python's rule keeps (runtime/tree.py): for fixed costs, step by step, the same tokens, parents, depths,
frontier rows per level and cumulative scores; decoding with it stays the target's greedy output.

These use the library ``make cpp`` built (build/cpp, or EVOSPEC_CPP_LIBRARY) when it is current, and otherwise
build one as tests/test_cpp.py does (about 70 s on 2 cores); they skip, saying why, only without a toolchain.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from evospec.bundle.compile import compile_bundle
from evospec.runtime.shape_choice import TREE, ShapeChoiceSettings, ShapeChooser
from evospec.core.settings import DecodeSettings
from evospec.passes.base import CompileSettings
from evospec.runtime.tree import EDGE_BINS, StepCosts
from evospec.train.demo_pair import ASSET_DIR

from .test_tree_budget import FixedCosts

pytestmark = pytest.mark.cpp

DEMO_TARGET = ASSET_DIR / "target"
PROMPT = list(range(5, 37))
NEW_TOKENS = 24

RATES = (0.05, 0.1, 0.2, 0.3, 0.45, 0.55, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)  # one per bin of EDGE_BINS (and the last)
REGIMES = {  # fixed costs, from trees kept whole to trees cut at every level
    "probabilities-free-rows": StepCosts(fixed_ms=100.0, level_ms=0.01, row_ms=0.001),
    "probabilities-cheap-rows": StepCosts(fixed_ms=20.0, level_ms=0.5, row_ms=0.2, level_row_ms=0.05),
    "probabilities-dear-rows": StepCosts(fixed_ms=4.0, level_ms=1.0, row_ms=1.5, level_row_ms=0.3),
    "rates-balanced": StepCosts(fixed_ms=10.0, level_ms=1.0, row_ms=0.5, rates=RATES, level_row_ms=0.1),
    "rates-dear-levels": StepCosts(fixed_ms=6.0, level_ms=4.0, row_ms=0.3, rates=RATES, level_row_ms=0.4),
    "rates-low": StepCosts(fixed_ms=8.0, level_ms=0.5, row_ms=0.4, rates=tuple(r / 3 for r in RATES), level_row_ms=0.2),
    # first choices and other children apart (what StepCostModel measures)
    "rates-two-tables": StepCosts(fixed_ms=10.0, level_ms=1.0, row_ms=0.5, rates=RATES + tuple(r / 4 for r in RATES),
                                  level_row_ms=0.1),
    # a chain's first 4 levels kept whatever they cost (trees get the chain's depth from draft_spine)
    "rates-dear-rows-spine": StepCosts(fixed_ms=4.0, level_ms=1.0, row_ms=1.5, rates=RATES, level_row_ms=0.3, spine=4),
}
SHAPES = {  # (width, depth, budget, draft_spine: the first-choice path kept to the depth)
    "chain": (1, 6, 6, True),
    "width-2": (2, 5, 10, True),
    "width-4": (4, 5, 16, True),
    "width-4-priced-path": (4, 5, 16, False),
}


@pytest.fixture(scope="module")
def library(cpp_library):
    return cpp_library


@pytest.fixture(scope="module")
def bundle():
    """The shipped demo pair compiled for torch (the C++ library reads torch bundles)."""
    work = Path(tempfile.mkdtemp(prefix="evospec-native-budget-"))
    try:
        compile_bundle(DEMO_TARGET, ASSET_DIR / "drafter", work / "bundle",
                       CompileSettings(backend="torch", buckets=(64, 128, 512), index_dims=0))
        yield work / "bundle"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def plain():
    from evospec.runtime.generator import SpeculativeGenerator

    return SpeculativeGenerator.from_paths(DEMO_TARGET).generate(
        PROMPT, DecodeSettings(max_new_tokens=NEW_TOKENS, use_draft=False)).token_ids


def decode(bundle, runtime: str, settings: DecodeSettings, costs: StepCosts | None):
    """Greedy decoding with the given runtime; the trees it drafted, step by step."""
    from evospec.runtime.generator import SpeculativeGenerator

    generator = SpeculativeGenerator.from_bundle(bundle, DEMO_TARGET, drafter_runtime=runtime)
    generator.shapes = ShapeChooser(ShapeChoiceSettings(shapes=(TREE,)))  # trees every step: no timed chain choice
    if costs is not None:
        generator.step_costs = FixedCosts(costs)
    trees = []
    name = "_draft_native" if runtime == "cpp" else "_draft"
    inner = getattr(generator, name)

    def recording(*args, **kwargs):
        drafted = inner(*args, **kwargs)
        trees.append(drafted[0])
        return drafted

    setattr(generator, name, recording)
    return generator.generate(PROMPT, settings), trees, generator


def rows(tree) -> dict:
    return {"tokens": tree.tokens.tolist(), "parents": tree.parents.tolist(), "depths": tree.depths.tolist(),
            "level_rows": tree.level_rows}


def settings_for(shape: str, budget: str = "auto") -> DecodeSettings:
    width, depth, nodes, spine = SHAPES[shape]
    return DecodeSettings(max_new_tokens=NEW_TOKENS, draft_tree="chain" if width == 1 else "tree", draft_depth=depth,
                          draft_topk=width, draft_tokens=nodes, draft_budget=budget, draft_spine=spine)


@pytest.fixture(scope="module")
def cpp_runs() -> dict:
    """C++ decodes under each regime, kept for the check that the regimes exercise the rule."""
    return {}


def same_trees(python_trees, cpp_trees) -> None:
    for step, (p, c) in enumerate(zip(python_trees, cpp_trees, strict=True)):
        assert rows(c) == rows(p), f"step {step}"
        assert (c.scores is None) == (p.scores is None), f"step {step}"  # None: an empty tree
        if p.scores is not None:
            assert c.scores.dtype == p.scores.dtype
            torch.testing.assert_close(c.scores, p.scores, rtol=0, atol=1e-5, msg=f"step {step}")


SLOW = pytest.mark.slow
QUICK = {("probabilities-free-rows", "width-2"), ("probabilities-dear-rows", "width-4"), ("rates-balanced", "chain"),
         ("rates-balanced", "width-4"), ("rates-dear-levels", "width-2"), ("rates-low", "chain"),
         ("rates-two-tables", "width-4"), ("probabilities-dear-rows", "width-4-priced-path"),
         ("rates-dear-levels", "width-4-priced-path"), ("rates-dear-rows-spine", "chain")}  # the rest: -m slow


@pytest.mark.parametrize(("regime", "shape"), [
    pytest.param(regime, shape, id=f"{regime}-{shape}", marks=() if (regime, shape) in QUICK else SLOW)
    for regime in REGIMES for shape in SHAPES])
def test_cpp_trees_under_fixed_costs_equal_pythons(library, bundle, plain, cpp_runs, regime, shape):
    """Tree for tree, the value rule in C++ decides as Python's: frontier pruning, levels that pay, the
    value prefix kept; scores (cumulative draft log-probabilities) agree to float32 rounding."""
    s = settings_for(shape)
    python, python_trees, _ = decode(bundle, "python", s, REGIMES[regime])
    cpp, cpp_trees, _ = decode(bundle, "cpp", s, REGIMES[regime])
    cpp_runs[regime, shape] = cpp_trees
    assert len(cpp_trees) == len(python_trees) >= 5
    same_trees(python_trees, cpp_trees)
    assert cpp.token_ids == python.token_ids == plain
    assert cpp.stats.accepted_lengths == python.stats.accepted_lengths


@pytest.mark.parametrize("shape", ["width-4", "width-4-priced-path"])
def test_the_regimes_exercise_the_rule(library, bundle, cpp_runs, shape):
    """The fixed costs above cut trees in different places: some steps keep fewer nodes than the budget,
    expand fewer frontier rows than the width, and fill the budget. With the spine every step drafts all
    levels and keeps the path (some steps nothing else); without it some steps draft fewer levels."""
    width, depth, nodes, spine = SHAPES[shape]
    seen = {"fewer nodes": False, "fewer rows": False, "full budget": False, "fewer levels": False,
            "the path alone": False}
    for regime, costs in REGIMES.items():
        trees = cpp_runs.get((regime, shape)) or decode(bundle, "cpp", settings_for(shape), costs)[1]
        for tree in trees:
            seen["fewer nodes"] |= tree.size < nodes
            seen["fewer levels"] |= tree.expansions < depth - 1
            seen["fewer rows"] |= any(f < width for f in tree.level_rows)
            seen["full budget"] |= tree.size == nodes
            seen["the path alone"] |= tree.size == depth and tree.depths.tolist() == list(range(1, depth + 1))
            if spine:
                assert tree.expansions == depth - 1 and tree.depths.max() == depth
    expected = {k: not spine if k == "fewer levels" else True for k in seen}
    if not spine:
        expected["the path alone"] = seen["the path alone"]  # either way
    assert seen == expected


@pytest.mark.parametrize("shape", ["chain", pytest.param("width-2", marks=SLOW), "width-4"])
def test_fixed_budgets_keep_their_trees_and_gain_scores(library, bundle, plain, shape):
    """Without costs the library drafts as before; its trees now carry scores and level rows as Python's."""
    s = settings_for(shape, budget="fixed")
    python, python_trees, _ = decode(bundle, "python", s, None)
    cpp, cpp_trees, _ = decode(bundle, "cpp", s, None)
    same_trees(python_trees, cpp_trees)
    assert cpp.token_ids == python.token_ids == plain


@pytest.mark.parametrize(("siblings", "budget", "ratio"), [(2, "fixed", 0.0), (6, "fixed", 0.0), (3, "auto", 0.0),
                                                      (6, "fixed", 3.0)])
def test_cpp_chains_with_siblings_equal_pythons(library, bundle, plain, siblings, budget, ratio):
    """``draft_siblings``: the library's chains hold the same second choices as Python's (the same nodes, order,
    scores), with a fixed budget and with the auto choice pinned to the chain with siblings (whole: never priced,
    even with the value rule's costs at hand); with ``draft_sibling_ratio``, the same levels keep theirs."""
    s = dataclasses.replace(settings_for("chain", budget=budget), draft_siblings=siblings, draft_sibling_ratio=ratio)
    costs = REGIMES["rates-dear-rows-spine"] if budget == "auto" else None
    python, python_trees, _ = decode(bundle, "python", s, costs)
    cpp, cpp_trees, _ = decode(bundle, "cpp", s, costs)
    same_trees(python_trees, cpp_trees)
    assert cpp.token_ids == python.token_ids == plain
    assert cpp.stats.accepted_lengths == python.stats.accepted_lengths
    chain_nodes = [int((t.parents == torch.arange(-1, t.size - 1)).cumprod(0).sum()) for t in cpp_trees]
    assert all(n == SHAPES["chain"][1] for n in chain_nodes)  # whole chains
    kept = [t.size - n for t, n in zip(cpp_trees, chain_nodes, strict=True)]
    if not ratio:
        assert all(k == min(n, siblings) for k, n in zip(kept, chain_nodes, strict=True))
    else:  # the ratio dropped some levels' siblings and kept others'
        assert any(0 < k < n for k, n in zip(kept, chain_nodes, strict=True))
        assert min(kept) < max(kept)


def test_cpp_drafter_switches_siblings_on_and_off_with_the_auto_choice(library, bundle, plain):
    """``draft_budget="auto"`` with siblings and the C++ drafter: the library is told each step's shape, so chain
    steps draft the plain chain and the others the chain with its siblings; output is the target's own."""
    from evospec.runtime.generator import SpeculativeGenerator

    generator = SpeculativeGenerator.from_bundle(bundle, DEMO_TARGET, drafter_runtime="cpp")
    trees = []
    inner = generator._draft_native

    def recording(*args, **kwargs):
        drafted = inner(*args, **kwargs)
        trees.append(drafted[0])
        return drafted

    generator._draft_native = recording
    s = dataclasses.replace(settings_for("chain", budget="auto"), draft_siblings=3)
    assert generator.generate(PROMPT, s).token_ids == plain
    with_siblings = [t.size > t.depths.max() for t in trees]
    assert any(with_siblings) and not all(with_siblings)  # both shapes, from one library handle
    assert all(t.parents.tolist() == list(range(-1, t.size - 1)) for t, s in zip(trees, with_siblings) if not s)


@pytest.mark.parametrize("shape", ["chain", "width-4"])
def test_auto_budget_with_the_cpp_drafter_is_exact_and_learns_its_costs(library, bundle, plain, shape):
    """The online cost model with the C++ drafter: greedy output is the target's own; steps past the seeds
    draft under fitted costs, timed by the library (root call apart from the levels)."""
    result, _, generator = decode(bundle, "cpp", settings_for(shape), None)
    assert result.token_ids == plain
    width = SHAPES[shape][0]
    assert generator.step_costs.costs(width) is not None
    steps = list(generator.step_costs._steps)
    assert all(s.root_ms > 0 for s in steps) and any(s.tree_ms > 0 for s in steps)
    assert any(s.edges for s in steps) and any(s.level_rows for s in steps)


def test_generate_command_with_auto_budget_and_the_cpp_drafter(library, bundle, plain):
    from click.testing import CliRunner

    from evospec.cli import main

    done = CliRunner().invoke(main, [
        "generate", "--target", str(DEMO_TARGET), "--bundle", str(bundle), "--drafter-runtime", "cpp",
        "--prompt-ids", ",".join(map(str, PROMPT)), "--max-new-tokens", str(NEW_TOKENS), "--draft-tree", "tree",
        "--draft-depth", "4", "--draft-topk", "4", "--draft-tokens", "12", "--draft-budget", "auto", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout.strip().splitlines()[-1])["token_ids"] == plain


def test_library_rates_are_checked(library, bundle):
    from evospec.core.errors import SettingsError
    from evospec.runtime.native_drafter import NativeDrafter

    native = NativeDrafter(bundle, target_dir=DEMO_TARGET)
    native.start(PROMPT)
    features = torch.zeros(len(PROMPT), 3 * native.target_hidden_size)
    with pytest.raises(SettingsError, match=f"holds {len(EDGE_BINS) + 1} rates \\(or twice that"):
        native.propose(features, 7, 3, 2, 4, StepCosts(fixed_ms=1.0, level_ms=1.0, row_ms=1.0, rates=(0.5,)))


def test_library_siblings_are_second_choices_of_a_greedy_chain_never_priced(library, bundle):
    from evospec.core.errors import SettingsError
    from evospec.runtime.native_drafter import NativeDrafter

    native = NativeDrafter(bundle, target_dir=DEMO_TARGET)
    native.start(PROMPT)
    native.set_siblings(2)
    features = torch.zeros(len(PROMPT), 3 * native.target_hidden_size)
    with pytest.raises(SettingsError, match="siblings are drafted whole"):
        native.propose(features, 7, 3, 1, 3, StepCosts(fixed_ms=1.0, level_ms=1.0, row_ms=1.0))
    with pytest.raises(SettingsError, match="second choices beside a greedy chain"):
        native.propose(features, 7, 3, 2, 4)
    with pytest.raises(SettingsError, match="between 0 and the depth"):
        native.propose(features, 7, 1, 1, 1)
    with pytest.raises(SettingsError, match="must be >= 0"):
        native.set_siblings(-1)
    with pytest.raises(SettingsError, match="sibling ratio must be 0 .* or > 1, got 0.5"):
        native.set_siblings(2, 0.5)
