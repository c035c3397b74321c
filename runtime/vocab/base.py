"""The vocabulary-policy interface: which reservoir rows the drafter's head scores next step.

A policy sees the prompt, then every committed token (``observe``, with the drafter's state),
and answers ``active_ids``
before each draft step. Verification always uses the target's full vocabulary, so no policy can
change the output; a policy only decides which tokens the drafter is able to propose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass(frozen=True)
class PolicyInputs:
    """What policies may be built from: the reservoir size and the drafter's own vocabulary."""

    vocab_size: int
    draft_vocab_ids: torch.Tensor  # target ids of the drafter's own LM-head rows
    semantic: Any = None  # a bundle's SemanticIndex (runtime/vocab/semantic.py), if it has one
    mass: Any = None  # a bundle's MassIndex (runtime/vocab/mass_index.py), if it has one


class VocabPolicy(Protocol):
    name: str

    def reset(self, prompt_ids: list[int]) -> None: ...

    def active_ids(self) -> torch.Tensor: ...

    def observe(self, committed: list[int], state: torch.Tensor | None = None,
                target_top: torch.Tensor | None = None) -> None:
        """``committed``: tokens verified this step; ``state``: the drafter's head input at the
        newest committed token before them (for semantic retrieval), when the drafter has one;
        ``target_top``: [len(committed), n] the target's most likely ids at the positions that
        produced them, when the policy asks for them (a ``target_top`` attribute > 0)."""

    def close(self) -> None:
        """Release what the policy holds (worker threads); it is not used afterwards."""


class StaticPolicy:
    """A fixed active set (``full``, ``eagle3``, ``frspec``): reset and observe do nothing."""

    def __init__(self, name: str, ids: torch.Tensor) -> None:
        self.name, self._ids = name, ids.to(torch.long)

    def reset(self, prompt_ids: list[int]) -> None:
        pass

    def active_ids(self) -> torch.Tensor:
        return self._ids

    def observe(self, committed: list[int], state: torch.Tensor | None = None,
                target_top: torch.Tensor | None = None) -> None:
        pass

    def close(self) -> None:
        pass
