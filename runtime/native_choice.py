"""A greedy chain level's choice by the C++ library (``evospec_greedy_choice``), for Python's drafter, when it is built.

Why: a greedy level picked its token with torch's ``log_softmax`` over the head's row, then ``max`` (or ``topk(2)``
for a sibling): 45-100 us a level in the decoding loop at the medium pair's 16,384 columns, five levels a step, the
siblings' three ``topk`` calls most of what they cost Python's drafter beyond the library's (README, issue 18). The
library picks in two vectorised passes (``greedy_choice.cpp``), and its own chain calls the same function, so with
the library built the two drafters' chains stay identical column for column and score for score
(``tests/test_native_tree_budget.py``). Without the library (or with ``EVOSPEC_NATIVE_CHOICE=0``) torch picks: the
same first maximum, scores within float32 rounding (``tests/test_native_choice.py``).
"""

from __future__ import annotations

import ctypes
import functools
import threading

import numpy as np
import torch

from evospec.core.errors import SettingsError
from evospec.runtime.native_library import optional_library


@functools.cache
def _library() -> ctypes.CDLL | None:
    """The built library with the call declared, or None (not built, an older build, ``EVOSPEC_NATIVE_CHOICE=0``)."""
    lib = optional_library("EVOSPEC_NATIVE_CHOICE", ("evospec_greedy_choice",), "greedy choices by torch")
    if lib is not None:
        lib.evospec_greedy_choice.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_void_p,
                                              ctypes.c_void_p]
    return lib


class GreedyChooser:
    """``choose(row, runner_up)`` -> (first column, its log-probability, second column or -1, its log-probability)
    for one float32 row of head logits on the host; one instance per drafting thread (its output buffers)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._call = lib.evospec_greedy_choice
        self._lib = lib
        self._ids = np.empty(2, dtype=np.int64)
        self._logps = np.empty(2, dtype=np.float32)
        self._ids_at, self._logps_at = self._ids.ctypes.data, self._logps.ctypes.data

    def choose(self, row: torch.Tensor, runner_up: bool) -> tuple[int, float, int, float]:
        if row.stride(-1) != 1:
            row = row.contiguous()
        if self._call(row.data_ptr(), row.shape[-1], int(runner_up), self._ids_at, self._logps_at):
            raise SettingsError((self._lib.evospec_last_error() or b"").decode(errors="replace"))
        ids, logps = self._ids.tolist(), self._logps.tolist()
        return ids[0], logps[0], ids[1], logps[1]


_local = threading.local()  # a chooser per thread: its output buffers are its own


def greedy_chooser(logits: torch.Tensor) -> GreedyChooser | None:
    """The library's chooser for rows like ``logits`` ([1, Vd] float32 on the host), or None where torch picks."""
    if logits.device.type != "cpu" or logits.dtype != torch.float32 or logits.dim() != 2 or logits.shape[0] != 1:
        return None
    lib = _library()
    if lib is None:
        return None
    chooser = getattr(_local, "chooser", None)
    if chooser is None:
        chooser = _local.chooser = GreedyChooser(lib)
    return chooser
