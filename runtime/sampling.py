"""The target's sampling distribution: temperature, then nucleus (top-p) filtering.

Speculative sampling is exact with respect to *this* distribution, so it is defined once here
and used by verification, by the plain decoding path and by the tests.
"""

from __future__ import annotations

import torch


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities over the last axis of ``logits`` after temperature and top-p.

    Top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (always at least
    one token), with the same convention as ``transformers``' TopPLogitsWarper: a token is removed
    when the mass of it and every less likely token is at most ``1 - top_p``.
    """
    if temperature <= 0:
        raise ValueError("sampling_probs needs temperature > 0; greedy decoding uses argmax")
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    if top_p < 1.0:
        probs = probs.masked_fill(~_nucleus(probs, top_p), 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


NUCLEUS_CANDIDATES = (1024, 16384)  # partial sorts tried, most likely tokens first, before sorting everything


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which tokens top-p keeps. A language model's nucleus is usually among its few thousand most likely
    tokens, so it is looked for with partial sorts (``topk``) first; rows whose nucleus is wider fall back
    to a full sort (of 151k tokens: ~20 ms on a CPU core, against ~1 ms for the top 1024)."""
    budget = 1.0 - top_p
    vocab = probs.shape[-1]
    for k in NUCLEUS_CANDIDATES:
        if k >= vocab:
            break
        top, order = probs.topk(k, dim=-1)  # descending
        total = probs.sum(dim=-1, keepdim=True)
        tail_mass = total - top.cumsum(dim=-1) + top  # the token's own mass and every less likely token's
        # the first token outside the candidates (and so every later one) is removed: the nucleus is inside
        if bool((tail_mass[..., -1] - top[..., -1] <= budget).all()):
            keep_top = tail_mass > budget
            keep_top[..., 0] = True
            return torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, keep_top)
    sorted_probs, order = probs.sort(dim=-1)  # ascending
    remove_sorted = sorted_probs.cumsum(dim=-1) <= budget
    remove_sorted[..., -1] = False
    return ~torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)


def sample(probs: torch.Tensor, generator: torch.Generator) -> int:
    """One draw from a 1-D probability vector with an explicit generator."""
    return int(torch.multinomial(probs, 1, generator=generator).item())
