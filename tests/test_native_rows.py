"""Python's drafter moves a living vocabulary's rows with the C++ library's copy when it is built (runtime/native_rows.py).

The copy must write exactly what ``np.take`` writes (rows of any dtype, as bytes), refuse ids or columns outside
their ranges before writing anything, and ``ActiveRows`` must follow plans to the same rows whichever copy it has.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evospec.runtime.active_rows import ActiveRows
from evospec.runtime.gather import make_plan, update_plan
from evospec.runtime.native_rows import copy_rows_numpy, native_row_copy

pytestmark = pytest.mark.cpp


@pytest.fixture
def native_copy(cpp_library, monkeypatch):
    """The library's copy, looked up afresh under the test session's library (the lookup is cached per process)."""
    monkeypatch.delenv("EVOSPEC_NATIVE_ROWS", raising=False)
    native_row_copy.cache_clear()
    copy = native_row_copy()
    yield copy
    native_row_copy.cache_clear()


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


def test_without_the_library_or_when_switched_off_numpy_copies(cpp_library, monkeypatch, tmp_path):
    try:
        monkeypatch.setenv("EVOSPEC_NATIVE_ROWS", "0")
        native_row_copy.cache_clear()
        assert native_row_copy() is None
        monkeypatch.delenv("EVOSPEC_NATIVE_ROWS")
        monkeypatch.setenv("EVOSPEC_CPP_LIBRARY", str(tmp_path / "missing.so"))
        native_row_copy.cache_clear()
        assert native_row_copy() is None
    finally:
        native_row_copy.cache_clear()


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
