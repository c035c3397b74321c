"""Python's drafter updates a living vocabulary's plan and moves its rows with the C++ library when it is built
(runtime/native_plan.py).

The plan must be numpy's ``update_plan`` column for column (with the changed columns numpy's comparison finds), the
copy must write exactly what ``np.take`` writes (rows of any dtype, as bytes); bad input is refused before anything
is written, and ``ActiveRows`` follows plans to the same rows whichever path it has.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.runtime import native_plan
from evospec.runtime.active_rows import ActiveRows
from evospec.runtime.gather import make_plan, update_plan
from evospec.runtime.native_plan import copy_rows_numpy, native_row_copy, plan_update

pytestmark = pytest.mark.cpp


@pytest.fixture(scope="module")
def native_library(cpp_library):
    """The test session's library, looked up afresh (the lookup is cached per process) and again after the tests."""
    before = os.environ.pop("EVOSPEC_NATIVE_PLAN", None)
    native_plan._library.cache_clear()
    assert native_plan._library() is not None, "the library lacks evospec_update_plan / evospec_copy_rows"
    yield
    if before is not None:
        os.environ["EVOSPEC_NATIVE_PLAN"] = before
    native_plan._library.cache_clear()


@pytest.fixture
def native_copy(native_library):
    return native_row_copy()


def numpy_plan_update(previous, active, buckets):
    """What ``plan_update`` gives without the library."""
    plan, moved = update_plan(previous, active, buckets)
    same_bucket = plan is not previous and plan.bucket == previous.bucket
    return plan, moved, torch.nonzero(plan.ids != previous.ids).flatten() if same_bucket else None


@st.composite
def plan_and_next_set(draw):
    """A plan over a set of up to 64 ids of 300, and a next set sharing some of them, listed in any order."""
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    bucket = draw(st.sampled_from([16, 64]))
    first = torch.randperm(300, generator=g)[: draw(st.integers(1, bucket))]
    previous = make_plan(first, (bucket,))
    kept = first[torch.randperm(first.numel(), generator=g)[: draw(st.integers(0, first.numel()))]]
    others = torch.randperm(300, generator=g)
    others = others[~torch.isin(others, first)][: draw(st.integers(0, bucket - kept.numel()))]
    active = torch.cat((kept, others))
    if active.numel() == 0:
        active = first[:1]
    return previous, active[torch.randperm(active.numel(), generator=g)], bucket


@settings(max_examples=200, deadline=None)
@given(case=plan_and_next_set())
def test_the_library_updates_plans_as_numpy_does(native_library, case):
    previous, active, bucket = case
    plan, moved, cols = plan_update(previous, active, (bucket,))
    expected, expected_moved, expected_cols = numpy_plan_update(previous, active, (bucket,))
    assert moved == expected_moved
    assert (plan is previous) == (expected is previous)
    assert torch.equal(plan.ids, expected.ids) and plan.size == expected.size
    assert torch.equal(plan.bias, expected.bias)
    assert (cols is None) == (expected_cols is None)
    if cols is not None:
        assert torch.equal(cols, expected_cols)


def test_plan_updates_refuse_repeated_or_negative_ids(native_library):
    previous = make_plan(torch.arange(8), (16,))
    for bad in ([1, 2, 40, 40], [1, -5]):
        with pytest.raises(ValueError, match="twice|negative"):
            plan_update(previous, torch.tensor(bad), (16,))


def test_a_new_bucket_is_planned_by_numpy_with_every_column_new(native_library):
    previous = make_plan(torch.arange(8), (16, 64))
    plan, moved, cols = plan_update(previous, torch.arange(40), (16, 64))
    assert plan.bucket == 64 and moved == 40 and cols is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_library_copies_the_bytes_numpy_copies(native_copy, dtype):
    assert native_copy is not None
    g = torch.Generator().manual_seed(0)
    reservoir = torch.randn(5000, 24, generator=g).to(dtype)
    cols = torch.randperm(300, generator=g)[:120].numpy()  # distinct columns, in no order
    ids = torch.randint(0, 5000, (120,), generator=g).numpy()  # repeats allowed
    ours = torch.randn(300, 24, generator=g).to(dtype)
    numpys = ours.clone()
    native_copy(ours.view(torch.uint8).numpy(), reservoir.view(torch.uint8).numpy(), cols, ids)
    copy_rows_numpy(numpys.view(torch.uint8).numpy(), reservoir.view(torch.uint8).numpy(), cols, ids)
    assert torch.equal(ours.view(torch.uint8), numpys.view(torch.uint8))
    assert torch.equal(ours[torch.from_numpy(cols)], reservoir[torch.from_numpy(ids)])


def test_ids_or_columns_out_of_range_are_refused_before_any_write(native_copy):
    reservoir = torch.randn(100, 8)
    rows = torch.zeros(10, 8)
    for cols, ids in (([0, 10], [1, 2]), ([0, 1], [1, 100]), ([0, -1], [1, 2]), ([0, 1], [-3, 2])):
        with pytest.raises(IndexError, match="outside 100 reservoir rows or 10 columns"):
            native_copy(rows.view(torch.uint8).numpy(), reservoir.view(torch.uint8).numpy(), np.array(cols),
                        np.array(ids))
        assert not rows.any()  # the valid first pair was not written either


def test_without_the_library_or_when_switched_off_numpy_does_it(native_library, monkeypatch, tmp_path):
    previous = make_plan(torch.arange(8), (16,))
    try:
        monkeypatch.setenv("EVOSPEC_NATIVE_PLAN", "0")
        native_plan._library.cache_clear()
        assert native_row_copy() is None
        plan, moved, cols = plan_update(previous, torch.arange(4, 12), (16,))
        assert moved == 4 and cols.tolist() == [0, 1, 2, 3]
        monkeypatch.delenv("EVOSPEC_NATIVE_PLAN")
        monkeypatch.setenv("EVOSPEC_CPP_LIBRARY", str(tmp_path / "missing.so"))
        native_plan._library.cache_clear()
        assert native_row_copy() is None
    finally:
        native_plan._library.cache_clear()


def test_active_rows_follow_plans_alike_with_either_copy(native_copy):
    g = torch.Generator().manual_seed(1)
    reservoir = torch.randn(2000, 16, generator=g)
    first = torch.randperm(2000, generator=g)[:256]
    followers = {}
    for name in ("native", "numpy"):
        rows = ActiveRows(reservoir, make_plan(first, (256,)))
        rows._row_copy = native_copy if name == "native" else copy_rows_numpy
        followers[name] = rows
    plan = followers["native"].plan
    for _ in range(6):  # a living set: a third of it replaced each step
        keep = plan.ids[torch.randperm(256, generator=g)[:170]]
        fresh = torch.randperm(2000, generator=g)
        fresh = fresh[~torch.isin(fresh, keep)][:86]
        plan, moved = update_plan(plan, torch.cat((keep, fresh)), (256,))
        assert moved > 0
        for rows in followers.values():
            assert rows.follow(plan) == moved
        assert torch.equal(followers["native"].rows, followers["numpy"].rows)
        assert torch.equal(followers["native"].rows, reservoir[plan.ids])
