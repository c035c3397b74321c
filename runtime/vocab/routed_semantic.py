"""EvoSpec's set, routed: the semantic index queried with each cycle's own root state.

The living vocabulary's evidence (and its semantic rows, ``semantic_count``) reaches the set a cycle
or two after the state it came from. DynaSpec instead chooses its rows from the state the drafter
is about to draft from (``route``, called by the compiled drafter between trunk and head), so the
rows the drafter itself scores highest stay in its set. ``route_semantic`` gives EvoSpec the same:
``route(state)`` takes the inner policy's set and puts the index's ``count`` nearest rows to
``state`` that it lacks in place of its lowest-ranked entries (never the core), so the set stays K
distinct ids. The query runs on the decoding thread (a USearch search, timed as retrieval).
"""

from __future__ import annotations

import torch

from evospec.runtime.vocab.pipelined import patched


class RoutedSemantic:
    def __init__(self, inner, semantic, count: int, room: int) -> None:
        self.inner, self.semantic, self.count, self.room = inner, semantic, count, room
        self.name = inner.name

    def route(self, state: torch.Tensor) -> torch.Tensor:
        base = self.inner.active_ids()
        nearest = torch.tensor(self.semantic.query(state, self.count), dtype=base.dtype)
        return patched(base, nearest, self.room)

    def __getattr__(self, name: str):  # reset, observe, active_ids, close, ... of the wrapped policy
        return getattr(self.inner, name)
