"""CUDA graphs for the torch stages: one graph per input signature, replayed instead of relaunched.

A draft step is dozens of small kernels; at batch 1 on a GPU their launches cost more than their
arithmetic (the head at 16k active rows is ~0.05 ms of memory traffic). A graph per signature
(the shapes of the inputs; the storage of inputs passed by reference, such as the resident head
rows, which are read in place instead of copied) removes the launches. Signatures are few
because the runtime keeps shapes static: the head is padded to a bucket and the trunk attends
over the whole cache capacity with a mask (``CompiledDrafter(static_past=True)``). Inputs are
copied into the graph's static buffers; outputs are cloned out, so callers may keep them, except
the ``borrowed`` ones, which the caller consumes before the stage runs again (the trunk's new keys
and values go straight into the cache): those are the graph's own buffers, with no copy.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from evospec.runtime.runners import ActivatedRunner


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]


class GraphedRunner(ActivatedRunner):
    """Wraps a runner whose ``infer`` runs torch on CUDA; same interface, replayed from graphs."""

    def __init__(self, runner, by_reference: tuple[str, ...] = (), max_graphs: int = 64, max_rows: int = 64,
                 warmup: int = 2, borrowed: tuple[str, ...] = ()) -> None:
        """Calls with more than ``max_rows`` token rows (a prefill over the prompt) run eagerly: their
        length varies call to call, and a graph per length would be captured and never replayed.
        ``borrowed``: outputs returned as the graph's static buffers, valid until this stage's next call."""
        self.runner, self.name = runner, runner.name
        self.by_reference, self.max_graphs, self.max_rows, self.warmup = set(by_reference), max_graphs, max_rows, warmup
        self.borrowed = set(borrowed)
        self._graphs: OrderedDict[tuple, _Captured] = OrderedDict()
        self._pool = None
        self.captures = 0

    @property
    def module(self):
        return self.runner.module

    def activate(self) -> None:
        self.runner.activate()

    def deactivate(self) -> None:
        self.runner.deactivate()

    def _key(self, feeds: dict[str, torch.Tensor]) -> tuple:
        return tuple((n, tuple(t.shape), t.dtype, t.data_ptr() if n in self.by_reference else None)
                     for n, t in sorted(feeds.items()))

    def _capture(self, feeds: dict[str, torch.Tensor]) -> _Captured:
        inputs = {n: t if n in self.by_reference else t.clone() for n, t in feeds.items()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream, as torch.cuda.graph requires
            for _ in range(self.warmup):
                self.runner.infer(inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self.runner.infer(inputs)
        self.captures += 1
        return _Captured(graph, inputs, outputs)

    def infer(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        tokens = next((feeds[n] for n in ("features", "hidden", "normed") if n in feeds), None)
        if tokens is not None and tokens.shape[-2] > self.max_rows:
            return self.runner.infer(feeds)
        key = self._key(feeds)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs[key] = self._capture(feeds)
            if len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        for name, tensor in feeds.items():
            if name not in self.by_reference:
                entry.inputs[name].copy_(tensor, non_blocking=True)
        entry.graph.replay()
        return {n: t if n in self.borrowed else t.clone() for n, t in entry.outputs.items()}
