"""The target's sampling distribution: temperature, then nucleus (top-p) filtering.

Speculative sampling is exact with respect to *this* distribution, so it is defined once here
and used by verification, by the plain decoding path and by the tests.
"""

from __future__ import annotations

import torch


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities over the last axis of ``logits`` after temperature and top-p.

    Top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (always at least
    one token), with the same convention as ``transformers``' TopPLogitsWarper.
    """
    if temperature <= 0:
        raise ValueError("sampling_probs needs temperature > 0; greedy decoding uses argmax")
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1)  # ascending
        remove_sorted = sorted_probs.cumsum(dim=-1) <= (1.0 - top_p)
        remove_sorted[..., -1] = False
        remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
        probs = probs.masked_fill(remove, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One draw from a 1-D probability vector with an explicit generator."""
    return int(torch.multinomial(probs, 1, generator=generator).item())
