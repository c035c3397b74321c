"""Static policies: ``full`` (every token), ``eagle3`` (the drafter's own d2t), ``frspec:K`` (FR-Spec)."""

from __future__ import annotations

import torch

from evospec.runtime.vocab.base import PolicyInputs, StaticPolicy
from evospec.runtime.vocab.frequencies import TokenFrequencies


def full_policy(inputs: PolicyInputs) -> StaticPolicy:
    return StaticPolicy("full", torch.arange(inputs.vocab_size))


def eagle3_policy(inputs: PolicyInputs) -> StaticPolicy:
    return StaticPolicy("eagle3", inputs.draft_vocab_ids)


def frspec_policy(inputs: PolicyInputs, k: int, frequencies: TokenFrequencies) -> StaticPolicy:
    """FR-Spec: the K most frequent tokens of a corpus (ties broken by lower id)."""
    return StaticPolicy(f"frspec:{k}", frequencies.top(k, inputs.vocab_size))
