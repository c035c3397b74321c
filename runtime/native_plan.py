"""A living vocabulary's plan update and row moves in the C++ library (``evospec_update_plan``, ``evospec_copy_rows``),
for Python's drafter, when the library is built.

Why: each step a living vocabulary changes ~1,200 of its 16,384 ids. Python's drafter then updates its gather plan
(``gather.update_plan``: numpy passes over both sets, 0.16-0.24 ms a step in the decoding loop), finds the columns
that changed (a comparison over the bucket) and copies those rows from a ~100 MB reservoir into its resident head
rows (``np.take``: one cache miss at a time, 0.2-0.4 ms). The library does the same plan in one pass and its copy
asks for the rows a few copies ahead, so their misses overlap (0.24 -> 0.16 ms inside the C++ drafter, stop 42).

Both give exactly what the numpy path gives (the same plan, column for column, and the same bytes:
``tests/test_native_plan.py``), so which one runs never changes a draft. Python's drafter uses the library when
``build/cpp/libevospec_drafter.so`` (or ``EVOSPEC_CPP_LIBRARY``) exists and exports these calls, and numpy otherwise;
``EVOSPEC_NATIVE_PLAN=0`` keeps it on numpy.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import numpy as np
import torch

from evospec.runtime.gather import GatherPlan, choose_bucket, padded_bias, update_plan
from evospec.runtime.native_library import optional_library

RowCopy = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


def copy_rows_numpy(rows: np.ndarray, reservoir: np.ndarray, cols: np.ndarray, ids: np.ndarray) -> None:
    """``rows[cols] = reservoir[ids]`` (2-D byte views), one thread: ``np.take`` gathers 18% faster than fancy
    indexing (1,325 rows: 0.42 against 0.51 ms, stop 38)."""
    rows[cols] = np.take(reservoir, ids, axis=0)


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built library with both calls declared, or None (not built, an older build, ``EVOSPEC_NATIVE_PLAN=0``)."""
    lib = optional_library("EVOSPEC_NATIVE_PLAN", ("evospec_copy_rows", "evospec_update_plan"), "plan updates by numpy")
    if lib is None:
        return None
    address, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.evospec_copy_rows.argtypes = [address, i64, address, i64, i64, address, address, i64]
    lib.evospec_update_plan.argtypes = [address, i64, i64, address, i64, address, address, address, address]
    return lib


def _raise(lib: ctypes.CDLL, error: type[Exception]) -> None:
    raise error((lib.evospec_last_error() or b"").decode(errors="replace"))


def native_row_copy() -> RowCopy | None:
    """The library's copy as ``copy(rows, reservoir, cols, ids)`` over 2-D uint8 views, or None without the library."""
    lib = _library()
    if lib is None:
        return None

    def copy(rows: np.ndarray, reservoir: np.ndarray, cols: np.ndarray, ids: np.ndarray) -> None:
        if not (rows.flags.c_contiguous and reservoir.flags.c_contiguous and rows.shape[1] == reservoir.shape[1]):
            copy_rows_numpy(rows, reservoir, cols, ids)
            return
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if cols.size != ids.size:
            raise ValueError(f"{cols.size} columns for {ids.size} rows")
        if lib.evospec_copy_rows(rows.ctypes.data, rows.shape[0], reservoir.ctypes.data, reservoir.shape[0],
                                 rows.shape[1], cols.ctypes.data, ids.ctypes.data, cols.size):
            _raise(lib, IndexError)

    return copy


def plan_update(previous: GatherPlan, active_ids: torch.Tensor, buckets: tuple[int, ...]
                ) -> tuple[GatherPlan, int, torch.Tensor | None]:
    """``gather.update_plan(previous, active_ids, buckets)`` and the columns whose id changed (ascending; None with a
    new bucket, when every column is new): by the library within a bucket when it is built, else by numpy."""
    active = active_ids.to(torch.long).flatten()
    lib = _library()
    bucket = choose_bucket(int(active.numel()), buckets)
    if lib is None or bucket != previous.bucket:
        plan, moved = update_plan(previous, active, buckets)
        same_bucket = plan is not previous and plan.bucket == previous.bucket
        return plan, moved, torch.nonzero(plan.ids != previous.ids).flatten() if same_bucket else None
    old = previous.ids.contiguous()
    if old.dtype != torch.long:
        old = old.long()
    active = active.contiguous()
    ids, cols = np.empty(bucket, dtype=np.int64), np.empty(bucket, dtype=np.int64)
    counts = np.zeros(2, dtype=np.int64)  # moved, changed columns
    if lib.evospec_update_plan(old.data_ptr(), previous.size, bucket, active.data_ptr(), active.numel(),
                               ids.ctypes.data, counts.ctypes.data, cols.ctypes.data, counts.ctypes.data + 8):
        _raise(lib, ValueError)
    moved, changed = int(counts[0]), int(counts[1])
    if moved < 0:
        return previous, 0, None
    size = int(active.numel())
    bias = previous.bias if size == previous.size else padded_bias(size, bucket, previous.bias.dtype)
    return GatherPlan(ids=torch.from_numpy(ids), bias=bias, size=size), moved, torch.from_numpy(cols[:changed])
