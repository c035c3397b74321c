"""Sparse online alignment of the drafter's LM-head rows (and optionally its final norm), with a
curriculum and rollback.

From each verification the generator hands over the drafter's head inputs and the target's
logits for the tokens those heads propose (``CycleFeedback``); they go to a bounded buffer. Every
``every`` cycles one update runs: a batch is drawn from the buffer (curriculum: confident, easy
corrections first, the pool widening to the whole buffer over ``pace_updates`` updates), the
cross-entropy between the target's top tokens and the drafter's softmax over the active set plus
those tokens is differentiated in closed form, and only the touched rows (the target's tokens
and the drafter's own ``proposals`` strongest rows per example) take a sparse Adam step, in place,
in the reservoir the engines read. With ``norm`` the final RMSNorm's weight (a trunk parameter of
d values) is trained too: the buffer then keeps the normalised state before that weight.

An update is three steps so that the arithmetic can leave the decoding thread (``background``):
``draw`` (copy a batch, decoding thread), ``compute`` (gradients and optimiser moments; reads the
rows, writes nothing the engines read), ``apply`` (write rows, decoding thread, between cycles).
Rows are snapshotted before they first change; when mean acceptance over the ``window`` cycles
after an update falls below that of the window before, every changed row is restored.
Verification never reads these rows, so exactness is untouched.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import torch

from evospec.runtime.align.feedback import Changes, CycleFeedback, FeedbackBuffer, tensor_bytes
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
    # ... for greedy sessions too; False: only sessions decoded by sampling (T > 0) order their updates by the
    # curriculum, greedy ones draw from the whole buffer. Chosen on the valid split (README, issue 15, stop 48): at
    # T = 0 the curriculum cost 3.4 / 1.6 points of full tau at K = 1024 / 4096, at T = 1 it was level (+0.8 / +1.5)
    curriculum_greedy: bool = False
    # the teacher keeps the target's mass outside its top tokens as one "rest" class the drafter's other
    # columns must share, instead of renormalising the top tokens (which teaches an overconfident head:
    # at T = 1 a diffuse target's top 16 may hold a third of its mass)
    rest_mass: bool = False
    # ... and the same for cycles decoded by sampling only (T > 0: verification accepts by the target's whole
    # distribution), greedy cycles keeping the renormalised teacher (only the argmax is verified). Chosen on the
    # valid split (README, stop 34): at T = 1 the renormalised teacher cost tau at K >= 4096
    sampled_rest_mass: bool = True
    pace_start: float = 0.25
    pace_updates: int = 50
    window: int = 16
    norm: bool = False  # also train the final norm's weight (needs the drafter's trunk weights)
    norm_lr: float = 1e-4
    background: bool = True  # callers wrap the aligner in BackgroundAligner: updates on a worker, one cycle later
    seed: int = 0


@dataclass
class UpdateBatch:
    states: torch.Tensor  # [B, d] buffered head inputs (normalised states before the norm weight with ``norm``)
    ids: torch.Tensor  # [B, top] the target's top tokens
    probs: torch.Tensor  # [B, top] their probabilities
    active_ids: torch.Tensor
    rest: torch.Tensor | None = None  # [B] bool: buffered from sampled cycles (``sampled_rest_mass``)


@dataclass
class UpdateResult:
    rows: torch.Tensor  # reservoir rows to change
    deltas: torch.Tensor  # [len(rows), d] to subtract from them
    norm_delta: torch.Tensor | None
    seconds: float


class HeadAligner:
    def __init__(self, reservoir: torch.Tensor, settings: AlignSettings = AlignSettings(),
                 norm_weight: torch.Tensor | None = None, trainable: torch.Tensor | None = None) -> None:
        """``trainable``: [V] bool, the rows updates may change (None: every row); EvoSpec's combined
        method passes the rows the drafter was not trained with, so alignment corrects exactly the
        synthesised rows that retrieval brings into the active set and leaves the distilled ones alone."""
        if settings.norm and norm_weight is None:
            raise ValueError("AlignSettings(norm=True) needs the drafter's final norm weight")
        if trainable is not None and (trainable.dtype != torch.bool or trainable.shape != reservoir.shape[:1]):
            raise ValueError(f"trainable must be a bool mask of {reservoir.shape[0]} rows, got "
                             f"{trainable.dtype} {tuple(trainable.shape)}")
        self.rows, self.s, self.trainable = reservoir, settings, trainable
        self.buffer = FeedbackBuffer(settings.buffer, reservoir.shape[1], settings.top)
        self.optimiser = SparseRowAdam(reservoir, lr=settings.lr)
        self.norm = norm_weight.detach().float().clone() if settings.norm else None
        self.norm_optimiser = SparseRowAdam(self.norm.view(1, -1), lr=settings.norm_lr) if settings.norm else None
        self.norm_snapshot: torch.Tensor | None = None
        self.generator = torch.Generator().manual_seed(settings.seed)
        self.cycles = self.updates = self.rollbacks = 0
        self.update_seconds = 0.0  # arithmetic of the updates, wherever it ran
        self.blocking_seconds = 0.0  # time the decoding thread spent in ``feedback``
        self._snap_ids = torch.zeros(0, dtype=torch.long)  # rows changed since the last verdict, and their
        self._snap_rows = reservoir.new_zeros(0, reservoir.shape[1])  # values before the first change
        self.accepted_history: deque[int] = deque(maxlen=2 * settings.window)
        self._judge_at: int | None = None  # cycle at which the pending updates are judged
        self._before = 0.0
        self._sampled = False  # whether the newest cycle was decoded by sampling (the curriculum's scope)

    @property
    def nbytes(self) -> int:
        """Memory alignment adds: buffer, optimiser state, snapshots (the rows themselves are the drafter's)."""
        extra = tensor_bytes((self._snap_rows, self._snap_ids, self.norm, self.norm_snapshot))
        if self.norm_optimiser is not None:
            extra += self.norm_optimiser.nbytes
        return self.buffer.nbytes + self.optimiser.nbytes + extra

    def pool(self) -> torch.Tensor:
        """Buffer entries an update may draw from: all, or (curriculum) the easiest share so far. Without
        ``curriculum_greedy`` the curriculum applies while the newest cycle was sampled (a server mixing kinds
        follows its latest request)."""
        n = len(self.buffer)
        if not self.s.curriculum or not (self._sampled or self.s.curriculum_greedy):
            return torch.arange(n)
        share = min(1.0, self.s.pace_start + (1 - self.s.pace_start) * self.updates / max(1, self.s.pace_updates))
        order = torch.argsort(self.buffer.confidence(), descending=True, stable=True)
        return order[: max(self.s.batch, int(share * n))]

    def feedback(self, cycle: CycleFeedback) -> Changes | None:
        """Record one cycle and, when due, update at once; returns what changed (update or rollback)."""
        start = time.perf_counter()
        self.observe(cycle)
        changes = self.judge()
        if self.due() and changes is None:  # not straight after a rollback: the next due cycle
            changes = self.apply(self.compute(self.draw(cycle.active_ids)))
        self.blocking_seconds += time.perf_counter() - start
        return changes

    def observe(self, cycle: CycleFeedback) -> None:
        self.record(cycle, self.norm)
        self.count(cycle.accepted_count)

    def record(self, cycle: CycleFeedback, norm: torch.Tensor | None) -> None:
        """Buffer one cycle; ``norm`` is the norm weight the cycle drafted with (with ``norm``)."""
        states = cycle.head_inputs.float()
        if norm is not None:  # keep the state before the norm weight: the gradient for the weight needs it
            states = states / torch.where(norm.abs() > 1e-6, norm, torch.ones_like(norm))
        self.buffer.add(states, cycle.target_logits, rest=self.s.sampled_rest_mass and cycle.sampled)
        self._sampled = cycle.sampled

    def count(self, accepted: int) -> None:
        self.accepted_history.append(accepted)
        self.cycles += 1

    def due(self) -> bool:
        return self.cycles % self.s.every == 0 and len(self.buffer) >= self.s.batch

    def judge(self) -> Changes | None:
        """At the end of a judgement window: keep the updates, or restore every changed row."""
        if self._judge_at is None or self.cycles < self._judge_at:
            return None
        after = sum(list(self.accepted_history)[-self.s.window :]) / self.s.window
        changes = self._rollback() if after < self._before else None
        self._forget_snapshot()
        return changes

    @property
    def snapshot_rows(self) -> int:
        return int(self._snap_ids.numel())

    def _forget_snapshot(self) -> None:
        self._snap_ids, self._snap_rows = self._snap_ids[:0], self._snap_rows[:0]
        self.norm_snapshot, self._judge_at = None, None

    def _rollback(self) -> Changes:
        ids = self._snap_ids
        self.rows[ids] = self._snap_rows
        self.optimiser.forget(ids.tolist())
        self.rollbacks += 1
        trunk = None
        if self.norm_snapshot is not None:
            self.norm.copy_(self.norm_snapshot)
            self.norm_optimiser.forget([0])
            trunk = {"norm.weight": self.norm.clone()}
        return Changes(rows=ids, trunk=trunk)

    def draw(self, active_ids: torch.Tensor) -> UpdateBatch:
        """Copy one batch out of the buffer (decoding thread: the buffer keeps filling meanwhile)."""
        pool = self.pool()
        pick = pool[torch.randperm(pool.numel(), generator=self.generator)[: self.s.batch]]
        return UpdateBatch(self.buffer.states[pick], self.buffer.ids[pick], self.buffer.probs[pick],
                           active_ids.detach().cpu().clone(), self.buffer.rest[pick])

    @torch.no_grad()
    def compute(self, batch: UpdateBatch) -> UpdateResult:
        """Gradients and optimiser moments for one batch; reads rows, writes nothing the engines read."""
        start = time.perf_counter()
        x, ids = batch.states, batch.ids
        rest_rows = torch.full((x.shape[0], 1), self.s.rest_mass)  # every entry, or those buffered as sampled
        if batch.rest is not None:
            rest_rows |= batch.rest[:, None]
        # the teacher: the target's top tokens at their own mass, the rest as one class; or renormalised
        p = torch.where(rest_rows, batch.probs, batch.probs / batch.probs.sum(-1, keepdim=True))
        inputs = x * self.norm if self.norm is not None else x
        union = torch.unique(torch.cat((batch.active_ids, ids.flatten())))  # sorted
        weights = self.rows[union]  # [U, d]
        q = torch.softmax(inputs @ weights.T, dim=-1)  # [B, U]
        cols = torch.searchsorted(union, ids)
        grad_logits = q.clone()
        grad_logits.scatter_add_(1, cols, -p)  # d CE / d logits = q - p
        if bool(rest_rows.any()):  # CE with a rest class R = sum of q outside the teacher's tokens, target mass r:
            rest = torch.ones_like(q, dtype=torch.bool).scatter_(1, cols, False)  # d/dz_k (k in rest) = q_k (1 - r/R)
            r = (1 - p.sum(-1, keepdim=True)).clamp_min(0)
            big_r = (q * rest).sum(-1, keepdim=True).clamp_min(1e-6)
            grad_logits -= torch.where(rest & rest_rows, q * r / big_r, torch.zeros_like(q))
        grad_logits /= x.shape[0]
        top = q.topk(min(self.s.proposals, q.shape[1]), dim=-1).indices
        touched = torch.unique(torch.cat((cols.flatten(), top.flatten())))
        if self.trainable is not None:
            touched = touched[self.trainable[union[touched]]]
        rows = union[touched]
        deltas = self.optimiser.delta(rows, grad_logits[:, touched].T @ inputs)
        norm_delta = None
        if self.norm is not None:  # d CE / d w = sum_b x_b * (g_b @ W)
            grad_norm = (x * (grad_logits @ weights)).sum(0)
            norm_delta = self.norm_optimiser.delta(torch.zeros(1, dtype=torch.long), grad_norm[None])[0]
        return UpdateResult(rows, deltas, norm_delta, time.perf_counter() - start)

    @torch.no_grad()
    def apply(self, result: UpdateResult) -> Changes:
        """Write one computed update into the rows (decoding thread, between cycles)."""
        first = result.rows[~torch.isin(result.rows, self._snap_ids)]  # rows changing for the first time
        self._snap_ids = torch.cat((self._snap_ids, first))
        self._snap_rows = torch.cat((self._snap_rows, self.rows[first]))
        if self.norm is not None and self.norm_snapshot is None:
            self.norm_snapshot = self.norm.clone()
        if self._judge_at is None:  # the first update since the last verdict opens a judgement window
            recent = list(self.accepted_history)[-self.s.window :]
            self._before = sum(recent) / max(1, len(recent))
            self._judge_at = self.cycles + self.s.window
        self.rows[result.rows] -= result.deltas
        trunk = None
        if result.norm_delta is not None:
            self.norm -= result.norm_delta
            trunk = {"norm.weight": self.norm.clone()}
        self.updates += 1
        self.update_seconds += result.seconds
        return Changes(rows=result.rows, trunk=trunk)
