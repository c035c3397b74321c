"""The target wrapper: tapped states are EAGLE-3's layer inputs; tree passes and cache rollback."""

from __future__ import annotations

import pytest
import torch

from evospec.runtime.drafter import default_tap_layers
from evospec.runtime.target import TargetModel, keep_cache_slots
from evospec.testing.tiny import TINY_SHAPES, TinyShape, tiny_target


def test_tapped_features_are_inputs_of_the_tapped_layers():
    """EAGLE-3 taps the input of decoder layers (2, L//2, L-3): HF hidden_states[i] (transformers forward)."""
    model = tiny_target(TinyShape(layers=7), seed=0)
    taps = default_tap_layers(7)
    assert taps == (2, 3, 4)
    seen = {}
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: seen.__setitem__(i, (args[0] if args else kwargs["hidden_states"])),
            with_kwargs=True,
        )
    target = TargetModel(model, taps, lean=False)
    out = target.forward(torch.tensor([[1, 2, 3]]), torch.arange(3)[None], target.new_cache())
    assert torch.equal(out.features, torch.cat([seen[i][0] for i in taps], dim=-1))


def test_tree_pass_then_rollback_equals_sequential_pass():
    """Verify a 2-branch tree, keep one branch: cache and logits match plain causal decoding."""
    model = tiny_target(TINY_SHAPES["qwen3"], seed=1, dtype=torch.float64)
    target = TargetModel(model, ())
    prefix = [5, 6, 7]
    cache = target.new_cache()
    target.forward(torch.tensor([prefix]), torch.arange(3)[None], cache)
    # root 8, branch A = (9, 10), branch B = (11,)
    tree_mask = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]], dtype=torch.bool)
    tree_out = target.forward(torch.tensor([[8, 9, 10, 11]]), torch.tensor([[3, 4, 5, 4]]), cache, tree_mask)
    keep_cache_slots(cache, torch.tensor([0, 1, 2, 3, 6]))  # prefix, root, node 11
    after = target.forward(torch.tensor([[12]]), torch.tensor([[5]]), cache)

    ref_cache = target.new_cache()
    ref = target.forward(torch.tensor([prefix + [8, 11, 12]]), torch.arange(6)[None], ref_cache)
    assert torch.allclose(tree_out.logits[3], ref.logits[4], atol=1e-10)
    assert torch.allclose(after.logits[0], ref.logits[5], atol=1e-10)
    seq = [8, 9, 10]
    ref_a = target.forward(torch.tensor([prefix + seq]), torch.arange(6)[None], target.new_cache())
    assert torch.allclose(tree_out.logits[:3], ref_a.logits[3:], atol=1e-10)


