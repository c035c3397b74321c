"""The drafter's trunk timed apart from the rest of drafting (``bench --breakdown``: trunk and head).

A draft call runs the trunk (the decoder layer over the new positions), then the head (the LM head
over the active rows); the tree chooses tokens from its logits. The generator times drafting as a
whole (``DecodeStats.draft_time_s``); ``TrunkClock`` adds up the time spent inside the trunk
module's forward, through forward hooks, on the decoding thread and with the clock the step's
columns use (``time.perf_counter``). The trunk runs inside the draft window, so trunk <= draft and
head = draft - trunk: the parts of a step still add up to the step.

Hooks need a torch module: the Python drafter's decoder layer, or a torch bundle's trunk stage
(decoder layer and final norm). ONNX Runtime and TensorRT engines, CUDA-graph replays and the C++
library run the trunk out of torch's reach; their draft time stays one column (``timed`` is False).
On a GPU nothing is synchronised here (two waits per draft call would slow every step): kernels the
trunk launched can still be running when the head starts, and the head's first host read then waits
for them, as the target's forward shows up in the verdict.
"""

from __future__ import annotations

import time
from typing import Self

import torch

from evospec.runtime.compiled_drafter import CompiledDrafter
from evospec.runtime.drafter import Eagle3Drafter
from evospec.runtime.runners import TorchRunner


def trunk_module(drafter: object) -> torch.nn.Module | None:
    """The torch module that is the drafter's trunk, or None where the trunk is not a torch module."""
    if isinstance(drafter, Eagle3Drafter):
        return drafter.midlayer
    if isinstance(drafter, CompiledDrafter):
        runner = drafter.runners.get("trunk")
        return runner.module if isinstance(runner, TorchRunner) else None
    return None


class TrunkClock:
    """Seconds spent in a trunk module's forward while entered (``with clock: draft``); a clock over no
    module (``module=None``) times nothing and says so (``timed`` is False).

    Hooks are attached only while entered, so a suspended or abandoned token stream leaves none behind.
    """

    def __init__(self, module: torch.nn.Module | None) -> None:
        self.module = module
        self.seconds = 0.0
        self._started = 0.0
        self._handles: list = []

    @property
    def timed(self) -> bool:
        return self.module is not None

    def __enter__(self) -> Self:
        if self.module is not None:
            self._handles = [self.module.register_forward_pre_hook(self._start),
                             self.module.register_forward_hook(self._stop)]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _start(self, module: torch.nn.Module, args: tuple) -> None:
        self._started = time.perf_counter()

    def _stop(self, module: torch.nn.Module, args: tuple, output: object) -> None:
        self.seconds += time.perf_counter() - self._started
