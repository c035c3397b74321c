"""The top-p nucleus found by binned refinement (no full sort) keeps exactly the tokens
``transformers``' TopPLogitsWarper keeps, whatever the number of refinement levels."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import TopPLogitsWarper

from evospec.runtime import sampling
from evospec.runtime.sampling import sampling_probs


def reference_keep(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    return TopPLogitsWarper(top_p)(None, logits.double().clone()[None])[0] > -math.inf


@pytest.fixture
def tiny_bins(monkeypatch):
    """Few bins and a small sort limit, so small rows take several refinement levels."""
    monkeypatch.setattr(sampling, "NUCLEUS_BINS", 4)
    monkeypatch.setattr(sampling, "NUCLEUS_SORT_LIMIT", 2)


@settings(max_examples=300, deadline=None)
@given(logits=st.lists(st.floats(-30, 30, allow_nan=False), min_size=1, max_size=200, unique=True),
       top_p=st.floats(0.01, 0.99), temperature=st.sampled_from([0.5, 1.0, 2.0]))
def test_binned_nucleus_keeps_what_transformers_keeps(logits, top_p, temperature):
    row = torch.tensor(logits, dtype=torch.float64)
    for bins, limit in ((4, 2), (4096, 4096), (2, 1)):
        sampling.NUCLEUS_BINS, sampling.NUCLEUS_SORT_LIMIT = bins, limit
        try:
            ours = sampling_probs(row, temperature, top_p)
        finally:
            sampling.NUCLEUS_BINS, sampling.NUCLEUS_SORT_LIMIT = 4096, 4096
        assert torch.equal(ours > 0, reference_keep(row / temperature, top_p)), (bins, limit)
        assert ours.sum().item() == pytest.approx(1.0, abs=1e-12)


def test_masked_tokens_are_removed_and_the_rest_refined(tiny_bins):
    g = torch.Generator().manual_seed(1)
    row = torch.randn(300, generator=g, dtype=torch.float64) * 2
    row[::3] = -math.inf
    for top_p in (0.3, 0.9, 0.999):
        ours = sampling_probs(row, 1.0, top_p)
        assert torch.equal(ours > 0, reference_keep(row, top_p)) and not bool((ours[::3] > 0).any())


def test_ties_keep_as_many_tokens_as_transformers(tiny_bins):
    """Equal logits across the boundary: which of the tied tokens stay is a tie-break of the sort; how many
    stay, and every token strictly above or below, is the law's."""
    row = torch.tensor([0.0] * 40 + [1.0] * 10 + [2.0] * 5, dtype=torch.float64)
    for top_p in (0.2, 0.5, 0.8, 0.95):
        ours, reference = sampling_probs(row, 1.0, top_p) > 0, reference_keep(row, top_p)
        assert int(ours.sum()) == int(reference.sum())
        for value in (0.0, 1.0, 2.0):
            same = row == value
            assert int(ours[same].sum()) == int(reference[same].sum()), (top_p, value)


def test_a_single_value_row_keeps_one_token_at_least():
    row = torch.zeros(10_000, dtype=torch.float64)
    assert int((sampling_probs(row, 1.0, 0.00001) > 0).sum()) == 1
    assert int((sampling_probs(row, 1.0, 0.5) > 0).sum()) == int(reference_keep(row, 0.5).sum())
