"""The top-p nucleus found by binned refinement (no full sort) keeps exactly the tokens
``transformers``' TopPLogitsWarper keeps on the same logits in float64 (the exact nucleus), for
float64 logits and for float32 ones (whose probabilities are the float32 softmax, the dtype
transformers samples in), whatever the number of refinement levels."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import TopPLogitsWarper

from evospec.runtime import sampling
from evospec.runtime.sampling import sampling_probs, sampling_weights

# (first-level mantissa bits, bits per refinement level, sort limit): the default, then coarse bins and
# small windows, so that rows of a few tokens take several refinement levels, down to single bit patterns
LEVELS = [(7, 8, 4096), (-3, 1, 2), (0, 2, 1)]


def reference_keep(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """TopPLogitsWarper on the logits, in float64: run in float32 its boundary moves by a token on some
    151k-token rows, because a float32 softmax gets its normaliser only to ~1e-5 there."""
    return TopPLogitsWarper(top_p)(None, logits.double().clone()[None])[0] > -math.inf


@pytest.fixture(params=LEVELS, ids=["default", "coarse", "octaves"])
def levels(request, monkeypatch):
    mantissa, level, limit = request.param
    monkeypatch.setattr(sampling, "NUCLEUS_MANTISSA_BITS", mantissa)
    monkeypatch.setattr(sampling, "NUCLEUS_LEVEL_BITS", level)
    monkeypatch.setattr(sampling, "NUCLEUS_SORT_LIMIT", limit)


def with_levels(mantissa: int, level: int, limit: int, fn):
    saved = sampling.NUCLEUS_MANTISSA_BITS, sampling.NUCLEUS_LEVEL_BITS, sampling.NUCLEUS_SORT_LIMIT
    sampling.NUCLEUS_MANTISSA_BITS, sampling.NUCLEUS_LEVEL_BITS, sampling.NUCLEUS_SORT_LIMIT = mantissa, level, limit
    try:
        return fn()
    finally:
        sampling.NUCLEUS_MANTISSA_BITS, sampling.NUCLEUS_LEVEL_BITS, sampling.NUCLEUS_SORT_LIMIT = saved


@settings(max_examples=300, deadline=None)
@given(logits=st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=200, unique=True),
       top_p=st.floats(0.01, 0.99), temperature=st.sampled_from([0.5, 1.0, 2.0]),
       dtype=st.sampled_from([torch.float64, torch.float32]))
def test_binned_nucleus_keeps_what_transformers_keeps(logits, top_p, temperature, dtype):
    row = torch.tensor(logits, dtype=dtype)
    assume(row.unique().numel() == row.numel())  # ties are the next test's: which tied token stays is a sort's choice
    reference = reference_keep(row / temperature, top_p)
    for levels in LEVELS:
        ours = with_levels(*levels, lambda: sampling_probs(row, temperature, top_p))
        assert ours.dtype == dtype
        assert torch.equal(ours > 0, reference), levels
        assert ours.double().sum().item() == pytest.approx(1.0, abs=1e-12 if dtype == torch.float64 else 1e-6)
        weights, total = with_levels(*levels, lambda: sampling_weights(row, temperature, top_p))
        assert total == pytest.approx(weights.double().sum().item(), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_masked_tokens_are_removed_and_the_rest_refined(levels, dtype):
    g = torch.Generator().manual_seed(1)
    row = (torch.randn(300, generator=g, dtype=torch.float64) * 2).to(dtype)
    row[::3] = -math.inf
    for top_p in (0.3, 0.9, 0.999):
        ours = sampling_probs(row, 1.0, top_p)
        assert torch.equal(ours > 0, reference_keep(row, top_p)) and not bool((ours[::3] > 0).any())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_ties_keep_as_many_tokens_as_transformers(levels, dtype):
    """Equal logits across the boundary: which of the tied tokens stay is a tie-break of the sort; how many
    stay, and every token strictly above or below, is the law's."""
    row = torch.tensor([0.0] * 40 + [1.0] * 10 + [2.0] * 5, dtype=dtype)
    for top_p in (0.2, 0.5, 0.8, 0.95):
        ours, reference = sampling_probs(row, 1.0, top_p) > 0, reference_keep(row, top_p)
        assert int(ours.sum()) == int(reference.sum())
        for value in (0.0, 1.0, 2.0):
            same = row == value
            assert int(ours[same].sum()) == int(reference[same].sum()), (top_p, value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_single_value_row_keeps_one_token_at_least(dtype):
    row = torch.zeros(10_000, dtype=dtype)
    assert int((sampling_probs(row, 1.0, 0.00001) > 0).sum()) == 1
    assert int((sampling_probs(row, 1.0, 0.5) > 0).sum()) == int(reference_keep(row, 0.5).sum())


@pytest.mark.parametrize("scale", [0.5, 3.0, 8.0], ids=["flat", "medium", "peaked"])
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_float32_vocabulary_rows_keep_what_transformers_keeps(scale, top_p):
    """151k float32 logits (a target's row), strided like a skinny head's output: the kept set is the exact
    nucleus of those logits, and the weights are the float32 softmax itself on the kept tokens."""
    g = torch.Generator().manual_seed(int(scale * 10 + top_p * 100))
    rows = (torch.randn(3, 151_851, generator=g) * scale).T.contiguous().T  # [3, V], column-major
    for row in rows:
        weights, total = sampling_weights(row, 1.0, top_p)
        keep = reference_keep(row.contiguous(), top_p)
        assert torch.equal(weights > 0, keep)
        assert torch.equal(weights[keep], torch.softmax(row, dim=-1)[keep])
        assert total == pytest.approx(weights.double().sum().item(), rel=1e-12)
