"""Resident active rows: the reservoir rows of the current gather plan, kept between steps.

The in-graph gather (``HeadStage``) copies every active row on every call; on a CPU that copy
costs more than the matmul it feeds (a 16k x 4096 fp32 gather is 268 MB). ``ActiveRows`` keeps
the gathered matrix and, when the plan changes, copies only the columns whose id changed: the
delta that ``update_plan`` arranges by keeping retained ids in their columns. On a GPU the
changed columns and their ids go up through pinned memory on a side stream (``DeviceUploader``).

On a CPU, rows that stay unchanged (a static vocabulary: the drafter's own, FR-Spec's list) are also packed
once into oneDNN's blocked layout (``logits``): nn.Linear repacks the weight on every call, and at the
medium pair's 16,384 x 160 the packed product took 0.10 against 0.35 ms a row (warm; 0.7 against 1.6 ms
with the rows evicted by the target's pass), up to six calls a step.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from evospec.runtime.device_upload import DeviceUploader
from evospec.runtime.gather import GatherPlan
from evospec.runtime.skinny_head import onednn_available

# Head calls on unchanged rows before they are packed: more than one step's drafter calls (a root call and
# up to five levels), so a set that changes every step (a living vocabulary) is never packed for nothing
# (packing 4,096 rows costs about two calls).
PACK_AFTER_CALLS = 8


class ActiveRows:
    def __init__(self, reservoir: torch.Tensor, plan: GatherPlan, upload: DeviceUploader | None = None) -> None:
        self.reservoir = reservoir  # [V, d]; shared with the engine's weights, never copied
        self.plan = plan  # host tensors: which columns changed is decided on the host, no device sync
        self.upload = upload or DeviceUploader(reservoir.device)
        self.rows = reservoir.index_select(0, self.upload.upload("plan", plan.ids))
        forced = os.environ.get("EVOSPEC_HEAD_KERNEL")
        self.packable = onednn_available(self.rows) and forced in (None, "", "onednn")
        self._packed: torch.Tensor | None = None  # oneDNN's copy of ``rows``, valid until they change
        self._calls = 0  # head calls since ``rows`` last changed

    def logits(self, normed: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``normed [N, d] @ rows.T + bias`` -> [N, bucket] on the host; through the packed copy once the rows
        have stayed unchanged for ``PACK_AFTER_CALLS`` calls (the same logits to float rounding)."""
        self._calls += 1
        if self._packed is None and self.packable and self._calls > PACK_AFTER_CALLS:
            self._packed = torch.ops.mkldnn._reorder_linear_weight(self.rows)
        if self._packed is None:
            return F.linear(normed, self.rows) + bias
        return torch.ops.mkldnn._linear_pointwise(normed.contiguous(), self._packed, bias, "none", [], "")

    def _changed(self) -> None:
        self._packed, self._calls = None, 0

    def follow(self, plan: GatherPlan, cols: torch.Tensor | None = None) -> int:
        """Make ``rows`` match ``plan``; returns how many rows were copied. ``cols``: the columns whose
        id changed, if the caller already found them (same bucket)."""
        if plan is self.plan:
            return 0
        if plan.bucket != self.plan.bucket:
            self.rows = self.reservoir.index_select(0, self.upload.upload("plan", plan.ids))
            moved = plan.bucket
        else:
            cols = torch.nonzero(plan.ids != self.plan.ids).flatten() if cols is None else cols
            if cols.numel():
                self._copy(cols, plan.ids[cols])
            moved = int(cols.numel())
        self.plan = plan
        if moved:
            self._changed()
        return moved

    def _copy(self, cols: torch.Tensor, ids: torch.Tensor) -> None:
        if not self.upload.cuda and self.rows.is_contiguous() and self.reservoir.is_contiguous():  # host rows
            # One thread, as bytes (any dtype): a row copy is memory-bound, and torch's split of it over its
            # threads waits on a busy core. 3,000 rows of 160 floats: 0.5 ms, against 0.6 ms for torch on one
            # thread and 11 ms on two while another process ran (measured, stop 34).
            self._bytes[cols.numpy()] = self._reservoir_bytes[ids.numpy()]
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
            self._changed()
        return int(cols.numel())
