"""Alignment off the decoding thread: a HeadAligner whose update arithmetic runs on a worker.

The decoding thread counts acceptance, judges (and rolls back) and writes finished updates; the
worker buffers each cycle (the target's top tokens: a softmax over its vocabulary per row), draws
batches and computes updates. The job submitted at cycle c is collected at cycle c+1's feedback,
whether it finished early or the thread must wait: the lag is fixed, so runs are deterministic
whatever the timings (the drafts of cycle c+1 still read the old rows, which is why the worker
never writes them; the buffer is the worker's alone).
``blocking_seconds`` is the decoding thread's share, ``update_seconds`` the worker's arithmetic.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from evospec.runtime.align.feedback import Changes, CycleFeedback
from evospec.runtime.align.head_aligner import HeadAligner, UpdateResult


class BackgroundAligner:
    def __init__(self, aligner: HeadAligner) -> None:
        self.inner = aligner
        self.blocking_seconds = 0.0
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evospec-align")
        self._pending: Future[UpdateResult | None] | None = None

    def __getattr__(self, name: str):  # settings, counters, nbytes, rows: the inner aligner's
        return getattr(self.inner, name)

    def feedback(self, cycle: CycleFeedback) -> Changes | None:
        start = time.perf_counter()
        inner = self.inner
        norm = None if inner.norm is None else inner.norm.clone()  # the weight this cycle drafted with
        changes = self.collect()
        inner.count(cycle.accepted_count)
        verdict = inner.judge()
        changes = (changes or Changes()).merge(verdict)
        due = inner.cycles % inner.s.every == 0 and verdict is None  # not straight after a rollback
        self._pending = self._pool.submit(self._job, cycle, norm, due)
        self.blocking_seconds += time.perf_counter() - start
        return changes or None

    def _job(self, cycle: CycleFeedback, norm: torch.Tensor | None, due: bool) -> UpdateResult | None:
        """Worker: buffer the cycle (a softmax over the target's vocabulary per row) and, when due, compute."""
        self.inner.record(cycle, norm)
        if due and len(self.inner.buffer) >= self.inner.s.batch:
            return self.inner.compute(self.inner.draw(cycle.active_ids))
        return None

    def collect(self) -> Changes | None:
        """Apply the update in flight, waiting for it if the worker is still on it."""
        if self._pending is None:
            return None
        result = self._pending.result()
        self._pending = None
        return None if result is None else self.inner.apply(result)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
