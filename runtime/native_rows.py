"""Moving a living vocabulary's rows with the C++ library's prefetching copy (``evospec_copy_rows``), when it is built.

Why: each step a living vocabulary moves ~1,200 rows (640 bytes each at the medium pair's width) from a ~100 MB
reservoir into the drafter's resident head rows. One at a time, each row is a cache miss the copy stalls on;
``np.take`` does exactly that (0.3-0.4 ms a step in the decoding loop at ``evospec:16384``). The library asks for
the rows a few copies ahead, so the misses overlap (0.24 -> 0.16 ms a step inside the C++ drafter, stop 42).

The bytes written are the same either way, so which copy runs never changes a draft. Python's drafter uses the
library when ``build/cpp/libevospec_drafter.so`` (or ``EVOSPEC_CPP_LIBRARY``) exists and exports the copy, and
``np.take`` otherwise; ``EVOSPEC_NATIVE_ROWS=0`` keeps it on ``np.take``.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

RowCopy = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]


def copy_rows_numpy(rows: np.ndarray, reservoir: np.ndarray, cols: np.ndarray, ids: np.ndarray) -> None:
    """``rows[cols] = reservoir[ids]`` (2-D byte views), one thread: ``np.take`` gathers 18% faster than fancy
    indexing (1,325 rows: 0.42 against 0.51 ms, stop 38)."""
    rows[cols] = np.take(reservoir, ids, axis=0)


@functools.cache
def native_row_copy() -> RowCopy | None:
    """The library's copy as ``copy(rows, reservoir, cols, ids)`` over 2-D uint8 views, or None where the library is
    not built, lacks the call (an older build) or ``EVOSPEC_NATIVE_ROWS=0``."""
    if os.environ.get("EVOSPEC_NATIVE_ROWS", "1") == "0":
        return None
    from evospec.runtime.native_drafter import library_path

    path = library_path()
    if not path.is_file():
        return None
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        log.info("row moves by numpy: %s does not load (%s)", path, exc)
        return None
    if not hasattr(lib, "evospec_copy_rows"):
        log.info("row moves by numpy: %s has no evospec_copy_rows (rebuild it with `make cpp`)", path)
        return None
    call = lib.evospec_copy_rows
    address, i64 = ctypes.c_void_p, ctypes.c_int64
    call.argtypes = [address, i64, address, i64, i64, address, address, i64]
    lib.evospec_last_error.restype = ctypes.c_char_p

    def copy(rows: np.ndarray, reservoir: np.ndarray, cols: np.ndarray, ids: np.ndarray) -> None:
        if not (rows.flags.c_contiguous and reservoir.flags.c_contiguous and rows.shape[1] == reservoir.shape[1]):
            copy_rows_numpy(rows, reservoir, cols, ids)
            return
        cols = np.ascontiguousarray(cols, dtype=np.int64)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if cols.size != ids.size:
            raise ValueError(f"{cols.size} columns for {ids.size} rows")
        status = call(rows.ctypes.data, rows.shape[0], reservoir.ctypes.data, reservoir.shape[0], rows.shape[1],
                      cols.ctypes.data, ids.ctypes.data, cols.size)
        if status:
            raise IndexError((lib.evospec_last_error() or b"").decode(errors="replace"))

    return copy