def test_sliding_window_target_is_exact_beyond_the_window():
    """Mistral-style sliding attention: the window lives in the tree mask, the cache stays full."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from evospec import DecodeSettings, SpeculativeGenerator
    from evospec.testing.tiny import tiny_drafter

    from .conftest import hf_greedy

    def build(window):
        torch.manual_seed(0)
        cfg = AutoConfig.for_model(
            "mistral", vocab_size=96, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, intermediate_size=64, sliding_window=window,
            initializer_range=0.5, max_position_embeddings=512,
        )
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="sdpa").eval()

    model, prompt = build(8), [1, 2, 3]
    reference = hf_greedy(model, prompt, 48)
    assert reference != hf_greedy(build(None), prompt, 48), "the window must matter for this test to mean anything"
    generator = SpeculativeGenerator.from_models(model, tiny_drafter(model, draft_vocab=64, seed=2))
    for tree in ("chain", "tree"):
        result = generator.generate(prompt, DecodeSettings(max_new_tokens=48, draft_tree=tree, draft_depth=3, draft_topk=2))
        assert result.token_ids == reference


def test_mixed_attention_kinds_are_refused():
    from transformers import AutoConfig

    from evospec import CompatibilityError
    from evospec.runtime.target import attention_window

    cfg = AutoConfig.for_model("qwen2", sliding_window=16, use_sliding_window=True, max_window_layers=1, num_hidden_layers=2)
    kinds = set(getattr(cfg, "layer_types", None) or [])
    if kinds != {"full_attention", "sliding_attention"}:
        pytest.skip(f"this transformers version does not describe per-layer attention kinds ({kinds})")
    with pytest.raises(CompatibilityError, match="mixes attention kinds"):
        attention_window(cfg)


@pytest.mark.parametrize("taps", [(1, 2, 3), (0, 2, 4), (2, 3, 3)], ids=["inner", "final-output", "repeated"])
def test_tapped_features_equal_hf_hidden_states(taps):
    """Taps are captured by hooks on the tapped layers only; they equal transformers' hidden_states[i]
    (a tap at the last index, the final normed output, is read from hidden_states itself)."""
    model = tiny_target(TINY_SHAPES["llama"], seed=1)
    target = TargetModel(model, taps)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    out = target.forward(ids, torch.arange(5)[None], target.new_cache())
    states = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(out.features, torch.cat([states[i][0] for i in taps], dim=-1), rtol=0, atol=1e-6)


def test_skinny_head_computes_the_linear_head_with_the_weight_shared():
    from torch import nn

    from evospec.runtime.skinny_head import SkinnyHead, use_skinny_head

    class LM(nn.Module):
        def __init__(self, bias: bool) -> None:
            super().__init__()
            self.lm_head = nn.Linear(16, 1000, bias=bias)

    model = LM(bias=False)
    linear = model.lm_head
    assert use_skinny_head(model) and isinstance(model.lm_head, SkinnyHead)
    assert model.lm_head.weight is linear.weight  # tied embeddings stay tied
    for rows in (1, 6, 16):
        hidden = torch.randn(1, rows, 16)
        torch.testing.assert_close(model.lm_head(hidden), linear(hidden), rtol=1e-5, atol=1e-5)
    one = torch.randn(1, 1, 16)
    assert torch.equal(model.lm_head(one), linear(one))  # a single row takes the same kernel
    assert not use_skinny_head(LM(bias=True))  # a biased head is left alone


@pytest.mark.parametrize("kernel", ["linear", "skinny", "onednn"])
def test_every_head_kernel_computes_the_linear_head(kernel):
    from torch import nn

    from evospec.runtime.skinny_head import SkinnyHead, onednn_available

    linear = nn.Linear(32, 3000, bias=False)
    if kernel == "onednn" and not onednn_available(linear.weight):
        pytest.skip("this torch has no oneDNN linear ops")
    head = SkinnyHead(linear, one=kernel, many=kernel)
    for rows in (1, 6, 33):
        hidden = torch.randn(1, rows, 32)
        torch.testing.assert_close(head(hidden), linear(hidden), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        linear.weight.mul_(-1)  # changed in place: a packed copy must follow
    hidden = torch.randn(1, 6, 32)
    torch.testing.assert_close(head(hidden), linear(hidden), rtol=1e-5, atol=1e-5)
    linear.weight = nn.Parameter(torch.randn(3000, 32))  # replaced: so must it
    torch.testing.assert_close(head(hidden), linear(hidden), rtol=1e-5, atol=1e-5)


def test_head_kernels_are_chosen_by_their_measured_time(monkeypatch):
    """The choice follows measured cost, and a kernel must beat the default by the margin to replace it."""
    from torch import nn

    from evospec.runtime import skinny_head
    from evospec.runtime.skinny_head import SkinnyHead, choose_kernels

    now = [0.0]  # a clock that each kernel call advances by that kernel's cost
    monkeypatch.setattr(skinny_head, "perf_counter", lambda: now[0])

    def timed(costs):
        def logits(self, rows, kernel):
            now[0] += costs[(rows.shape[0] > 1, kernel)]
        return logits

    monkeypatch.setattr(skinny_head, "onednn_available", lambda weight: True)
    head = SkinnyHead(nn.Linear(8, 100, bias=False))
    monkeypatch.setattr(SkinnyHead, "logits", timed({(False, "linear"): 0.012, (False, "onednn"): 0.002,
                                                     (True, "linear"): 0.030, (True, "skinny"): 0.012,
                                                     (True, "onednn"): 0.011}))
    measured = choose_kernels(head, repeats=2)
    assert (head.one, head.many) == ("onednn", "skinny")  # 11 ms is within the margin of skinny's 12
    assert measured["1"]["onednn"] < measured["1"]["linear"]
    monkeypatch.setattr(SkinnyHead, "logits", timed({(False, "linear"): 0.002, (False, "onednn"): 0.012,
                                                     (True, "linear"): 0.004, (True, "skinny"): 0.020,
                                                     (True, "onednn"): 0.020}))
    choose_kernels(head, repeats=2)
    assert (head.one, head.many) == ("linear", "linear")


def test_the_many_row_kernel_is_timed_again_in_place(monkeypatch):
    """The first verification passes of one size rotate the kernels (one untimed call each, then timed rounds)
    and keep the fastest; calls of other sizes use the current kernel and are not timed; logits are right on
    every call; a fixed kernel (environment) or a small head starts no trial."""
    from torch import nn

    from evospec.runtime import skinny_head
    from evospec.runtime.skinny_head import InPlaceTrial, SkinnyHead, use_skinny_head

    now = [0.0]
    monkeypatch.setattr(skinny_head, "perf_counter", lambda: now[0])
    costs = {"linear": 0.005, "skinny": 0.007, "onednn": 0.003}
    used = []
    real = SkinnyHead.logits

    def logits(self, rows, kernel):
        used.append((rows.shape[0], kernel))
        now[0] += costs[kernel] if used[-1][0] == 6 and len(used) > 3 else 1.0  # first round: slow (packing)
        return real(self, rows, "linear")

    monkeypatch.setattr(SkinnyHead, "logits", logits)
    linear = nn.Linear(8, 50, bias=False)
    head = SkinnyHead(linear, many="skinny")
    head.trial = InPlaceTrial(("skinny", "linear", "onednn"), rounds=2)
    for call in range(12):
        rows = torch.randn(6 if call != 4 else 9, 8)
        torch.testing.assert_close(head(rows), linear(rows))
    assert [k for n, k in used if n == 6][:9] == ["skinny", "linear", "onednn"] * 3
    assert (9, "skinny") in used  # another size: the current kernel, outside the trial
    assert head.trial is None and head.many == "onednn"
    gives_up = SkinnyHead(linear, many="linear")  # other sizes use up its patience before any timed round
    gives_up.trial = InPlaceTrial(("skinny", "linear"), rounds=2, patience=2)
    for rows in (6, 9, 9, 6):
        torch.testing.assert_close(gives_up(x := torch.randn(rows, 8)), linear(x))
    assert gives_up.trial is None and gives_up.many == "linear"  # nothing timed: the load-time choice, no error

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = nn.Linear(16, 1000, bias=False)

    assert use_skinny_head(model := LM()) and model.lm_head.trial is None  # below AUTOTUNE_MIN_ELEMENTS
    monkeypatch.setattr(skinny_head, "AUTOTUNE_MIN_ELEMENTS", 1)
    monkeypatch.setenv("EVOSPEC_HEAD_KERNEL", "linear")
    assert use_skinny_head(model := LM()) and model.lm_head.trial is None
    monkeypatch.delenv("EVOSPEC_HEAD_KERNEL")
    assert use_skinny_head(model := LM()) and model.lm_head.trial is not None


def test_a_fixed_head_kernel_is_named_by_environment(monkeypatch):
    from torch import nn

    from evospec.runtime.skinny_head import use_skinny_head

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm_head = nn.Linear(16, 1000, bias=False)

    monkeypatch.setenv("EVOSPEC_HEAD_KERNEL", "linear")
    model = LM()
    assert use_skinny_head(model) and (model.lm_head.one, model.lm_head.many) == ("linear", "linear")
    monkeypatch.setenv("EVOSPEC_HEAD_KERNEL", "fastest")
    with pytest.raises(ValueError, match="EVOSPEC_HEAD_KERNEL='fastest'"):
        use_skinny_head(LM())


def test_loaded_cpu_targets_use_the_skinny_head(checkpoint_dirs):
    from evospec.runtime.skinny_head import SkinnyHead
    from evospec.runtime.target import load_target

    target = load_target(checkpoint_dirs[0])
    assert isinstance(target.model.lm_head, SkinnyHead) and target.vocab_size == target.model.config.vocab_size


def test_a_large_drafter_head_is_timed_outside_its_state_dict(monkeypatch):
    """A drafter's head runs on every drafter call: at inference its kernel is timed like the target's, kept
    out of the module (a compile or save after loading writes the checkpoint's own keys), and training with
    grad enabled still goes through nn.Linear (the packed kernel has no backward)."""
    from evospec.runtime import skinny_head
    from evospec.runtime.drafter import DrafterKVCache
    from evospec.testing.tiny import tiny_drafter

    model = tiny_target(TINY_SHAPES["llama"], seed=5)
    drafter = tiny_drafter(model, draft_vocab=48, seed=6)
    keys = set(drafter.state_dict())
    assert not drafter.use_timed_head()  # small heads keep nn.Linear
    monkeypatch.setattr(skinny_head, "DRAFTER_AUTOTUNE_MIN_ELEMENTS", 1)
    assert drafter.use_timed_head() and set(drafter.state_dict()) == keys
    c = drafter.config
    features = torch.randn(1, 3, 3 * c.target_hidden_size)
    ids, positions = torch.tensor([[1, 2, 3]]), torch.arange(3)[None]
    mask = torch.ones(3, 3, dtype=torch.bool).tril()

    def call():
        return drafter(features, ids, positions, DrafterKVCache(c, 8, torch.device("cpu"), torch.float32), 0, mask)

    with torch.no_grad():
        hidden, timed = call()
    torch.testing.assert_close(timed, drafter.lm_head(drafter.norm(hidden)), rtol=1e-5, atol=1e-5)
    _, logits = call()  # grad enabled: nn.Linear, which has a backward
    logits.sum().backward()
    assert drafter.lm_head.weight.grad is not None


@pytest.mark.parametrize("lean", [False, True], ids=["transformers-cache", "lean-cache"])
def test_keeping_a_prefix_equals_keeping_its_slots(lean):
    """``keep_cache_prefix(n)`` (what the loop calls when the accepted path is the tree's first nodes) leaves the
    cache as ``keep_cache_slots(arange(n))`` does: the next pass's logits are the same."""
    from evospec.runtime.target import keep_cache_prefix

    model = tiny_target(TINY_SHAPES["llama"], seed=2, dtype=torch.float64)
    outs = []
    for keep in (lambda c: keep_cache_slots(c, torch.arange(6)), lambda c: keep_cache_prefix(c, 6)):
        target = TargetModel(model, (), lean=lean)
        cache = target.new_cache()
        target.forward(torch.tensor([[5, 6, 7, 8]]), torch.arange(4)[None], cache)
        target.forward(torch.tensor([[9, 10, 11]]), torch.tensor([[4, 5, 6]]), cache)  # a chain of 2 after the root
        keep(cache)  # the root and the first draft accepted
        outs.append(target.forward(torch.tensor([[12]]), torch.tensor([[6]]), cache).logits)
    assert torch.equal(outs[0], outs[1])
