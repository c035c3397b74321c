"""A gpt-fast-style forward pass over an HF decoder's own weights, with a KV cache allocated up front.

At the sizes a drafter pays off on a CPU (the 8-layer demo-recipe pair: one plain step of the HF
forward cost 4.3 ms, almost all of it framework work: mask construction, cache classes, output
dataclasses, kwargs plumbing through ten modules per layer), the transformers forward is the
bottleneck of the decoding step, not arithmetic. This module runs the same arithmetic directly:
embeddings, per layer RMSNorm -> q/k/v -> RoPE (the model's own rotary module, so every rope
type it knows is honoured) -> cache write -> one SDPA call with the tree mask -> o_proj -> MLP,
final norm, head. The weights are the HF modules' own tensors (nothing copied).

It covers the families the loader's tests build (Llama, Qwen2, Qwen3, Mistral), which share this
layout; any other model keeps the transformers forward (:func:`lean_support` says why not).
Values agree with transformers to float rounding, not bit for bit (tests compare logits and
greedy tokens); plain and speculative decoding both run this forward, so exactness holds against
the target as this runtime computes it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
from torch import nn

LEAN_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
INITIAL_CAPACITY = 1024
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")  # frequencies that change with the sequence length: no table


def lean_support(model: nn.Module) -> str | None:
    """Why ``model`` cannot run the lean forward, or None when it can."""
    config = model.config
    if config.model_type not in LEAN_MODEL_TYPES:
        return f"model type {config.model_type!r} is not one of {LEAN_MODEL_TYPES}"
    body = getattr(model, "model", None)
    layers = getattr(body, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(body, "rotary_emb") or not hasattr(body, "norm"):
        return "the model does not keep its layers, norm and rotary embedding where the Llama family does"
    if getattr(config, "pretraining_tp", 1) not in (None, 1):
        return "pretraining_tp > 1 splits the projections"
    if getattr(config, "mlp_bias", False):
        return "biased gate/up projections are not covered"
    return None


@dataclass
class LeanCache:
    """Keys and values of every layer in one buffer each: ``[layers, kv_heads, capacity, head_dim]``.

    Slots ``0..length-1`` are live; rollback keeps a subset of them (a prefix by moving ``length``).
    """

    keys: torch.Tensor
    values: torch.Tensor
    length: int = 0

    @classmethod
    def allocate(cls, model: nn.Module, capacity: int) -> LeanCache:
        config = model.config
        heads = int(config.num_key_value_heads or config.num_attention_heads)
        head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
        weight = model.get_input_embeddings().weight
        shape = (int(config.num_hidden_layers), heads, capacity, head_dim)
        return cls(weight.new_zeros(shape), weight.new_zeros(shape))

    @property
    def capacity(self) -> int:
        return int(self.keys.shape[2])

    def get_seq_length(self) -> int:
        return self.length

    def reserve(self, needed: int) -> None:
        """Grow (doubling) so that ``needed`` slots fit; the live slots are kept."""
        if needed <= self.capacity:
            return
        capacity = max(needed, 2 * self.capacity)
        for name in ("keys", "values"):
            old = getattr(self, name)
            new = old.new_zeros((*old.shape[:2], capacity, old.shape[3]))
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)

    def keep(self, slots: torch.Tensor) -> None:
        """Keep only ``slots`` (ascending), in that order; a prefix moves the length and copies nothing."""
        n = int(slots.numel())
        if n and int(slots[-1]) == n - 1:
            self.length = n
            return
        # ascending slots: those before the first that moves stay where they are, so only the rest are copied (a
        # tree whose accepted path leaves its first branch moves a few slots, not the whole cache)
        first = int((slots != torch.arange(n, device=slots.device)).int().argmax())
        idx = slots[first:].to(self.keys.device)
        self.keys[:, :, first:n] = self.keys.index_select(2, idx)
        self.values[:, :, first:n] = self.values.index_select(2, idx)
        self.length = n


@dataclass
class _Layer:
    """One decoder layer's weights, fused where one GEMM can do the work of several: q/k/v in one
    matrix, gate/up in another. The HF modules' weights become views of the fused tensors, so
    nothing is stored twice and the model's own forward is unchanged."""

    norm1: torch.Tensor
    qkv: torch.Tensor  # [(H + 2*KVH) * hd, d]
    qkv_bias: torch.Tensor | None
    o_proj: torch.Tensor
    o_bias: torch.Tensor | None
    norm2: torch.Tensor
    gate_up: torch.Tensor  # [2 * I, d]
    down: torch.Tensor
    down_bias: torch.Tensor | None
    act: object
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None


_FUSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> its fused layers, made once


def _fuse(modules: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
    biased = [m.bias is not None for m in modules]
    if any(biased) and not all(biased):
        raise ValueError("projections fused into one GEMM mix biased and bias-free layers")
    weight = torch.cat([m.weight.detach() for m in modules])
    bias = torch.cat([m.bias.detach() for m in modules]) if all(biased) else None
    start = 0
    for m in modules:  # re-point each module at its slice: the model keeps working, memory is not doubled
        rows = m.weight.shape[0]
        m.weight = nn.Parameter(weight[start:start + rows], requires_grad=False)
        if bias is not None:
            m.bias = nn.Parameter(bias[start:start + rows], requires_grad=False)
        start += rows
    return weight, bias


def _layer(layer: nn.Module) -> _Layer:
    attn, mlp = layer.self_attn, layer.mlp
    qkv, qkv_bias = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
    gate_up, gate_up_bias = _fuse([mlp.gate_proj, mlp.up_proj])
    if gate_up_bias is not None:
        raise ValueError("biased gate/up projections are not covered")
    q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)
    return _Layer(
        norm1=layer.input_layernorm.weight, qkv=qkv, qkv_bias=qkv_bias,
        o_proj=attn.o_proj.weight, o_bias=attn.o_proj.bias, norm2=layer.post_attention_layernorm.weight,
        gate_up=gate_up, down=mlp.down_proj.weight, down_bias=mlp.down_proj.bias, act=mlp.act_fn,
        q_norm=None if q_norm is None else q_norm.weight, k_norm=None if k_norm is None else k_norm.weight,
    )


def fused_layers(model: nn.Module) -> list[_Layer]:
    """The model's layers with fused projections, built on first use and shared by every decoder of it;
    rebuilt when the model's weights were replaced since (``model.to(dtype)``, a loaded state dict)."""
    layers = _FUSED.get(model)
    if layers is None or not _still_shared(model, layers):
        with torch.no_grad():
            layers = [_layer(layer) for layer in model.model.layers]
        _FUSED[model] = layers
    return layers


def _still_shared(model: nn.Module, layers: list[_Layer]) -> bool:
    first, last = model.model.layers[0], model.model.layers[-1]
    return (first.self_attn.q_proj.weight.data_ptr() == layers[0].qkv.data_ptr()
            and last.mlp.gate_proj.weight.data_ptr() == layers[-1].gate_up.data_ptr()
            and first.input_layernorm.weight is layers[0].norm1)


