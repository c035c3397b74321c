"""The host LM head over resident rows, with the leading columns that stay put packed for oneDNN.

``nn.Linear`` repacks its weight on every call. At the medium drafter's 16,384 x 160, oneDNN's product over a
weight packed once took 0.10 against 0.35 ms a row with the rows warm, and 0.7 against 1.6 ms with them evicted
by the target's pass (2-core AMD EPYC, stop 36). Packing costs about two calls, so only rows that stay put are
packed. A static set (the drafter's own vocabulary, FR-Spec's list) stays put as a whole. A living vocabulary
moves only its tail: its core is listed first and a retained id never changes column (``update_plan``), so its
leading columns stay put while the tail moves every step.

The rule (mirrored by the C++ library's ``PackedPrefix``, so both draft alike): calls are counted in windows of
``PACK_AFTER_CALLS``. A window remembers the lowest column any change touched (none: the whole bucket). When
a window ends, the columns below that were unchanged through all of it, and they are packed when they are all
the rows or at least ``MIN_PACKED_ROWS`` of them, and more than are packed already. A change below the packed columns drops
the packed copy. The product is then the packed columns through oneDNN and the rest through ``nn.Linear``:
the same logits to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Calls in a window: more than one step's drafter calls (a root call and up to five levels), so a column a
# living vocabulary moves every step is never counted as staying put.
PACK_AFTER_CALLS = 8
MIN_PACKED_ROWS = 1024  # a shorter prefix is not worth a second product and a concatenation


class PackedPrefix:
    """Packing state of one resident row matrix: tell it each change (``changed``), ask it for logits."""

    def __init__(self, packable: bool, bucket: int) -> None:
        self.packable = packable
        self.bucket = bucket
        self.packed: torch.Tensor | None = None  # oneDNN's copy of rows[:packed_rows]
        self.packed_rows = 0
        self._calls = 0  # calls in the current window
        self._low = bucket  # lowest column changed in the current window

    def changed(self, low: int, bucket: int) -> None:
        """Columns from ``low`` on were rewritten (0 with a new bucket: every row is new)."""
        if bucket != self.bucket:
            self.bucket, low = bucket, 0
        self._low = min(self._low, low)
        if low < self.packed_rows:
            self.packed, self.packed_rows = None, 0

    def logits(self, normed: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``normed [N, d] @ rows.T + bias`` -> [N, bucket]."""
        self._calls += 1
        if self._calls > PACK_AFTER_CALLS:
            whole_or_long = self._low == rows.shape[0] or self._low >= MIN_PACKED_ROWS
            if self.packable and whole_or_long and self._low > self.packed_rows:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(rows[: self._low].contiguous())
                self.packed_rows = self._low
            self._calls, self._low = 1, self.bucket  # this call opens the next window
        p = self.packed_rows
        if p == 0:
            return F.linear(normed, rows) + bias
        normed = normed.contiguous()
        front = torch.ops.mkldnn._linear_pointwise(normed, self.packed, bias[:p], "none", [], "")
        if p == rows.shape[0]:
            return front
        return torch.cat((front, F.linear(normed, rows[p:]) + bias[p:]), dim=1)
