"""The target wrapper: tapped states are EAGLE-3's layer inputs; tree passes and cache rollback."""

from __future__ import annotations

import torch
from evospec.runtime.drafter import default_tap_layers
from evospec.runtime.target import TargetModel, keep_cache_slots

from evospec.tiny import TINY_SHAPES, TinyShape, tiny_target


def test_tapped_features_are_inputs_of_the_tapped_layers():
    """EAGLE-3 taps the input of decoder layers (2, L//2, L-3): HF hidden_states[i]."""
    model = tiny_target(TinyShape(layers=7), seed=0)
    taps = default_tap_layers(7)
    assert taps == (2, 3, 4)
    seen = {}
    for i, layer in enumerate(model.model.layers):
        layer.register_forward_pre_hook(
            lambda mod, args, kwargs, i=i: seen.__setitem__(i, (args[0] if args else kwargs["hidden_states"])),
            with_kwargs=True,
        )
    target = TargetModel(model, taps)
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
