"""Tiny randomly initialised target/drafter pairs, for tests and examples.

A small registry of named shapes keeps tests readable (``tiny_pair("llama")``) and covers the
target families the loader must handle (Llama, Qwen2, Qwen3, Mistral).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from evospec.runtime.drafter import EAGLE3_ARCHITECTURE, Eagle3Config, Eagle3Drafter, default_tap_layers
from evospec.runtime.target import TargetModel


@dataclass(frozen=True)
class TinyShape:
    model_type: str = "llama"
    vocab_size: int = 96
    hidden_size: int = 32
    layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 64


TINY_SHAPES: dict[str, TinyShape] = {
    "llama": TinyShape(),
    "qwen2": TinyShape(model_type="qwen2"),
    "qwen3": TinyShape(model_type="qwen3"),
    "mistral": TinyShape(model_type="mistral"),
}


def tiny_target(
    shape: TinyShape = TinyShape(),
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    init_std: float = 0.5,
    layer_scale: float = 1.0,
):
    """A random HF causal LM.

    A large ``init_std`` gives peaked, seed-dependent next-token distributions. ``layer_scale`` < 1
    shrinks what the layers add to the residual stream, so the next token depends mostly on the
    current one (bigram-like, context still matters): a target a tiny drafter can learn quickly.
    """
    torch.manual_seed(seed)
    extra = {"sliding_window": None} if shape.model_type in ("mistral", "qwen2", "qwen3") else {}
    config = AutoConfig.for_model(
        shape.model_type,
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.hidden_size // shape.heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=512,
        initializer_range=init_std,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
        **extra,
    )
    model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa")
    if layer_scale != 1.0:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    param.mul_(layer_scale)
    return model.eval()


def tiny_drafter_config(target_config, draft_vocab: int, tap_layers=None) -> Eagle3Config:
    d = target_config.hidden_size
    heads = target_config.num_attention_heads
    raw = {
        "architectures": [EAGLE3_ARCHITECTURE],
        "rope_theta": getattr(target_config, "rope_theta", None) or 10000.0,
        "max_position_embeddings": 512,
    }
    return Eagle3Config(
        hidden_size=d,
        target_hidden_size=d,
        intermediate_size=2 * d,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        head_dim=d // heads,
        rms_norm_eps=1e-6,
        vocab_size=target_config.vocab_size,
        draft_vocab_size=draft_vocab,
        tap_layers=tuple(tap_layers) if tap_layers else None,
        raw=raw,
    )


def tiny_drafter(
    target_model,
    draft_vocab: int | None = None,
    seed: int = 1,
    with_embeddings: bool = False,
    draft_ids: torch.Tensor | None = None,
    init_std: float = 0.3,
    tap_layers: tuple[int, ...] | None = None,
) -> Eagle3Drafter:
    """A random EAGLE-3 drafter for ``target_model``.

    Args:
        draft_ids: Target ids the draft vocabulary covers (sorted); default: a random subset of
            ``draft_vocab`` ids, or every id when ``draft_vocab`` is None.
        tap_layers: Taps written into the config (None: EAGLE-3's default for the target).
    """
    cfg = target_model.config
    vocab = cfg.vocab_size
    g = torch.Generator().manual_seed(seed)
    if draft_ids is None:
        n = draft_vocab or vocab
        draft_ids = torch.randperm(vocab, generator=g)[:n].sort().values
    config = tiny_drafter_config(cfg, int(draft_ids.numel()), tap_layers)
    drafter = Eagle3Drafter(config, with_embeddings, shared_embeddings=target_model.get_input_embeddings())
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                continue
            p.copy_(torch.randn(p.shape, generator=g) * init_std)
        drafter.d2t.copy_(draft_ids - torch.arange(draft_ids.numel()))
        drafter.t2d.zero_()
        drafter.t2d[draft_ids] = True
    return drafter.to(target_model.dtype).eval()


def tiny_target_model(shape_name: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32) -> TargetModel:
    model = tiny_target(TINY_SHAPES[shape_name], seed=seed, dtype=dtype)
    return TargetModel(model, tuple(default_tap_layers(model.config.num_hidden_layers)))
