"""Sparse online alignment of the drafter's LM-head rows, with a curriculum and rollback.

From each verification the generator hands over the drafter's head inputs and the target's
logits for the tokens those heads propose (``feedback``); they go to a bounded buffer. Every
``every`` cycles one update runs: a batch is drawn from the buffer (curriculum: confident, easy
corrections first, the pool widening to the whole buffer over ``pace_updates`` updates), the
cross-entropy between the target's top tokens and the drafter's softmax over the active set plus
those tokens is differentiated in closed form, and only the touched rows (the target's tokens
and the drafter's own ``proposals`` strongest rows per example) take a sparse Adam step, in place,
in the reservoir the engines read. Rows are snapshotted before they first change; when mean
acceptance over the ``window`` cycles after an update falls below that of the window before, every
changed row is restored. Verification never reads these rows, so exactness is untouched.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from evospec.runtime.align.feedback import FeedbackBuffer
from evospec.runtime.align.sparse_adam import SparseRowAdam


@dataclass(frozen=True)
class AlignSettings:
    buffer: int = 512
    top: int = 16
    batch: int = 32
    every: int = 4
    lr: float = 1e-3
    proposals: int = 8
    curriculum: bool = True
    pace_start: float = 0.25
    pace_updates: int = 50
    window: int = 16
    seed: int = 0


class HeadAligner:
    def __init__(self, reservoir: torch.Tensor, settings: AlignSettings = AlignSettings()) -> None:
        self.rows, self.s = reservoir, settings
        self.buffer = FeedbackBuffer(settings.buffer, reservoir.shape[1], settings.top)
        self.optimiser = SparseRowAdam(reservoir, lr=settings.lr)
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.cycles = self.updates = self.rollbacks = 0
        self.update_seconds = 0.0
        self.snapshot: dict[int, torch.Tensor] = {}
        self.accepted: deque[int] = deque(maxlen=2 * settings.window)
        self._judge_at: int | None = None  # cycle at which the pending updates are judged
        self._before = 0.0

    @property
    def nbytes(self) -> int:
        """Memory alignment adds: buffer, optimiser state, snapshot (the rows themselves are the drafter's)."""
        snap = sum(t.numel() * t.element_size() for t in self.snapshot.values())
        return self.buffer.nbytes + self.optimiser.nbytes + snap

    def pool(self) -> torch.Tensor:
        """Buffer entries an update may draw from: all, or (curriculum) the easiest share so far."""
        n = len(self.buffer)
        if not self.s.curriculum:
            return torch.arange(n)
        share = min(1.0, self.s.pace_start + (1 - self.s.pace_start) * self.updates / max(1, self.s.pace_updates))
        order = torch.argsort(self.buffer.confidence(), descending=True, stable=True)
        return order[: max(self.s.batch, int(share * n))]

    def feedback(self, states: torch.Tensor, target_logits: torch.Tensor, accepted: int,
                 active_ids: torch.Tensor) -> torch.Tensor | None:
        """Record one cycle; returns the reservoir rows it changed (an update or a rollback), or None."""
        self.buffer.add(states, target_logits)
        self.accepted.append(accepted)
        self.cycles += 1
        if self._judge_at is not None and self.cycles >= self._judge_at:
            after = sum(list(self.accepted)[-self.s.window :]) / self.s.window
            changed = self._rollback() if after < self._before else None
            self.snapshot, self._judge_at = {}, None
            if changed is not None:
                return changed
        if self.cycles % self.s.every == 0 and len(self.buffer) >= self.s.batch:
            return self.update(active_ids)
        return None

    def _rollback(self) -> torch.Tensor:
        ids = torch.tensor(sorted(self.snapshot), dtype=torch.long)
        self.rows[ids] = torch.stack([self.snapshot[i] for i in ids.tolist()])
        self.optimiser.forget(ids.tolist())
        self.rollbacks += 1
        return ids

    def update(self, active_ids: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        rows = self._update(active_ids)
        self.update_seconds += time.perf_counter() - start
        return rows

    @torch.no_grad()
    def _update(self, active_ids: torch.Tensor) -> torch.Tensor:
        pool = self.pool()
        pick = pool[torch.randperm(pool.numel(), generator=self.generator)[: self.s.batch]]
        x, ids, p = self.buffer.states[pick], self.buffer.ids[pick], self.buffer.probs[pick]
        p = p / p.sum(-1, keepdim=True)  # the teacher: the target's top tokens, renormalised
        union = torch.unique(torch.cat((active_ids.cpu(), ids.flatten())))  # sorted
        q = torch.softmax(x @ self.rows[union].T, dim=-1)  # [B, U]
        cols = torch.searchsorted(union, ids)
        grad_logits = q.clone()
        grad_logits.scatter_add_(1, cols, -p)  # d CE / d logits = q - p
        touched = torch.unique(torch.cat((cols.flatten(), q.topk(min(self.s.proposals, q.shape[1]), dim=-1).indices.flatten())))
        grads = grad_logits[:, touched].T @ x / x.shape[0]  # [T, d]
        rows = union[touched]
        for i in rows.tolist():
            self.snapshot.setdefault(i, self.rows[i].clone())
        if self._judge_at is None:  # the first update since the last verdict opens a judgement window
            recent = list(self.accepted)[-self.s.window :]
            self._before = sum(recent) / max(1, len(recent))
            self._judge_at = self.cycles + self.s.window
        self.optimiser.step(rows, grads)
        self.updates += 1
        return rows
