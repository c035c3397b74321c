"""Greedy speculative decoding equals transformers' greedy generate, token for token."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.testing.tiny import TINY_SHAPES, tiny_drafter, tiny_target

from .conftest import hf_greedy

draft_settings = st.builds(
    DecodeSettings,
    max_new_tokens=st.integers(1, 24),
    draft_tree=st.sampled_from(["chain", "tree"]),
    draft_depth=st.integers(1, 5),
    draft_topk=st.integers(1, 4),
    draft_tokens=st.integers(1, 16),
    use_draft=st.booleans(),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(sorted(TINY_SHAPES)),
    seed=st.integers(0, 10_000),
    draft_vocab=st.integers(8, 96),
    with_embeddings=st.booleans(),
    prompt=st.lists(st.integers(0, 95), min_size=1, max_size=12),
    decode=draft_settings,
)
def test_random_pairs_match_hf_greedy(family, seed, draft_vocab, with_embeddings, prompt, decode):
    # float64 keeps batched tree verification and sequential decoding away from argmax near-ties.
    model = tiny_target(TINY_SHAPES[family], seed=seed, dtype=torch.float64, layer_scale=0.3)
    drafter = tiny_drafter(model, draft_vocab=draft_vocab, seed=seed + 1, with_embeddings=with_embeddings)
    generator = SpeculativeGenerator.from_models(model, drafter)
    result = generator.generate(prompt, decode)
    assert result.token_ids == hf_greedy(model, prompt, decode.max_new_tokens)
    assert len(result.token_ids) == decode.max_new_tokens


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    prompt=st.lists(st.integers(0, 95), min_size=1, max_size=10),
    decode=draft_settings.filter(lambda s: s.use_draft),
)
def test_trained_pair_matches_hf_greedy(trained_pair, prompt, decode):
    """With a drafter that is often right, the accept/rollback paths run on most steps."""
    model, drafter = trained_pair
    generator = SpeculativeGenerator.from_models(model, drafter)
    result = generator.generate(prompt, decode)
    assert result.token_ids == hf_greedy(model, prompt, decode.max_new_tokens)


def test_trained_pair_accepts_drafts(trained_pair):
    model, drafter = trained_pair
    generator = SpeculativeGenerator.from_models(model, drafter)
    prompt = [3, 14, 15, 92]
    result = generator.generate(prompt, DecodeSettings(max_new_tokens=64, draft_tree="tree", draft_depth=4))
    assert result.token_ids == hf_greedy(model, prompt, 64)
    assert result.stats.mean_accepted_length > 1.6, result.stats
    assert max(result.stats.accepted_lengths) >= 2
    emitted, accepted = result.stats.step_tokens, result.stats.accepted_lengths
    assert sum(emitted) + 1 == 64 and emitted[:-1] == [a + 1 for a in accepted[:-1]]  # only the last step is cut
    assert 1 <= emitted[-1] <= accepted[-1] + 1


def test_eos_stops_like_hf(trained_pair):
    model, drafter = trained_pair
    prompt = [3, 14, 15, 92]
    reference = hf_greedy(model, prompt, 40)
    eos = reference[17]
    model.generation_config.eos_token_id = eos
    try:
        generator = SpeculativeGenerator.from_models(model, drafter)
        result = generator.generate(prompt, DecodeSettings(max_new_tokens=40, draft_depth=4))
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)[0, len(prompt) :]
        assert result.token_ids == expected.tolist()
        assert result.token_ids[-1] == eos
    finally:
        model.generation_config.eos_token_id = None
