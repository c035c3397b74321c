"""One active set for a whole vLLM batch, planned on a worker thread from the tokens vLLM verifies.

vLLM runs one drafter for every running request, so the K resident rows serve the batch together.
The set is the *union of the running requests' evidence within K*: each request's verified tokens
(its prompt at prefill, then what each step committed) are fed to one policy as that request's own
segment, so context and successor evidence come from every request, ranked by recency as in our
runtime (``EvoSpecPolicy``); evidence of finished requests ages out the same way. Static policies
(``frspec:K``) never change the set and do no work.

Off the critical path: ``observe`` queues the step's segments and returns; a single worker thread
updates the policy, computes the next set and plans the row change against the resident ids it was
handed (no other change is applied while its job runs, so they are still the resident ids when the
change is taken; checked); ``next_change`` (called at the start of a drafting
step) takes a finished set if there is one and never waits, so a slow policy delays the set by a
step or more, never the decoding. With ``background=False`` the work runs inline (deterministic,
for tests). Exactness never depends on the set: vLLM verifies against the target's full vocabulary.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch

from evospec.runtime.vocab.base import StaticPolicy, VocabPolicy
from evospec.serving.resident_rows import ResidentRows, RowChange

logger = logging.getLogger(__name__)


@dataclass
class VocabularyCounters:
    """What the shared vocabulary did, for logs and measurements."""

    steps: int = 0  # drafting steps that asked for a change
    segments: int = 0  # request segments observed
    sets: int = 0  # active sets applied
    rows_copied: int = 0  # rows written into the resident head
    engine_s: float = 0.0  # seconds on the engine's thread: queueing tokens, planning the change (the caller adds the copy)
    worker_s: float = 0.0  # seconds the worker spent updating the policy and choosing sets


@dataclass(frozen=True)
class Planned:
    """A set the worker chose and the row change that brings it in, planned against ``against``."""

    against: torch.Tensor  # [K] resident ids the change was planned against
    wanted: torch.Tensor  # [K] the new set
    change: RowChange


class SharedVocabulary:
    """Args:
        policy: any vocabulary policy (``frspec:K``: static; ``evospec:K``: living), over target ids.
        resident: the K resident rows and the reservoir they are drawn from.
        fill: reservoir ids ranked by corpus frequency, to top up a set whose ids lack rows.
        background: plan on a worker thread (serving) or inline (tests).
    """

    def __init__(self, policy: VocabPolicy, resident: ResidentRows, fill: torch.Tensor, background: bool = True) -> None:
        self.policy, self.resident = policy, resident
        self.fill = fill.long()
        self.static = isinstance(policy, StaticPolicy)
        self.counters = VocabularyCounters()
        self._worker = None if self.static or not background else ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="evospec-vocabulary")
        self._backlog: list[list[int]] = []
        self._job: Future | None = None
        self._ready: Planned | None = None  # inline mode: the newest planned change

    def fit(self, ids: torch.Tensor) -> torch.Tensor:
        """K ids that all have rows: the policy's own first (its order; policies hand out distinct ids),
        then the most frequent reservoir ids not among them."""
        ids = ids.long()
        keep = ids[self.resident.has_row(ids)][: self.resident.k]
        taken = torch.zeros(int(self.fill.max()) + 1, dtype=torch.bool)
        taken[keep[keep < taken.numel()]] = True
        extra = self.fill[~taken[self.fill]][: self.resident.k - keep.numel()]
        return torch.cat((keep, extra))

    def _plan(self, segments: list[list[int]], served: torch.Tensor) -> Planned:
        start = time.perf_counter()
        try:
            return self._plan_now(segments, served)
        finally:
            self.counters.worker_s += time.perf_counter() - start

    def _plan_now(self, segments: list[list[int]], served: torch.Tensor) -> Planned:
        served_fn = getattr(self.policy, "served", None)  # EvoSpec judges misses against the set it served
        if served_fn is not None:
            served_fn(served)
        for segment in segments:
            self.policy.observe(segment)
        wanted = self.fit(self.policy.active_ids())
        return Planned(served, wanted, self.resident.plan(wanted, served))

    def observe(self, segments: list[list[int]]) -> None:
        """The tokens vLLM fed the drafter's first pass this step, one list per request."""
        if self.static:
            return
        start = time.perf_counter()
        self.counters.segments += len(segments)
        self._backlog.extend(s for s in segments if s)
        if self._worker is None:
            self._ready = self._plan(self._backlog, self.resident.ids.clone())
            self._backlog = []
        elif self._job is None:
            self._submit()
        self.counters.engine_s += time.perf_counter() - start

    def _submit(self) -> None:
        if self._backlog and self._worker is not None:
            backlog, self._backlog = self._backlog, []
            self._job = self._worker.submit(self._plan, backlog, self.resident.ids.clone())

    def next_change(self) -> RowChange | None:
        """The change to apply before this step drafts, or None; never waits for the worker."""
        if self.static:
            return None
        start = time.perf_counter()
        try:
            return self._next_change()
        finally:
            self.counters.engine_s += time.perf_counter() - start

    def _next_change(self) -> RowChange | None:
        self.counters.steps += 1
        if self._worker is None:
            planned, self._ready = self._ready, None
        elif self._job is not None and self._job.done():
            planned, self._job = self._job.result(), None  # re-raises a policy error here, on the engine thread
        else:
            return None
        if planned is None:
            return None
        change = planned.change
        if not torch.equal(planned.against, self.resident.ids):  # cannot happen with one job in flight; replan
            change = self.resident.plan(planned.wanted)
        # the next job is submitted by the next ``observe``, after the caller applied this change
        self.counters.sets += 1
        self.counters.rows_copied += len(change)
        return change

    def close(self) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self.policy.close()
