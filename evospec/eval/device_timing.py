"""Timing on a device: CUDA events, optionally around CUDA-graph replays, or the host clock on CPU.

Eager CUDA timing of a sub-millisecond kernel measures launch overhead as much as the kernel;
replaying a CUDA graph that holds ``calls`` back-to-back calls measures what the GPU spends
once launches are gone (what the runtime's per-bucket graphs buy). Both are reported.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def _summary(samples: list[float]) -> tuple[float, float]:
    samples = sorted(samples)
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.9 * len(samples)))]


def time_eager(fn: Callable[[], object], device: torch.device, runs: int, warmup: int) -> tuple[float, float]:
    """Median and p90 milliseconds of one call, launch included."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for _ in range(runs):
            start_s = time.perf_counter()
            fn()
            samples.append(1e3 * (time.perf_counter() - start_s))
    return _summary(samples)


def time_graphed(fn: Callable[[], object], device: torch.device, runs: int, warmup: int,
                 calls: int = 10) -> tuple[float, float]:
    """Median and p90 milliseconds per call inside a replayed CUDA graph of ``calls`` calls."""
    if device.type != "cuda":
        raise ValueError("CUDA graphs need a CUDA device")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm up off the default stream, as capture requires
        for _ in range(max(warmup, 1)):
            fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    samples = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        samples.append(start.elapsed_time(end) / calls)
    return _summary(samples)


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30, runs: int = 10) -> float:
    """Device-to-device copy bandwidth in bytes/s, counting the bytes read and written."""
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    median_ms, _ = time_eager(lambda: dst.copy_(src), device, runs, warmup=2)
    return 2 * nbytes / (median_ms / 1e3)
