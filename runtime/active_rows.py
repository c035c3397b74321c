"""Resident active rows: the reservoir rows of the current gather plan, kept between steps.

The in-graph gather (``HeadStage``) copies every active row on every call; on a CPU that copy
costs more than the matmul it feeds (a 16k x 4096 fp32 gather is 268 MB). ``ActiveRows`` keeps
the gathered matrix and, when the plan changes, copies only the columns whose id changed: the
delta that ``update_plan`` arranges by keeping retained ids in their columns.
"""

from __future__ import annotations

import torch

from evospec.runtime.gather import GatherPlan


class ActiveRows:
    def __init__(self, reservoir: torch.Tensor, plan: GatherPlan) -> None:
        self.reservoir = reservoir  # [V, d]; shared with the engine's weights, never copied
        self.plan = plan
        self.rows = reservoir.index_select(0, plan.ids.to(reservoir.device))

    def follow(self, plan: GatherPlan) -> int:
        """Make ``rows`` match ``plan``; returns how many rows were copied."""
        if plan is self.plan:
            return 0
        ids = plan.ids.to(self.reservoir.device)
        if plan.bucket != self.plan.bucket:
            self.rows = self.reservoir.index_select(0, ids)
            moved = plan.bucket
        else:
            cols = torch.nonzero(ids != self.plan.ids.to(ids.device)).flatten()
            if cols.numel():
                self.rows[cols] = self.reservoir.index_select(0, ids[cols])
            moved = int(cols.numel())
        self.plan = plan
        return moved

    def refresh(self, target_ids: torch.Tensor) -> int:
        """Re-copy the active columns of ``target_ids`` after their reservoir rows changed in place
        (online alignment); returns how many columns were copied."""
        ids = self.plan.ids.to(self.reservoir.device)
        cols = torch.nonzero(torch.isin(ids, target_ids.to(ids.device))).flatten()
        if cols.numel():
            self.rows[cols] = self.reservoir.index_select(0, ids[cols])
        return int(cols.numel())
