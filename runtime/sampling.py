"""The target's sampling distribution: temperature, then nucleus (top-p) filtering.

Speculative sampling is exact with respect to *this* distribution, so it is defined once here
and used by verification, by the plain decoding path and by the tests. The probabilities are the
softmax in the precision ``transformers`` samples in: float32 (its ``generate`` upcasts logits to
float32), or float64 for float64 logits. The nucleus is the exact one of the logits (what
TopPLogitsWarper keeps in float64): its boundary is decided on float64 sums, relative to the sum
of the float32 probabilities, whose normaliser a float32 softmax over 151k tokens gets only to
~1e-5 (TopPLogitsWarper run in float32 moves the boundary by a token on some rows for that reason).

The per-row passes are numpy's (one thread) around torch's one-row softmax (also one thread): torch
splits a 151k-element elementwise op or reduction over its threads, and on a busy two-core host a
thread the scheduler has put off makes that one op wait (12 ms a pass, measured, against 0.1 ms).
"""

from __future__ import annotations

import threading

import numpy as np
import torch


def sampling_probs(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> torch.Tensor:
    """Probabilities over the last axis of ``logits`` after temperature and top-p, on the host.

    Top-p keeps the smallest set of most likely tokens whose mass reaches ``top_p`` (always at least
    one token), with the same convention as ``transformers``' TopPLogitsWarper: a token is removed
    when the mass of it and every less likely token is at most ``1 - top_p``. float64 logits give
    float64 probabilities, any other dtype float32.
    """
    if logits.dim() == 1:
        weights, total = sampling_weights(logits, temperature, top_p)
        np.divide(weights.numpy(), total, out=weights.numpy())
        return weights
    if top_p >= 1.0:  # a softmax is row by row already
        probs = sampling_weights(logits, temperature, top_p)[0]
        return probs.div_(probs.sum(dim=-1, keepdim=True, dtype=torch.float64).to(probs.dtype))
    rows = logits.reshape(-1, logits.shape[-1])
    return torch.stack([sampling_probs(row, temperature, top_p) for row in rows]).reshape(logits.shape)


def sampling_weights(logits: torch.Tensor, temperature: float, top_p: float = 1.0) -> tuple[torch.Tensor, float]:
    """The target's law over one row of logits up to a factor: ``(weights, total)``, with
    ``weights / total == sampling_probs(logits)``. Verification only ever needs the law up to its
    total, so the pass that would normalise a 151k-token row is left out.

    Args:
        logits: [V] one row (any stride, any device: it is read on the host), or [..., V] when ``top_p`` is 1.
        temperature: > 0; greedy decoding uses argmax instead.
        top_p: nucleus mass in (0, 1]; 1 keeps every token.

    Returns:
        A fresh host tensor of weights (float32, or float64 for float64 logits) and their sum in float64
        (over every row, for several rows).
    """
    scaled, probs = softmax_weights(logits, temperature)
    if top_p >= 1.0:
        return probs, float(probs.numpy().sum(dtype=np.float64))
    if scaled.dim() != 1:
        raise ValueError(f"top-p weights are computed one row at a time, got logits of shape {tuple(scaled.shape)}")
    return nucleus(scaled, probs, 1.0 - top_p)


def softmax_weights(logits: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The first half of ``sampling_weights``: ``(scaled logits, softmax)``, fresh host tensors, before any
    top-p filtering; ``nucleus`` finishes the law from them (verification decides most acceptances first)."""
    if temperature <= 0:
        raise ValueError("sampling_probs needs temperature > 0; greedy decoding uses argmax")
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    rows = logits.detach().to("cpu", dtype).numpy()  # a view where it can be (a skinny head's rows are strided)
    # as TemperatureLogitsWarper: in the logits' dtype (numpy's float32 division rounds as torch's does)
    scaled = torch.from_numpy(np.ascontiguousarray(rows / temperature if temperature != 1.0 else rows))
    return scaled, torch.softmax(scaled, dim=-1)


NUCLEUS_MANTISSA_BITS = 7  # first level: one bin per 2**-7 of an octave of probability (16k bins in float32)
NUCLEUS_LEVEL_BITS = 8  # each refinement level splits the crossing bin in 2**8
NUCLEUS_SORT_LIMIT = 4096  # a window this small is sorted outright

# probabilities' dtype -> (same-width integer, float, mantissa bits, bits of 1.0)
_FORMATS = {torch.float32: (np.int32, np.float32, 23, 0x3F800000),
            torch.float64: (np.int64, np.float64, 52, 0x3FF0000000000000)}


class _Scratch(threading.local):
    """Row-sized work buffers, reused from row to row (per thread): a fresh 151k-row int64 or float64
    temporary costs more than the pass that fills it once caches are cold (a target forward just ran)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[str, torch.dtype], torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype) -> torch.Tensor:
        buffer = self.buffers.get((name, dtype))
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[(name, dtype)] = torch.empty(numel, dtype=dtype)
        return buffer[:numel]


row_scratch = _Scratch()


def nucleus(scaled: torch.Tensor, probs: torch.Tensor, budget: float) -> tuple[torch.Tensor, float]:
    """Zero the tokens top-p removes from ``probs`` (in place), without sorting the vocabulary;
    returns ``(probs, kept mass)``.

    In ascending order of probability a token is removed while the running mass (it and every less
    likely token) is at most ``budget`` of the whole. That running mass is monotone, so the boundary is
    found like a radix select on the probabilities' bit patterns (ordered like the values, for
    non-negative floats): bin the tokens by their top bits, add each bin's mass in float64, and keep only
    the one bin where the running mass crosses the budget; split it by the next bits until it is small
    enough to sort by logit (as transformers orders tokens). Bins below it are removed whole, bins above
    kept whole by one threshold pass. A 151k-token row costs a softmax, one histogram and a few small
    passes, whatever the width of its nucleus.
    """
    np_int, np_float, mantissa, one = _FORMATS[probs.dtype]
    n, p = probs.numel(), probs.numpy()
    bits = p.view(np_int)
    shift = mantissa - NUCLEUS_MANTISSA_BITS
    bins = row_scratch.get("bins", n, torch.int64)
    np.right_shift(bits, shift, out=bins.numpy())
    weights = row_scratch.get("weights", n, torch.float64)
    np.copyto(weights.numpy(), p)
    mass = torch.zeros((one >> shift) + 1, dtype=torch.float64).scatter_add_(0, bins, weights)  # a softmax is <= 1
    top = int(np.flatnonzero(mass.numpy())[-1])  # the most likely token's bin
    running = mass.cumsum_(0).numpy()
    total = float(running[-1])
    # float64 probabilities sum to 1 to rounding, as TopPLogitsWarper's cumsum assumes; float32 ones only to ~1e-5
    limit = budget if probs.dtype == torch.float64 else budget * total
    prefix = min(int(np.count_nonzero(running <= limit)), top)  # the crossing bin: running masses are monotone
    below = float(running[prefix - 1]) if prefix > 0 else 0.0  # mass under the window: all removed
    kept_above = prefix < top  # whether any token above the window is kept
    window = np.flatnonzero(bins.numpy() == prefix)
    while window.size > NUCLEUS_SORT_LIMIT and shift > 0:
        step = min(NUCLEUS_LEVEL_BITS, shift)
        keys = (bits[window].astype(np.int64) >> (shift - step)) - (prefix << step)  # [0, 2**step)
        running = below + np.cumsum(np.bincount(keys, weights=p[window].astype(np.float64), minlength=1 << step))
        highest = int(keys.max())
        crossing = min(int(np.count_nonzero(running <= limit)), highest)
        below = float(running[crossing - 1]) if crossing > 0 else below
        kept_above = kept_above or crossing < highest
        shift, prefix, window = shift - step, (prefix << step) + crossing, window[keys == crossing]
    order = window[np.argsort(scaled.numpy()[window], kind="stable")]
    running = below + np.cumsum(p[order].astype(np.float64))
    cut = int(np.count_nonzero(running <= limit))  # the window's first ``cut`` tokens are removed
    above = ((prefix + 1) << shift) - 1  # tokens with larger bits are kept
    if cut == order.size and not kept_above:  # nothing kept: the most likely token stays
        cut -= 1
    kept = order[cut:]
    values = p[kept].copy()
    np.multiply(p, p > np.array(above, dtype=np_int).view(np_float), out=p)  # keeps the tokens with larger bits
    p[kept] = values
    return probs, total - (float(running[cut - 1]) if cut > 0 else below)


SAMPLE_BLOCK = 1024  # weights per block of the two-level draw


def sample(weights: torch.Tensor, generator: torch.Generator) -> int:
    """One draw from a 1-D vector of non-negative weights (need not sum to one) with an explicit generator.

    By the inverse of the cumulative weights, in float64, in two levels: find the block of
    ``SAMPLE_BLOCK`` weights where the cumulative block sums exceed u, then the weight inside it
    (~0.1 ms for 151k weights: one reduction instead of a 151k cumsum; ``torch.multinomial`` takes
    ~4 ms). A zero weight is never drawn: its cumulative value equals the previous one, and each
    search returns the first index whose cumulative value exceeds u.
    """
    return BlockSampler(weights.detach().cpu().reshape(-1).numpy()).draw(generator)


class BlockSampler:
    """``sample``'s two-level draw over fixed weights, with the block sums kept: draws after the first cost
    one block's cumulative sum (verification proposes several tokens from one row's softmax)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.weights = weights
        block = SAMPLE_BLOCK
        whole = weights.size // block * block
        sums = weights[:whole].reshape(-1, block).sum(axis=1, dtype=np.float64)
        if whole < weights.size:
            sums = np.append(sums, weights[whole:].sum(dtype=np.float64))
        self.sums, self.cumulative = sums, np.cumsum(sums)

    def draw(self, generator: torch.Generator) -> int:
        u = float(torch.rand(1, generator=generator, dtype=torch.float64)) * float(self.cumulative[-1])
        chosen = _first_above(self.cumulative, u, self.sums)
        start = chosen * SAMPLE_BLOCK
        inside = self.weights[start : start + SAMPLE_BLOCK]
        below = self.cumulative[chosen - 1] if chosen else 0.0
        return start + _first_above(np.cumsum(inside, dtype=np.float64), u - below, inside)


def _first_above(cumulative: np.ndarray, u: float, weights: np.ndarray) -> int:
    """The first index whose cumulative weight exceeds ``u``; where rounding put ``u`` at or above the
    total, the last index with weight."""
    index = int(np.searchsorted(cumulative, u, side="right"))
    if index >= cumulative.size:
        index = int(np.flatnonzero(weights > 0)[-1])
    return index
