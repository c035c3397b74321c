"""Reproducible training: a pinned thread count and torch's deterministic algorithms.

Every random draw of the reference build already comes from a seeded ``torch.Generator`` (batches,
negatives, drafter windows) or from ``torch.manual_seed`` right before initialisation, so what is
left to pin is how floating-point reductions are split: CPU matmuls and reductions may split work
by thread, and some CUDA kernels (atomics in index/scatter backward, cuBLAS workspaces) are not
deterministic unless asked. What cannot be pinned from here: the kernels a CPU's instruction set
selects (AVX2 vs AVX-512 builds of the same op round differently), and the torch version. Both are
recorded by :func:`build_environment`, so a figure says where it came from.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from evospec.core.settings import DEFAULT_THREADS


@contextmanager
def reproducible(threads: int = DEFAULT_THREADS, device: str = "cpu") -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads and deterministic algorithms; restore after.

    On CPU every op the reference build uses has a deterministic kernel, so the mode is strict (an
    op without one raises instead of silently varying). On CUDA it warns instead of raising: fused
    attention backward kernels have no deterministic variant in every torch build, and a build that
    stops there would help no one; cuBLAS is made deterministic through its documented workspace
    setting, which must be in the environment before the first cuBLAS call.
    """
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    cuda = str(device).startswith("cuda")
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=cuda)
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])


def build_environment(threads: int, device: str) -> dict[str, object]:
    """What a bit-identical rebuild needs to match besides the recipe (recorded next to the pair)."""
    env: dict[str, object] = {
        "torch": torch.__version__, "threads": threads, "device": str(device),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "machine": platform.machine(),
        "deterministic_algorithms": "strict" if not str(device).startswith("cuda") else "warn-only",
    }
    if str(device).startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return env
