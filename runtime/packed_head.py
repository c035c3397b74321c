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

The rule (mirrored by the C++ library's ``PackedHead``, so both draft alike): calls are counted in windows of
``PACK_AFTER_CALLS``. A window remembers the lowest column any change touched (none: the whole bucket). When a
window ends, the columns below that were unchanged through all of it, and they become the prefix when they are
all the rows or at least ``MIN_PACKED_ROWS`` of them, and more than the prefix holds already. A change inside
the prefix drops it; any change drops the tail's copy, which the next call packs again.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Calls in a window: more than one step's drafter calls (a root call and up to five levels), so a column a
# living vocabulary moves every step is never counted as staying put.
PACK_AFTER_CALLS = 8
MIN_PACKED_ROWS = 1024  # a shorter prefix is not worth a second product and a concatenation


def _pack(rows: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(rows.contiguous())


def _packed_logits(normed: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(normed, packed, bias, "none", [], "")


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

    def changed(self, low: int, bucket: int) -> None:
        """Columns from ``low`` on were rewritten (0 with a new bucket: every row is new)."""
        if bucket != self.bucket:
            self.bucket, low = bucket, 0
        self._low = min(self._low, low)
        if low < self.packed_rows:
            self.prefix, self.packed_rows = None, 0
        self.tail = None

    def logits(self, normed: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``normed [N, d] @ rows.T + bias`` -> [N, bucket]."""
        if not self.packable:
            return F.linear(normed, rows) + bias
        self._calls += 1
        if self._calls > PACK_AFTER_CALLS:
            whole_or_long = self._low == rows.shape[0] or self._low >= MIN_PACKED_ROWS
            if whole_or_long and self._low > self.packed_rows:
                self.prefix, self.packed_rows, self.tail = _pack(rows[: self._low]), self._low, None
            self._calls, self._low = 1, self.bucket  # this call opens the next window
        p = self.packed_rows
        if self.tail is None and p < rows.shape[0]:
            self.tail = _pack(rows[p:])
        normed = normed.contiguous()
        if p == 0:
            return _packed_logits(normed, self.tail, bias)
        front = _packed_logits(normed, self.prefix, bias[:p])
        return front if p == rows.shape[0] else torch.cat((front, _packed_logits(normed, self.tail, bias[p:])), dim=1)
