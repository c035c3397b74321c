"""The target's sampling distribution: temperature, then nucleus (top-p) filtering.

Speculative sampling is exact with respect to *this* distribution, so it is defined once here
and used by verification, by the plain decoding path and by the tests.
"""

from __future__ import annotations

import math

import torch


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities over the last axis of ``logits`` after temperature and top-p.

    Top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (always at least
    one token), with the same convention as ``transformers``' TopPLogitsWarper: a token is removed
    when the mass of it and every less likely token is at most ``1 - top_p``.
    """
    if temperature <= 0:
        raise ValueError("sampling_probs needs temperature > 0; greedy decoding uses argmax")
    scaled = logits.double() / temperature
    probs = torch.softmax(scaled, dim=-1)
    if top_p < 1.0:
        probs.mul_(_nucleus(scaled, probs, top_p))
        probs.div_(probs.sum(dim=-1, keepdim=True))
    return probs


NUCLEUS_BINS = 4096  # histogram bins per refinement level
NUCLEUS_SORT_LIMIT = 4096  # a window this small is sorted outright


def _nucleus(scaled: torch.Tensor, probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Which tokens top-p keeps, without sorting the vocabulary.

    In ascending order of probability a token is removed while the running mass (it and every less likely
    token) is at most ``1 - top_p``. That running mass is monotone, so the boundary is found like a radix
    select: bin the tokens by scaled logit (monotone in probability), add each bin's mass, and keep only the
    one bin where the running mass crosses the budget; refine it the same way until it is small enough to
    sort. Bins below it are removed whole, bins above kept whole. A near-uniform 151k-token row costs a few
    passes instead of a full sort (~20 ms on a CPU core), whatever the width of its nucleus.
    """
    if probs.dim() == 1:
        return _row_nucleus(scaled, probs, 1.0 - top_p)
    flat_scaled = scaled.reshape(-1, scaled.shape[-1])
    flat_probs = probs.reshape(-1, probs.shape[-1])
    keep = torch.stack([_row_nucleus(s, p, 1.0 - top_p) for s, p in zip(flat_scaled, flat_probs)])
    return keep.reshape(probs.shape)


def _row_nucleus(scaled: torch.Tensor, probs: torch.Tensor, budget: float) -> torch.Tensor:
    removed = torch.zeros_like(probs, dtype=torch.bool)
    window: torch.Tensor | None = None  # token ids whose fate is still open; None = every token
    below = 0.0  # mass of every token under the window (all removed)
    while window is None or window.numel() > NUCLEUS_SORT_LIMIT:
        keys = scaled if window is None else scaled[window]
        low, high = float(keys.min()), float(keys.max())
        if low == -math.inf:  # masked tokens have no mass; bin the rest (the masked ones fall in bin 0)
            low = float(keys.masked_fill(keys == -math.inf, math.inf).min())
        scale = NUCLEUS_BINS / (high - low) if high > low else math.inf
        if not math.isfinite(scale):  # (nearly) one value: only a sort of the ties decides
            break
        bins = torch.sub(keys, low).mul_(scale).clamp_(0, NUCLEUS_BINS - 1).int()
        mass = probs if window is None else probs[window]
        running = below + torch.bincount(bins, weights=mass, minlength=NUCLEUS_BINS).cumsum(0)
        crossing = int(torch.searchsorted(running, torch.tensor([budget], dtype=running.dtype), right=True))
        if crossing >= NUCLEUS_BINS:  # rounding: the whole window fits the budget; decide it by sorting
            break
        inside = bins == crossing
        if window is None:
            removed = bins < crossing
            window = inside.nonzero().squeeze(1)
        else:
            removed[window[bins < crossing]] = True
            if bool(inside.all()):
                break
            window = window[inside]
        below = float(running[crossing - 1]) if crossing > 0 else below
    if window is None:
        window = torch.arange(probs.numel(), device=probs.device)
    order = window[scaled[window].argsort()]  # by logit, as transformers orders tokens of equal probability
    running = below + probs[order].cumsum(0)
    removed[order[running <= budget]] = True
    if (running.numel() == 0 or float(running[-1]) <= budget) and bool(removed.all()):  # one token stays at least
        removed[scaled.argmax()] = False
    return ~removed


def sample(weights: torch.Tensor, generator: torch.Generator) -> int:
    """One draw from a 1-D vector of non-negative weights (need not sum to one) with an explicit generator.

    By the inverse of the cumulative weights: one cumsum and a binary search (~0.2 ms for 151k float64
    weights, where ``torch.multinomial`` takes ~4 ms). A zero weight is never drawn: its cumulative value
    equals the previous one, and the search returns the first index whose cumulative value exceeds u.
    """
    cumulative = weights.double().cumsum(0)
    u = torch.rand(1, generator=generator, dtype=torch.float64) * cumulative[-1]
    index = int(torch.searchsorted(cumulative, u, right=True))
    if index >= weights.numel():  # u rounded up to the total: the last token with weight
        index = int((weights > 0).nonzero()[-1])
    return index
