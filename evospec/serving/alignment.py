"""Online alignment inside the vLLM plugin: the K resident head rows trained in place from what vLLM verified.

Each drafting step the drafter's first pass holds, for every verified row (``proposer_hook``), the
head input there and the verified token that follows (the label). ``ResidentAligner`` takes those
pairs and moves the resident rows toward them: cross-entropy of the head's logits over the K resident
rows against the label, one sparse Adam step (``SparseRowAdam``, the runtime aligner's optimiser) on
the label's row and the drafter's ``proposals`` strongest rows per pair, as ``HeadAligner`` does.
Pairs whose label is not resident are skipped (the head cannot score it; bringing it in is the
vocabulary policy's job).

Off the hot path: the engine thread only queues pairs and, at the next step's start, writes a finished
update (``take``); the gradient and the optimiser run on a worker thread over a copy of the rows, so
nothing vLLM reads is written while it runs. An update is written only into columns that still hold
the token it was computed for; each written row is also copied back into the reservoir, so a token
that leaves the set and returns keeps what it learnt.

Bounded memory: optimiser moments live per resident *column* (at most K slots, reset when a column
changes token), at most ``buffer`` pending pairs (newest kept), snapshots of at most about 2K rows.

Rollback as in the runtime: accuracy of the head at verified rows, measured on each batch *before*
training on it, is summed per window of ``window`` pairs; when a window scores below the one before,
every row changed in it is restored. Verification is vLLM's own: decoding stays exact whatever the rows.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields

import torch

from evospec.core.errors import SettingsError
from evospec.runtime.align.sparse_adam import SparseRowAdam
from evospec.serving.resident_rows import ResidentRows

logger = logging.getLogger("vllm.evospec.alignment")  # under vLLM's logger: its handlers print it in every process


@dataclass(frozen=True)
class ResidentAlignSettings:
    """The ``align`` table of a living drafter's ``evospec`` config (``export --vocab evospec:K+align``).

    Attributes:
        lr: Adam's learning rate for the head rows. Adam moves every touched element by about ``lr`` per
            update whatever its gradient, and a busy server updates every step: the runtime aligner's 1e-3
            lowered tau on the demo pair (2.84 -> 2.75), 2e-5 did not (README, issue 19).
        proposals: the drafter's strongest rows per pair that take a step besides the label's row.
        buffer: pairs kept while the worker is busy (the oldest are dropped): bounds memory.
        window: pairs scored per rollback verdict.
        rollback: restore a window's changed rows when its accuracy falls below the window before.
        prompts: also train on prompt rows (a request's first prefill); off: only on decode rows, the
            target's own continuations, which are what the drafter must predict (the runtime's aligner
            likewise learns from decoding cycles only).
    """

    lr: float = 2e-5
    proposals: int = 8
    buffer: int = 512
    window: int = 256
    rollback: bool = True
    prompts: bool = False

    def __post_init__(self) -> None:
        if not self.lr > 0 or self.proposals < 0 or self.buffer < 1 or self.window < 1:
            raise SettingsError(f"align settings: need lr > 0, proposals >= 0, buffer >= 1, window >= 1 (got {self})")

    @classmethod
    def from_table(cls, table: dict) -> ResidentAlignSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise SettingsError(f"align settings: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**table)

    def table(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class AlignCounters:
    """What alignment did, for logs and measurements."""

    pairs: int = 0  # verified (head input, next token) pairs seen
    dropped: int = 0  # pairs dropped because the worker was behind
    scored: int = 0  # pairs whose label was resident (trained on)
    hits: int = 0  # of those, the head's top row was the label's before the update
    updates: int = 0
    rows_trained: int = 0  # row updates written
    rollbacks: int = 0
    engine_s: float = 0.0
    worker_s: float = 0.0

    def summary(self) -> str:
        return (f"{self.pairs} pairs ({self.scored} with a resident label, {self.dropped} dropped), {self.updates} updates, "
                f"{self.rows_trained} rows trained, head accuracy at verified rows before training "
                f"{self.hits / max(1, self.scored):.3f}, {self.rollbacks} rollbacks")


@dataclass(frozen=True)
class Update:
    """An update the worker computed: subtract ``delta`` [n, d] from columns ``cols`` [n] if they still hold ``against``."""

    cols: torch.Tensor
    against: torch.Tensor
    delta: torch.Tensor
    hits: int
    scored: int
    generation: int


class ResidentAligner:
    """Args:
        weight: vLLM's live head weight [K, d] (written in place, engine thread only).
        resident: the resident ids and the reservoir (shared with the vocabulary).
        settings: see ``ResidentAlignSettings``.
        logit_scale: the drafter's logit scale (its logits are ``scale * x @ weight.T``).
        background: compute on a worker thread (serving) or inline (tests).
    """

    def __init__(self, weight: torch.Tensor, resident: ResidentRows, settings: ResidentAlignSettings,
                 logit_scale: float = 1.0, background: bool = True) -> None:
        if weight.shape[0] != resident.k:
            raise SettingsError(f"alignment: head weight has {weight.shape[0]} rows for K={resident.k}")
        self.weight, self.resident, self.s, self.scale = weight, resident, settings, float(logit_scale)
        self.counters = AlignCounters()
        self.optimiser = SparseRowAdam(weight, lr=settings.lr)  # keyed by column: at most K slots; worker only
        self._owner = resident.ids.clone()  # worker only: the token each column's moments belong to
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evospec-align") if background else None
        self._backlog: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._job: Future | None = None
        self._ready: Update | None = None  # inline mode
        self._forget: list[int] = []  # columns restored by a rollback: their moments reset with the next job
        self._generation = 0  # bumped by a rollback: updates computed before it are dropped
        self._snap_ids = torch.zeros(0, dtype=torch.long)  # tokens this window changed, and their rows
        self._snap_rows = torch.zeros(0, weight.shape[1])  # before the window's first change to them
        self._window = [0, 0]  # hits, scored in the open window
        self._before: float | None = None

    @property
    def nbytes(self) -> int:
        """Memory alignment holds besides vLLM's own weights (moments, pending pairs, snapshots)."""
        pending = sum(x.numel() * x.element_size() + y.numel() * 8 for x, y in self._backlog)
        snapshot = self._snap_rows.numel() * 4 + self._snap_ids.numel() * 8
        return self.optimiser.nbytes + pending + snapshot + self._owner.numel() * 8

    @staticmethod
    def bound_bytes(k: int, d: int, settings: ResidentAlignSettings) -> int:
        """Most ``nbytes`` can reach: moments of K columns, ``buffer`` pairs, snapshots of 2K rows, the owner ids."""
        return 2 * k * d * 4 + 16 * k + settings.buffer * (d * 4 + 8) + 2 * k * d * 4 + 8 * k

    def observe(self, states: torch.Tensor, labels: torch.Tensor) -> None:
        """Engine thread: the head inputs [n, d] at verified rows and the verified tokens after them [n]."""
        start = time.perf_counter()
        if labels.numel():
            self.counters.pairs += labels.numel()
            self._backlog.append((states.detach().to("cpu", torch.float32), labels.detach().to("cpu", torch.long)))
            held = sum(y.numel() for _, y in self._backlog)
            while held > self.s.buffer:  # keep the newest pairs
                x, y = self._backlog[0]
                cut = min(y.numel(), held - self.s.buffer)
                self._backlog[0] = (x[cut:], y[cut:])
                self.counters.dropped += cut
                held -= cut
                if not self._backlog[0][1].numel():
                    self._backlog.pop(0)
            self._submit()
        self.counters.engine_s += time.perf_counter() - start

    def _submit(self) -> None:
        if not self._backlog or self._job is not None or self._ready is not None:
            return
        x = torch.cat([x for x, _ in self._backlog])
        y = torch.cat([y for _, y in self._backlog])
        self._backlog = []
        args = (x, y, self.resident.ids.clone(), self.weight.detach().to("cpu", torch.float32, copy=True),
                self._forget, self._generation)
        self._forget = []
        if self._worker is None:
            self._ready = self._compute(*args)
        else:
            self._job = self._worker.submit(self._compute, *args)

    @torch.no_grad()
    def _compute(self, x: torch.Tensor, labels: torch.Tensor, ids: torch.Tensor, weight: torch.Tensor,
                 forget: list[int], generation: int) -> Update:
        """Worker: one sparse Adam step of cross-entropy over the K resident rows (a copy of them)."""
        start = time.perf_counter()
        changed = torch.nonzero(self._owner != ids).flatten().tolist()
        self.optimiser.forget(sorted(set(changed + forget)))  # new tokens in old columns start fresh
        self._owner = ids
        by_id, order = ids.sort()
        at = torch.searchsorted(by_id, labels).clamp(max=ids.numel() - 1)
        known = by_id[at] == labels
        cols, x = order[at[known]], x[known]  # [n] the label's column, [n, d]
        empty = Update(cols[:0], ids[:0], weight[:0], 0, 0, generation)
        if not cols.numel():
            self.counters.worker_s += time.perf_counter() - start
            return empty
        logits = self.scale * x @ weight.T  # [n, K]
        hits = int((logits.argmax(-1) == cols).sum())
        grad = torch.softmax(logits, dim=-1)  # d CE / d logits = softmax - onehot(label)
        grad[torch.arange(cols.numel()), cols] -= 1
        grad *= self.scale / cols.numel()
        strongest = logits.topk(min(self.s.proposals, ids.numel()), dim=-1).indices
        touched = torch.unique(torch.cat((cols, strongest.flatten())))
        delta = self.optimiser.delta(touched, grad[:, touched].T @ x)
        self.counters.worker_s += time.perf_counter() - start
        return Update(touched, ids[touched], delta, hits, int(cols.numel()), generation)

    def take(self) -> None:
        """Engine thread, at a step's start: write a finished update into the rows; never waits."""
        start = time.perf_counter()
        if self._job is not None and self._job.done():
            update, self._job = self._job.result(), None  # re-raises a worker error here, on the engine thread
        else:
            update, self._ready = self._ready, None
        if update is not None:
            self._apply(update)
            self._submit()
        self.counters.engine_s += time.perf_counter() - start

    @torch.no_grad()
    def _apply(self, update: Update) -> None:
        self.counters.scored += update.scored
        self.counters.hits += update.hits
        if update.generation != self._generation or not update.cols.numel():
            return
        keep = self.resident.ids[update.cols] == update.against  # columns whose token changed since: skipped
        cols, delta = update.cols[keep], update.delta[keep]
        ids = self.resident.ids[cols]
        first = ~torch.isin(ids, self._snap_ids)  # rows this window changes for the first time
        self._snap_ids = torch.cat((self._snap_ids, ids[first]))
        self._snap_rows = torch.cat((self._snap_rows, self.weight.detach()[cols[first].to(self.weight.device)].to(
            "cpu", torch.float32)))
        self.weight.data[cols.to(self.weight.device)] -= delta.to(self.weight.device, self.weight.dtype)
        self._write_back(cols)
        if not self.counters.updates:
            logger.info("EvoSpec alignment: first update trained %d resident rows", cols.numel())
        self.counters.updates += 1
        self.counters.rows_trained += int(cols.numel())
        self._judge(update.hits, update.scored)

    def _write_back(self, cols: torch.Tensor) -> None:
        rows = self.resident.row_of[self.resident.ids[cols]]
        self.resident.rows[rows] = self.weight.detach()[cols.to(self.weight.device)].to("cpu", self.resident.rows.dtype)

    def _judge(self, hits: int, scored: int) -> None:
        """Close the window once it scored ``window`` pairs (or its snapshot reached K rows): keep or restore."""
        if not self.s.rollback:
            self._forget_snapshot()
            return
        self._window[0] += hits
        self._window[1] += scored
        if self._window[1] < self.s.window and self._snap_ids.numel() < self.resident.k:
            return
        accuracy = self._window[0] / max(1, self._window[1])
        if self._before is not None and accuracy < self._before:
            self._restore()
        else:
            self._before = accuracy
        self._forget_snapshot()
        self._window = [0, 0]

    def _forget_snapshot(self) -> None:
        self._snap_ids, self._snap_rows = self._snap_ids[:0], self._snap_rows[:0]

    def _restore(self) -> None:
        ids, rows = self._snap_ids, self._snap_rows
        self.resident.rows[self.resident.row_of[ids]] = rows.to(self.resident.rows.dtype)
        where = torch.nonzero(self.resident.ids[:, None] == ids[None, :])  # [m, 2] (column, snapshot index)
        self.weight.data[where[:, 0].to(self.weight.device)] = rows[where[:, 1]].to(self.weight.device, self.weight.dtype)
        self._forget = where[:, 0].tolist()
        self._generation += 1
        self.counters.rollbacks += 1

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
