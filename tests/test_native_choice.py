"""A greedy chain level's choice by the C++ library (``evospec_greedy_choice``; runtime/native_choice.py).

Python's drafter and the library's chain both pick with it when the library is built, so the choice must be torch's
(the first column holding the maximum; the runner-up the best other column) and its log-probabilities torch's
``log_softmax`` to float32 rounding, on rows of the sizes drafters have (1 to 16,384 columns and past a block
boundary), with ties and masked (-inf) columns; a row without a finite maximum is refused in one line. Python's
drafter drafts the same greedy chains with the library's choice as with torch's.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.core.errors import SettingsError
from evospec.runtime import native_choice
from evospec.runtime.native_choice import greedy_chooser

pytestmark = pytest.mark.cpp


@pytest.fixture(scope="module")
def chooser(cpp_library):
    before = os.environ.pop("EVOSPEC_NATIVE_CHOICE", None)
    native_choice._library.cache_clear()
    found = greedy_chooser(torch.zeros(1, 4))
    assert found is not None, "the library lacks evospec_greedy_choice"
    yield found
    if before is not None:
        os.environ["EVOSPEC_NATIVE_CHOICE"] = before
    native_choice._library.cache_clear()


def torch_choice(row: torch.Tensor) -> tuple[int, float, int, float]:
    """What the drafters picked with torch: max for the first choice, the best other column for the second."""
    logp = torch.log_softmax(row.float(), dim=-1)[0]
    first = int(logp.argmax())  # torch's max: the first column holding it
    rest = logp.clone()
    rest[first] = float("-inf")
    second = int(rest.argmax()) if row.shape[-1] > 1 else -1
    if second >= 0 and rest[second] == float("-inf"):  # every other column masked: the first of them
        second = next(c for c in range(row.shape[-1]) if c != first)
    return first, float(logp[first]), second, float(logp[second]) if second >= 0 else 0.0


@st.composite
def rows(draw):
    """A [1, n] float32 row: n from 1 to past two blocks of 1,024, values on a coarse grid (ties are common), some
    columns masked, the maximum anywhere (at a block's edge too)."""
    n = draw(st.sampled_from([1, 2, 3, 17, 1023, 1024, 1025, 2048, 2500]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    row = (torch.randn(n, generator=g) * draw(st.sampled_from([0.5, 4.0, 30.0]))).round()
    if draw(st.booleans()):
        row[torch.rand(n, generator=g) < 0.3] = float("-inf")
    top = draw(st.integers(0, n - 1))
    row[top] = draw(st.sampled_from([row.max().item() if row.isfinite().any() else 0.0, 50.0]))
    if not row.isfinite().any():
        row[top] = 0.0
    return row[None].contiguous()


@settings(max_examples=300, deadline=None)
@given(row=rows(), runner_up=st.booleans())
def test_the_library_picks_as_torch(chooser, row, runner_up):
    first, first_logp, second, second_logp = chooser.choose(row, runner_up)
    want_first, want_first_logp, want_second, want_second_logp = torch_choice(row)
    assert first == want_first
    assert first_logp == pytest.approx(want_first_logp, abs=2e-6, rel=1e-6)
    if not runner_up or row.shape[-1] == 1:
        assert second == -1
        return
    assert second == want_second
    assert second != first
    if want_second_logp == float("-inf"):
        assert second_logp == float("-inf")
    else:
        assert second_logp == pytest.approx(want_second_logp, abs=2e-6, rel=1e-6)


def test_a_runner_up_tied_with_the_first_choice_is_the_next_column_holding_it(chooser):
    row = torch.zeros(1, 3000)
    row[0, [5, 1500, 2999]] = 7.0
    first, first_logp, second, second_logp = chooser.choose(row, True)
    assert (first, second) == (5, 1500)
    assert first_logp == second_logp


def test_a_strided_row_is_read_as_its_values(chooser):
    wide = torch.randn(4, 600)
    column = wide[:, 3][None]  # [1, 4], stride 600
    assert chooser.choose(column, True)[::2] == torch_choice(column)[::2]


@pytest.mark.parametrize("bad", [float("nan"), float("-inf")])
def test_a_row_without_a_finite_maximum_is_refused_in_one_line(chooser, bad):
    with pytest.raises(SettingsError, match="no finite maximum"):
        chooser.choose(torch.full((1, 40), bad), False)


def test_rows_the_library_does_not_take_go_to_torch(chooser):
    assert greedy_chooser(torch.zeros(2, 8)) is None  # a tree's frontier: several rows
    assert greedy_chooser(torch.zeros(1, 8, dtype=torch.float64)) is None
    os.environ["EVOSPEC_NATIVE_CHOICE"] = "0"
    native_choice._library.cache_clear()
    try:
        assert greedy_chooser(torch.zeros(1, 8)) is None
    finally:
        del os.environ["EVOSPEC_NATIVE_CHOICE"]
        native_choice._library.cache_clear()


@pytest.mark.parametrize("seed", range(6))
def test_pythons_drafter_drafts_the_same_chains_with_either_choice(chooser, monkeypatch, seed):
    """Chains with siblings (every level's, and under a ratio) from random roots of a float32 tiny drafter: the library's
    choice and torch's give the same nodes, and scores within float32 rounding."""
    from evospec.runtime import tree as tree_module
    from evospec.runtime.drafter import DrafterKVCache
    from evospec.runtime.tree import DraftRequest, draft_tree
    from evospec.testing.tiny import TINY_SHAPES, tiny_drafter, tiny_target

    model = tiny_target(TINY_SHAPES["llama"], seed=2, dtype=torch.float32)
    drafter = tiny_drafter(model, draft_vocab=48, seed=3)
    assert drafter.dtype == torch.float32

    def chain(ratio: float):
        torch.manual_seed(seed)
        cache = DrafterKVCache(drafter.config, 64, torch.device("cpu"), drafter.dtype)
        req = DraftRequest(hidden=torch.randn(1, drafter.config.hidden_size), logits=torch.randn(48) * 3, committed=8,
                           width=1, depth=5, budget=5, siblings=3, sibling_ratio=ratio)
        return draft_tree(drafter, cache, req, torch.Generator())

    for ratio in (0.0, 2.0):
        with_library = chain(ratio)
        monkeypatch.setattr(tree_module, "greedy_chooser", lambda logits: None)
        with_torch = chain(ratio)
        monkeypatch.undo()
        assert with_library.tokens.tolist() == with_torch.tokens.tolist()
        assert with_library.parents.tolist() == with_torch.parents.tolist()
        assert with_library.depths.tolist() == with_torch.depths.tolist()
        torch.testing.assert_close(with_library.scores, with_torch.scores, rtol=0, atol=1e-5)
