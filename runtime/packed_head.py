"""The host LM head over resident rows, through oneDNN's packed product: the leading columns that stay put
packed once, the rest packed again after each change.

``nn.Linear`` repacks its weight on every call, and MKL's one-row product is slow on a weight the target's pass
has evicted. At the medium drafter's 16,384 x 160, oneDNN's product over a weight packed once took 0.10 against
0.35 ms a row with the rows warm, and 0.7 against 1.6 ms evicted; packing all 16,384 rows took 1.1 ms, 4,096 rows
0.2 ms, less than one ``nn.Linear`` call over them (2-core AMD EPYC, stop 36). A set changes at most once a step
and serves the step's head calls (a root call and a call per level), so packing what changed on its first use
pays within the step.

A static set (the drafter's own vocabulary, FR-Spec's list) stays put as a whole. A living vocabulary moves only
its tail: its core is listed first and a retained id never changes column (``update_plan``), so its leading
columns stay put. Those are packed once (``prefix``) and only the tail is packed again after a change.

The rule (mirrored by the C++ library's ``PackedHead``, so both draft alike):
- Calls are counted in windows of ``PACK_AFTER_CALLS``; a window remembers the lowest column any change touched
  (none: the whole bucket). When a window ends, the columns below the lowest change of it and of the
  ``STABLE_WINDOWS - 1`` windows before were unchanged through all of them. They become the prefix when they
  are all the rows, or when there are at least ``MIN_PACKED_ROWS`` more of them than the prefix holds.
- A change inside the prefix cuts it back: the next call packs the columns before the change as the prefix
  (when they are at least ``MIN_PACKED_ROWS``) and the rest as the tail, the same rows in all as packing
  everything as a tail would.
- Any change drops the tail's copy, which the next call packs again.

Why several windows, growth by whole ``MIN_PACKED_ROWS`` and cutting back: a living vocabulary's evidence, just
past its core, moves every step but not always at its first column. Judged on one window, the prefix crept into
the evidence whenever a window's changes started a little further in, and the next change there dropped it
whole: at ``evospec:16384`` every step packed all 16,384 rows again (17.7k rows a step; stop 37).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Calls in a window: more than one step's drafter calls (a root call and up to five levels), so a column a
# living vocabulary moves every step is never counted as staying put.
PACK_AFTER_CALLS = 8
MIN_PACKED_ROWS = 1024  # a shorter prefix is not worth a second product and a concatenation
STABLE_WINDOWS = 4  # windows a column must stay put through before it is packed into the prefix


def pack_rows(rows: torch.Tensor) -> torch.Tensor:
    """oneDNN's packed copy of ``rows`` [n, d] (what ``packed_linear`` multiplies by)."""
    return torch.ops.mkldnn._reorder_linear_weight(rows.contiguous())


def packed_linear(normed: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``normed [N, d] @ rows.T (+ bias)`` over ``pack_rows(rows)``."""
    return torch.ops.mkldnn._linear_pointwise(normed.contiguous(), packed, bias, "none", [], "")


class PackedHead:
    """Packing state of one resident row matrix: tell it each change (``changed``), ask it for logits."""

    def __init__(self, packable: bool, bucket: int) -> None:
        self.packable = packable
        self.bucket = bucket
        self.prefix: torch.Tensor | None = None  # oneDNN's copy of rows[:packed_rows]
        self.packed_rows = 0
        self.tail: torch.Tensor | None = None  # oneDNN's copy of rows[packed_rows:], until the next change
        self._calls = 0  # calls in the current window
        self._low = bucket  # lowest column changed in the current window
        self._recent: list[int] = []  # the same, for the last STABLE_WINDOWS - 1 windows closed (newest last)
        self._cut: int | None = None  # a prefix dropped by a change inside it: its columns before the change

    def changed(self, low: int, bucket: int) -> None:
        """Columns from ``low`` on were rewritten (0 with a new bucket: every row is new)."""
        if bucket != self.bucket:
            self.bucket, low = bucket, 0
        self._low = min(self._low, low)
        if self._cut is not None:
            self._cut = min(self._cut, low)
        if low < self.packed_rows:
            self.prefix, self.packed_rows, self._cut = None, 0, low
        self.tail = None

    def logits(self, normed: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``normed [N, d] @ rows.T + bias`` -> [N, bucket]."""
        if not self.packable:
            return F.linear(normed, rows) + bias
        if self._cut is not None:  # the columns before a change inside the prefix, packed again
            if self._cut >= MIN_PACKED_ROWS:
                self.prefix, self.packed_rows = pack_rows(rows[: self._cut]), self._cut
            self._cut = None
        self._calls += 1
        if self._calls > PACK_AFTER_CALLS:
            stable = min([self._low, *self._recent])
            grows = stable == rows.shape[0] or stable >= self.packed_rows + MIN_PACKED_ROWS
            if grows and stable > self.packed_rows:
                self.prefix, self.packed_rows, self.tail = pack_rows(rows[:stable]), stable, None
            self._recent = [*self._recent, self._low][-(STABLE_WINDOWS - 1):]
            self._calls, self._low = 1, self.bucket  # this call opens the next window
        p = self.packed_rows
        if self.tail is None and p < rows.shape[0]:
            self.tail = pack_rows(rows[p:])
        if p == 0:
            return packed_linear(normed, self.tail, bias)
        front = packed_linear(normed, self.prefix, bias[:p])
        return front if p == rows.shape[0] else torch.cat((front, packed_linear(normed, self.tail, bias[p:])), dim=1)
