"""A bounded buffer of verification feedback: drafter head inputs and the target's top tokens.

Each entry pairs the drafter's head input at a position with the target's distribution for the
token that head proposes there, kept as the target's ``top`` most likely tokens and their
probabilities (the rest of the mass is dropped: a sparse teacher). Storage is preallocated; the
buffer never grows past ``capacity`` and overwrites its oldest entries.
"""

from __future__ import annotations

import torch


class FeedbackBuffer:
    def __init__(self, capacity: int, hidden_size: int, top: int = 16) -> None:
        if capacity < 1 or top < 1:
            raise ValueError(f"capacity and top must be >= 1 (got {capacity}, {top})")
        self.capacity, self.top = capacity, top
        self.states = torch.zeros(capacity, hidden_size)
        self.ids = torch.zeros(capacity, top, dtype=torch.long)
        self.probs = torch.zeros(capacity, top)
        self.added = 0  # entries ever added; the newest sits at (added - 1) % capacity

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.states, self.ids, self.probs))

    def add(self, states: torch.Tensor, target_logits: torch.Tensor) -> None:
        """``states`` [n, d] head inputs; ``target_logits`` [n, V] the target's logits for the tokens they propose."""
        probs, ids = torch.softmax(target_logits.float(), dim=-1).topk(self.top, dim=-1)
        for state, p, i in zip(states.float(), probs, ids):
            slot = self.added % self.capacity
            self.states[slot], self.probs[slot], self.ids[slot] = state, p, i
            self.added += 1

    def confidence(self) -> torch.Tensor:
        """[len] the target's top probability per entry: high = an easy, unambiguous correction."""
        return self.probs[: len(self), 0]