class LeanDecoder:
    """Runs ``model`` (a Llama-family causal LM) step by step over a :class:`LeanCache`.

    Args:
        model: The HF model; its modules and weights are used in place (q/k/v and gate/up are re-pointed
            at fused tensors, which leaves the model's own forward unchanged).
    """

    def __init__(self, model: nn.Module) -> None:
        reason = lean_support(model)
        if reason is not None:
            raise ValueError(f"the lean forward does not cover this model: {reason}")
        self.model = model
        self.body = model.model
        config = model.config
        self.heads = int(config.num_attention_heads)
        self.kv_heads = int(config.num_key_value_heads or self.heads)
        first = self.body.layers[0]
        self.head_dim = int(first.self_attn.head_dim)
        self.scaling = float(first.self_attn.scaling)
        self.eps = float(config.rms_norm_eps)
        self.layers = fused_layers(model)
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        # a table of cos/sin per position, except for rope types that rescale with the sequence length
        self._rope_table = rope.get("rope_type", rope.get("type", "default")) not in LENGTH_DEPENDENT_ROPE
        self._cos = self._sin = None

    def new_cache(self, capacity: int = INITIAL_CAPACITY) -> LeanCache:
        return LeanCache.allocate(self.model, capacity)

    def _rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin ``[1, T, 1, hd]``: ``rotate_half(x) * sin == x.roll(hd/2) * signed_sin``."""
        if not self._rope_table:
            cos, sin = self.body.rotary_emb(hidden, positions)
            return cos[:, :, None], _signed(sin)[:, :, None]
        top = int(positions.max()) + 1
        if self._cos is None or self._cos.shape[0] < top:
            have = 0 if self._cos is None else self._cos.shape[0]
            span = torch.arange(max(top, 2 * have, 512), device=hidden.device)[None]
            cos, sin = self.body.rotary_emb(hidden, span)
            self._cos, self._sin = cos[0], _signed(sin)[0]
        return self._cos[positions[0]][None, :, None], self._sin[positions[0]][None, :, None]

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """RMSNorm as the HF Llama family computes it (in float32, weight applied in the model dtype)."""
        if x.dtype == torch.float32:
            return torch.nn.functional.rms_norm(x, (x.shape[-1],), weight, self.eps)
        return weight * torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), None, self.eps).to(x.dtype)

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,  # [1, T]
        positions: torch.Tensor,  # [1, T]
        cache: LeanCache,
        visible: torch.Tensor | None,  # [T, past + T] bool: which slots each new token attends to; None = all
        taps: tuple[int, ...] = (),
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Logits ``[T, V]`` (model dtype) and the hidden states ``{i: [T, d]}`` for each HF
        ``hidden_states`` index in ``taps`` (i < L: layer i's input; L: the final normed output); the
        new tokens' keys and values are appended to ``cache``."""
        linear = torch.nn.functional.linear
        if not _still_shared(self.model, self.layers):  # weights replaced since: fuse them again
            self.layers = fused_layers(self.model)
        t = input_ids.shape[1]
        past = cache.length
        cache.reserve(past + t)
        end = past + t
        hidden = self.body.embed_tokens(input_ids)  # [1, T, d]
        cos, sin = self._rope(hidden, positions)  # [1, T, 1, hd]
        mask = None if visible is None else visible[None, None]  # [1, 1, T, past+T]
        heads, kv_heads, hd = self.heads, self.kv_heads, self.head_dim
        qk_heads, half = heads + kv_heads, hd // 2
        captured: dict[int, torch.Tensor] = {}
        for i, w in enumerate(self.layers):
            if i in taps:
                captured[i] = hidden[0]
            qkv = linear(self._norm(hidden, w.norm1), w.qkv, w.qkv_bias).view(1, t, qk_heads + kv_heads, hd)
            qk, v = qkv[:, :, :qk_heads], qkv[:, :, qk_heads:]
            if w.q_norm is not None:  # Qwen3 normalises each head's queries and keys before RoPE
                qk = torch.cat((self._norm(qk[:, :, :heads], w.q_norm), self._norm(qk[:, :, heads:], w.k_norm)), 2)
            qk = (qk * cos + qk.roll(half, -1) * sin).transpose(1, 2)  # RoPE on queries and keys at once
            cache.keys[i, :, past:end] = qk[0, heads:]
            cache.values[i, :, past:end] = v[0].transpose(0, 1)
            out = torch.nn.functional.scaled_dot_product_attention(
                qk[:, :heads], cache.keys[i, None, :, :end], cache.values[i, None, :, :end], attn_mask=mask,
                scale=self.scaling, enable_gqa=kv_heads != heads,
            )  # [1, heads, T, hd]
            hidden = hidden + linear(out.transpose(1, 2).reshape(1, t, heads * hd), w.o_proj, w.o_bias)
            gate, up = linear(self._norm(hidden, w.norm2), w.gate_up).chunk(2, dim=-1)
            hidden = hidden + linear(w.act(gate) * up, w.down, w.down_bias)
        hidden = self._norm(hidden, self.body.norm.weight)
        if len(self.layers) in taps:
            captured[len(self.layers)] = hidden[0]
        cache.length = end
        return self.model.lm_head(hidden)[0], captured


def _signed(sin: torch.Tensor) -> torch.Tensor:
    """``sin`` with its first half negated, so the half rotation is one ``roll`` and one multiply."""
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
