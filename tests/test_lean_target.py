"""The lean Llama-family forward: the transformers forward's values, taps and cache semantics, fewer calls."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.runtime.lean_target import LeanCache, LeanDecoder, lean_support
from evospec.runtime.target import TargetModel, keep_cache_slots
from evospec.testing.tiny import TINY_SHAPES, tiny_target

from .conftest import hf_greedy


def _pass(target: TargetModel):
    """Prefill, a two-branch tree pass, rollback to one branch, one more token: every output."""
    cache = target.new_cache()
    outs = [target.forward(torch.tensor([[5, 6, 7, 8, 9]]), torch.arange(5)[None], cache)]
    tree_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    outs.append(target.forward(torch.tensor([[10, 11, 12, 13]]), torch.tensor([[5, 6, 7, 6]]), cache, tree_mask))
    keep_cache_slots(cache, torch.tensor([0, 1, 2, 3, 4, 5, 8]))  # not a prefix: slots are gathered
    outs.append(target.forward(torch.tensor([[14]]), torch.tensor([[7]]), cache))
    keep_cache_slots(cache, torch.arange(6))  # a prefix: only the length moves
    outs.append(target.forward(torch.tensor([[15, 16]]), torch.tensor([[6, 7]]), cache))
    return outs


@pytest.mark.parametrize("family", sorted(TINY_SHAPES))
def test_lean_forward_equals_the_transformers_forward(family):
    """Logits and tapped states of a prefill, a tree pass, a gathered and a cropped rollback, per family
    (Qwen2's biases, Qwen3's head norms, Mistral, grouped-query heads), in float64."""
    model = tiny_target(TINY_SHAPES[family], seed=3, dtype=torch.float64)
    taps = (1, 2, 4)  # 4 = L: the final normed output
    lean, hf = TargetModel(model, taps), TargetModel(model, taps, lean=False)
    assert lean.lean is not None and hf.lean is None
    for a, b in zip(_pass(lean), _pass(hf), strict=True):
        torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-10)
        torch.testing.assert_close(a.features, b.features, rtol=0, atol=1e-10)


@pytest.mark.parametrize("family", sorted(TINY_SHAPES))
def test_lean_greedy_decoding_is_the_models_own(family):
    from evospec import DecodeSettings, SpeculativeGenerator

    model = tiny_target(TINY_SHAPES[family], seed=4)
    prompt = [3, 1, 4, 1, 5]
    reference = hf_greedy(model, prompt, 64)
    result = SpeculativeGenerator.from_models(model).generate(prompt, DecodeSettings(max_new_tokens=64))
    assert result.token_ids == reference


def test_fusion_shares_the_weights_and_follows_replaced_ones():
    """q/k/v and gate/up become views of one tensor each (no second copy); after ``model.to(float64)``
    the decoder fuses the new weights instead of running stale ones."""
    model = tiny_target(TINY_SHAPES["qwen2"], seed=5)
    before = sum(p.numel() for p in model.parameters())
    decoder = LeanDecoder(model)
    attn = model.model.layers[0].self_attn
    assert attn.k_proj.weight.data_ptr() == decoder.layers[0].qkv[attn.q_proj.weight.shape[0]:].data_ptr()
    assert sum(p.numel() for p in model.parameters()) == before
    model.to(torch.float64)
    ids = torch.tensor([[1, 2, 3]])
    causal = torch.ones(3, 3, dtype=torch.bool).tril()
    logits, _ = decoder.forward(ids, torch.arange(3)[None], decoder.new_cache(), causal)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, model(input_ids=ids).logits[0], rtol=0, atol=1e-10)


def test_cache_grows_and_keeps_its_slots():
    model = tiny_target(TINY_SHAPES["llama"], seed=6, dtype=torch.float64)
    target = TargetModel(model, ())
    small = target.lean.new_cache(capacity=4)
    ids = torch.arange(1, 12)[None]
    for i in range(ids.shape[1]):  # one token at a time: grows 4 -> 8 -> 16
        last = target.forward(ids[:, i:i + 1], torch.tensor([[i]]), small).logits
    assert isinstance(small, LeanCache) and small.capacity >= 11 and small.get_seq_length() == 11
    whole = target.forward(ids, torch.arange(11)[None], target.new_cache()).logits
    torch.testing.assert_close(last[0], whole[-1], rtol=0, atol=1e-10)


@pytest.mark.parametrize("case", ["gpt2", "llama-mlp-bias"])
def test_uncovered_models_keep_the_transformers_forward(case):
    from transformers import AutoConfig, AutoModelForCausalLM

    if case == "gpt2":
        config = AutoConfig.for_model("gpt2", vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    else:
        config = AutoConfig.for_model("llama", vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, mlp_bias=True)
    model = AutoModelForCausalLM.from_config(config).eval()
    assert lean_support(model) is not None
    target = TargetModel(model, ())
    assert target.lean is None
    assert target.forward(torch.tensor([[1, 2]]), torch.arange(2)[None], target.new_cache()).logits.shape == (2, 64)


@settings(max_examples=60, deadline=None)
@given(length=st.integers(1, 24), data=st.data())
def test_keeping_slots_moves_only_those_after_the_first_gap(length, data):
    """``LeanCache.keep`` copies from the first kept slot that moves, not the whole cache; what it keeps is the
    old slots in order (a gather), whatever the subset."""
    keep = sorted(data.draw(st.sets(st.integers(0, length - 1), min_size=1, max_size=length)))
    cache = LeanCache(keys=torch.randn(2, 2, 32, 4), values=torch.randn(2, 2, 32, 4), length=length)
    old_keys, old_values = cache.keys.clone(), cache.values.clone()
    index = torch.tensor(keep)
    cache.keep(index)
    n = len(keep)
    assert cache.length == n
    assert torch.equal(cache.keys[:, :, :n], old_keys.index_select(2, index))
    assert torch.equal(cache.values[:, :, :n], old_values.index_select(2, index))
    assert torch.equal(cache.keys[:, :, n:], old_keys[:, :, n:])  # slots past the kept ones are not written
