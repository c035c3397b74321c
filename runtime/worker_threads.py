"""Background workers that leave the decoding thread's cores to it.

The retrieval worker (``vocab/pipelined.py``) runs its job while the target forward runs. Its row-sized ops
(a 151k-entry membership mask, the drift test's ``any``) are large enough for torch to split over a team of
OpenMP threads of its own; on two cores that team and the forward's threads took turns. Measured at stop 37
(K = 16384 EvoSpec, ORT bundle, code): the target's pass took 14-16 ms a step against 9-10.5 with FR-Spec's
static set on the same rows and bundle, and 10.6-11.3 once the retrieval worker ran on one thread.

The background aligner (``align/background.py``) keeps its team: on one thread (tried, same command with
``+align`` at T = 1) its target pass shortened from 15.7 to 12.1 ms, but the wait for its update and the
drafting it then overlapped grew as much (30.5 against 30.6 ms a step).
"""

from __future__ import annotations

import ctypes

import torch


def one_torch_thread() -> None:
    """A worker thread's initializer: the torch ops of its jobs run on that thread, without an OpenMP team.

    OpenMP's thread count is per calling thread, so this leaves the decoding thread's (and any thread started
    later) as it was; ``torch.set_num_threads`` would also change the count new threads start with. Where the
    process has no OpenMP runtime loaded there is no team to avoid."""
    try:
        set_threads = ctypes.CDLL(None).omp_set_num_threads
    except AttributeError:
        return
    torch.get_num_threads()  # torch's once-per-thread setup first: run later, it would set the count back
    set_threads(1)
