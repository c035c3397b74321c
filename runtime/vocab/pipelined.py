"""Retrieval off the critical path: a policy's work runs on a worker thread, one cycle ahead.

``observe`` keeps the committed tokens (and the drafter state) for a single worker thread, which
updates the wrapped policy and computes its next active set while the caller drafts and
verifies. The job starts at ``start_pending``, which the decoding loop calls as the target forward
begins: the worker's Python then runs while the forward holds no GIL. Started at ``observe``, it
competed for the GIL with the next step's plan update (0.26 -> 0.55 ms a step at K = 16384, measured)
and the drafter's Python between its engine calls. Without that call the job starts at the next
``observe`` (the same sets, less overlap). ``active_ids`` for cycle t uses the set the worker computed from cycle t-2's
observation (ready since a whole cycle), so drafting never waits on retrieval unless retrieval
takes longer than a cycle. The lag is deterministic (it does not depend on thread timing), so
runs are reproducible; exactness never depends on the active set at all.

ONNX Runtime and torch kernels release the GIL, so the worker's Python work overlaps them.

A policy that ``patches_fresh`` closes most of that lag for the price of a few ids: the decoding thread
takes the evidence of the newest committed tokens that needs no state (``inner.fresh``) and puts what
the worker's set lacks in place of its last, lowest-ranked entries, so the set stays K distinct ids.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from evospec.runtime.worker_threads import one_torch_thread


def membership(ids: torch.Tensor) -> torch.Tensor:
    """A boolean mask over ``0..max(ids)`` marking ``ids``: testing a few ids against a 16k-id set is then
    a gather (``torch.isin`` sorts: ~1 ms a call at K = 16384, measured)."""
    mask = torch.zeros(int(ids.max()) + 1 if ids.numel() else 0, dtype=torch.bool)
    mask[ids] = True
    return mask


def lacking(members: torch.Tensor, extra: torch.Tensor, room: int) -> torch.Tensor:
    """The ids of ``extra`` that ``members`` (a ``membership`` mask) lacks, in order, at most ``room``."""
    inside = extra < members.numel()
    present = torch.zeros_like(extra, dtype=torch.bool)
    present[inside] = members[extra[inside]]
    return extra[~present][:room]


def last_unlike(base: torch.Tensor, avoid: torch.Tensor, count: int, start: int) -> torch.Tensor:
    """The positions (at or after ``start``) of ``base``'s last ``count`` entries that are not in ``avoid``
    (a few ids); when too few are unlike ``avoid``, the last of those that are make up the count. Only the
    last ``count + len(avoid)`` entries can hold the unlike ones, so only those are compared."""
    lo = max(start, base.numel() - count - avoid.numel())
    window = base[lo:]
    unlike = ~(window.unsqueeze(1) == avoid).any(1) if avoid.numel() else torch.ones_like(window, dtype=torch.bool)
    positions = torch.nonzero(unlike).flatten() + lo
    if positions.numel() >= count:
        return positions[positions.numel() - count :]
    alike = torch.nonzero(~unlike).flatten() + lo
    return torch.cat((positions, alike[alike.numel() - (count - positions.numel()) :]))


def patched(base: torch.Tensor, extra: torch.Tensor, room: int, members: torch.Tensor | None = None) -> torch.Tensor:
    """``base`` with the ids of ``extra`` it lacks (in order, at most ``room``) in place of its last,
    lowest-ranked entries: still ``base.numel()`` distinct ids. ``members``: ``membership(base)``, when the
    caller has it already."""
    new = lacking(membership(base) if members is None else members, extra, room)
    if new.numel() == 0:
        return base
    return torch.cat((base[: base.numel() - new.numel()], new))


class PipelinedPolicy:
    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"evospec-retrieval-{inner.name}",
                                          initializer=one_torch_thread)
        self._queue: deque[Future] = deque()
        self._current: torch.Tensor | None = None  # the newest set the worker computed
        self._members: torch.Tensor | None = None  # ``membership(self._current)``, computed by the worker too
        self._served: torch.Tensor | None = None  # the set handed out this cycle (patched, or the same)
        self._fill_start = 0  # where the worker's set ends its evidence and begins its frequency fill
        self._added = 0  # fresh ids patched in at the end of the served set
        self._evidence_end = 0  # where the served set's kept entries end (the patch may drop some before it)
        self._fresh: list[int] = []
        self._pending: tuple | None = None  # the newest observation's job, not yet handed to the worker
        self._patching = bool(getattr(inner, "patches_fresh", False))

    def start_pending(self) -> None:
        """Hand the worker the newest observation's job (call where the caller spends a while outside Python)."""
        if self._pending is not None:
            self._queue.append(self._worker.submit(self._observe_and_plan, *self._pending))
            self._pending = None

    def decoding(self, greedy: bool) -> None:
        """The next request's kind, for the wrapped policy (after the worker's last job: it reads it)."""
        self._drain()
        if hasattr(self.inner, "decoding"):
            self.inner.decoding(greedy)

    def _drain(self) -> None:
        self.start_pending()
        while self._queue:
            self._queue.popleft().result()

    def reset(self, prompt_ids: list[int]) -> None:
        self._drain()
        self.inner.reset(prompt_ids)
        self._current = self._served = self.inner.active_ids()
        self._fill_start = getattr(self.inner, "fill_start", self._current.numel())
        self._members = membership(self._current) if self._patching else None
        self._fresh, self._added, self._evidence_end = [], 0, self._fill_start

    def _observe_and_plan(self, committed: list[int], state: torch.Tensor | None, target_top: torch.Tensor | None,
                          served: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        if served is not None and hasattr(self.inner, "served"):
            self.inner.served(served)  # the set used this cycle, not the newest one computed
        if target_top is None:
            self.inner.observe(committed, state)
        else:
            self.inner.observe(committed, state, target_top)
        active = self.inner.active_ids()
        return active, membership(active) if self._patching else None, getattr(self.inner, "fill_start", active.numel())

    def observe(self, committed: list[int], state: torch.Tensor | None = None,
                target_top: torch.Tensor | None = None) -> None:
        if self._patching:
            self._fresh = self.inner.fresh(list(committed))
        self.start_pending()  # the previous observation's job, if the caller did not start it
        # the state is copied: the job may start after the drafter has written its next one (graph buffers)
        self._pending = (list(committed), None if state is None else state.clone(), target_top, self._served)

    def active_ids(self) -> torch.Tensor:
        # queued jobs are the older observations' (due: cycle t uses cycle t-2's), the newest one is pending
        while self._queue:
            self._current, self._members, self._fill_start = self._queue.popleft().result()
        self._added, self._evidence_end = 0, self._fill_start
        self._served = self._patch(self._current) if self._fresh else self._current
        return self._served

    def _patch(self, base: torch.Tensor) -> torch.Tensor:
        """The fresh ids ``base`` lacks, appended while the set is under K (a policy without a frequency fill),
        then in place of its last, lowest-ranked entries that are not fresh themselves; never over the core."""
        k, n, core = max(self.inner.k, base.numel()), base.numel(), self.inner.core_size
        fresh = torch.tensor(self._fresh, dtype=base.dtype)
        new = lacking(self._members, fresh, k - core)
        self._added = new.numel()
        cut = n + new.numel() - k  # how many of base's entries must make room
        if new.numel() == 0:
            return base
        if cut <= 0:
            return torch.cat((base, new))
        dropped = last_unlike(base, fresh, cut, core)
        keep = torch.ones(n, dtype=torch.bool)
        keep[dropped] = False
        self._evidence_end -= int((dropped < self._fill_start).sum())
        return torch.cat((base[keep], new))

    def kept_ids(self) -> torch.Tensor:
        """The set ``active_ids`` last handed out without its frequency fill: the core, the worker's evidence
        and the fresh ids (what a ``MassRouted`` policy keeps before it fills the rest by mass)."""
        served, added = self._served, self._added
        cut = min(self._evidence_end, served.numel() - added)
        return torch.cat((served[:cut], served[served.numel() - added :])) if added else served[:cut]

    def served(self, active: torch.Tensor) -> None:
        """The set the drafter actually drafted over this cycle, when a wrapper changed what ``active_ids``
        handed out: the worker judges misses (and so drift) against it."""
        self._served = active

    def close(self) -> None:
        self._drain()
        self._worker.shutdown(wait=True)

    def __getattr__(self, name: str):  # drifts, stamp, ... of the wrapped policy
        return getattr(self.inner, name)
