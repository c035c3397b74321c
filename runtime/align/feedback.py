"""What verification hands an aligner (``CycleFeedback``), what an aligner hands back to the
engines (``Changes``), and a bounded buffer of that feedback for the sparse aligner.

``FeedbackBuffer``: each entry pairs the drafter's head input at a position with the target's distribution for the
token that head proposes there, kept as the target's ``top`` most likely tokens and their
probabilities (the rest of the mass is dropped: a sparse teacher). Storage is preallocated; the
buffer never grows past ``capacity`` and overwrites its oldest entries.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CycleFeedback:
    """What one verification tells the drafter. Row j of every tensor is one committed position.

    ``head_inputs`` [n, d]: the drafter's head input there (the root call of the cycle);
    ``target_logits`` [n, V]: the target's logits for the token that head proposes;
    ``features`` [n, 3*Dt] and ``tokens`` [n]: the root call's own inputs (for whole-drafter methods);
    ``accepted_count``: draft tokens accepted this cycle; ``active_ids``: the active set drafted over;
    ``new_context``: first cycle of a generation call (the positions do not continue the last call's);
    ``sampled``: decoding samples (T > 0), so verification accepts by the target's whole distribution, not its argmax.
    """

    head_inputs: torch.Tensor
    target_logits: torch.Tensor
    accepted_count: int
    active_ids: torch.Tensor
    features: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    new_context: bool = False
    sampled: bool = False


@dataclass
class Changes:
    """What an aligner changed, for the engines to pick up: reservoir rows (already written in place,
    the resident copy must refresh) and fuse/trunk weights by stage name (to be written in)."""

    rows: torch.Tensor | None = None
    trunk: dict[str, torch.Tensor] | None = None

    def __bool__(self) -> bool:
        return self.rows is not None or bool(self.trunk)

    def merge(self, other: Changes | None) -> Changes:
        """Both changes; where both set a trunk weight, ``other`` (the later) wins."""
        if other is None:
            return self
        rows = [r for r in (self.rows, other.rows) if r is not None]
        return Changes(rows=torch.unique(torch.cat(rows)) if rows else None,
                       trunk={**(self.trunk or {}), **(other.trunk or {})} or None)


def tensor_bytes(tensors) -> int:
    """Bytes allocated by the tensors among ``tensors`` (others, such as None or step counters, are skipped):
    how alignment methods report the memory they add."""
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def apply_changes(drafter, changes: Changes) -> None:
    """Let a compiled drafter's engines pick up what an aligner changed."""
    if changes.rows is not None:
        drafter.rows_changed(changes.rows)
    if changes.trunk:
        drafter.update_trunk_weights(changes.trunk)


class FeedbackBuffer:
    def __init__(self, capacity: int, hidden_size: int, top: int = 16) -> None:
        if capacity < 1 or top < 1:
            raise ValueError(f"capacity and top must be >= 1 (got {capacity}, {top})")
        self.capacity, self.top = capacity, top
        self.states = torch.zeros(capacity, hidden_size)
        self.ids = torch.zeros(capacity, top, dtype=torch.long)
        self.probs = torch.zeros(capacity, top)
        self.rest = torch.zeros(capacity, dtype=torch.bool)  # teach the entry with a rest class (see HeadAligner)
        self.added = 0  # entries ever added; the newest sits at (added - 1) % capacity

    def __len__(self) -> int:
        return min(self.added, self.capacity)

    @property
    def nbytes(self) -> int:
        return tensor_bytes((self.states, self.ids, self.probs, self.rest))

    def add(self, states: torch.Tensor, target_logits: torch.Tensor, rest: bool = False) -> None:
        """``states`` [n, d] head inputs; ``target_logits`` [n, V] the target's logits for the tokens they propose;
        ``rest``: teach these entries with the target's mass outside its top tokens kept as a rest class."""
        probs, ids = torch.softmax(target_logits.float(), dim=-1).topk(self.top, dim=-1)
        for state, p, i in zip(states.float(), probs, ids):
            slot = self.added % self.capacity
            self.states[slot], self.probs[slot], self.ids[slot] = state, p, i
            self.rest[slot] = rest
            self.added += 1

    def confidence(self) -> torch.Tensor:
        """[len] the target's top probability per entry: high = an easy, unambiguous correction."""
        return self.probs[: len(self), 0]
