"""Resident active rows: the reservoir rows of the current gather plan, kept between steps.

The in-graph gather (``HeadStage``) copies every active row on every call; on a CPU that copy
costs more than the matmul it feeds (a 16k x 4096 fp32 gather is 268 MB). ``ActiveRows`` keeps
the gathered matrix and, when the plan changes, copies only the columns whose id changed: the
delta that ``update_plan`` arranges by keeping retained ids in their columns. On a GPU the
changed columns and their ids go up through pinned memory on a side stream (``DeviceUploader``).

On a CPU the head over these rows is computed here (``logits``), through oneDNN's packed product
(``packed_head.py``: the leading columns that stay put packed once, the rest after each change).
"""

from __future__ import annotations

import torch

from evospec.runtime.device_upload import DeviceUploader
from evospec.runtime.gather import GatherPlan
from evospec.runtime.native_plan import copy_rows_numpy, native_row_copy
from evospec.runtime.packed_head import PackedHead
from evospec.runtime.skinny_head import may_pack


class ActiveRows:
    def __init__(self, reservoir: torch.Tensor, plan: GatherPlan, upload: DeviceUploader | None = None) -> None:
        self.reservoir = reservoir  # [V, d]; shared with the engine's weights, never copied
        self.plan = plan  # host tensors: which columns changed is decided on the host, no device sync
        self.upload = upload or DeviceUploader(reservoir.device)
        self.rows = reservoir.index_select(0, self.upload.upload("plan", plan.ids))
        self.head = PackedHead(may_pack(self.rows), plan.bucket)
        self._row_copy = native_row_copy() or copy_rows_numpy

    def logits(self, normed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``normed [N, d] @ rows.T + bias`` -> [N, bucket] on the host (``PackedHead``)."""
        return self.head.logits(normed, self.rows, bias)

    def follow(self, plan: GatherPlan, cols: torch.Tensor | None = None) -> int:
        """Make ``rows`` match ``plan``; returns how many rows were copied. ``cols``: the columns whose
        id changed, if the caller already found them (same bucket)."""
        if plan is self.plan:
            return 0
        if plan.bucket != self.plan.bucket:
            self.rows = self.reservoir.index_select(0, self.upload.upload("plan", plan.ids))
            self.head.changed(0, plan.bucket)
            moved = plan.bucket
        else:
            cols = torch.nonzero(plan.ids != self.plan.ids).flatten() if cols is None else cols
            if cols.numel():
                self._copy(cols, plan.ids[cols])
                self.head.changed(int(cols.min()), plan.bucket)
            moved = int(cols.numel())
        self.plan = plan
        return moved

    def _copy(self, cols: torch.Tensor, ids: torch.Tensor) -> None:
        if not self.upload.cuda and self.rows.is_contiguous() and self.reservoir.is_contiguous():  # host rows
            # One thread, as bytes (any dtype): a row copy is memory-bound, and torch's split of it over its
            # threads waits on a busy core. 3,000 rows of 160 floats: 0.5 ms, against 0.6 ms for torch on one
            # thread and 11 ms on two while another process ran (measured, stop 34). The C++ library's copy
            # prefetches (``native_plan.py``); without it, ``np.take``.
            self._row_copy(self._bytes, self._reservoir_bytes, cols.numpy(), ids.numpy())
            return
        cols, ids = self.upload.upload("cols", cols), self.upload.upload("ids", ids)
        # index_copy_, not ``rows[cols] = ...``: on a busy two-core host the index_put split over torch's threads
        # waited ~24 ms on the scheduler for 100 moved rows, where index_copy_ takes ~30 us (distinct columns)
        self.rows.index_copy_(0, cols, self.reservoir.index_select(0, ids))

    @property
    def _bytes(self):
        return self.rows.view(torch.uint8).numpy()  # a view: writes land in ``rows``

    @property
    def _reservoir_bytes(self):
        return self.reservoir.view(torch.uint8).numpy()

    def refresh(self, target_ids: torch.Tensor) -> int:
        """Re-copy the active columns of ``target_ids`` after their reservoir rows changed in place
        (online alignment); returns how many columns were copied."""
        cols = torch.nonzero(torch.isin(self.plan.ids, target_ids.cpu())).flatten()
        if cols.numel():
            self._copy(cols, self.plan.ids[cols])
            self.head.changed(int(cols.min()), self.plan.bucket)
        return int(cols.numel())
