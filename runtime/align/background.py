"""Alignment off the decoding thread: a HeadAligner whose update arithmetic runs on a worker.

The decoding thread only records feedback, copies a batch out and writes finished updates. The
update submitted at cycle c is collected at cycle c+1's feedback, whether it finished early or
the thread must wait: the lag is fixed, so runs are deterministic whatever the timings (the
drafts of cycle c+1 still read the old rows, which is why the worker never writes them).
``blocking_seconds`` is the decoding thread's share, ``update_seconds`` the worker's arithmetic.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

from evospec.runtime.align.feedback import Changes, CycleFeedback
from evospec.runtime.align.head_aligner import HeadAligner, UpdateResult


class BackgroundAligner:
    def __init__(self, aligner: HeadAligner) -> None:
        self.inner = aligner
        self.blocking_seconds = 0.0
        self.wait_seconds = 0.0  # of which: waiting for an update the worker had not finished
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evospec-align")
        self._pending: Future[UpdateResult] | None = None

    def __getattr__(self, name: str):  # settings, counters, nbytes, rows: the inner aligner's
        return getattr(self.inner, name)

    def feedback(self, cycle: CycleFeedback) -> Changes | None:
        start = time.perf_counter()
        self.inner.observe(cycle)  # first: the buffered state must be taken with the weights this cycle drafted with
        changes = self.collect()
        verdict = self.inner.judge()
        changes = (changes or Changes()).merge(verdict)
        if self.inner.due() and verdict is None:  # not straight after a rollback
            self._pending = self._pool.submit(self.inner.compute, self.inner.draw(cycle.active_ids))
        self.blocking_seconds += time.perf_counter() - start
        return changes or None

    def collect(self) -> Changes | None:
        """Apply the update in flight, waiting for it if the worker is still on it."""
        if self._pending is None:
            return None
        start = time.perf_counter()
        result = self._pending.result()
        self.wait_seconds += time.perf_counter() - start
        self._pending = None
        return self.inner.apply(result)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
