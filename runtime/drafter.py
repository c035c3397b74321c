"""The EAGLE-3 drafter as a plain torch module with explicit state.

Parameter names follow the official EAGLE-3 / SpecForge checkpoint layout (``fc``, ``midlayer.*``,
``norm``, ``lm_head``, ``d2t``, ``t2d``, optional ``embed_tokens``) so checkpoints load with
``strict=True``. All decoding state (KV cache, positions, attention mask) is passed in by the
caller: the same forward serves prefill, chain drafting and tree expansion, and it is the shape
a static compiled trunk needs later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from evospec.runtime.lean_target import LENGTH_DEPENDENT_ROPE
from evospec.runtime.skinny_head import SkinnyHead, timed_drafter_head

EAGLE3_ARCHITECTURE = "LlamaForCausalLMEagle3"

# How a config's eagle_aux_hidden_state_layer_ids count layers. "input": id i taps the input of decoder
# layer i (HF hidden_states[i]; EAGLE, vLLM and evospec). "output": id i taps the output of layer i
# (SGLang, so SpecForge writes it; SGLang adds 1 before capturing), i.e. HF hidden_states[i + 1].
TAP_NUMBERINGS = ("input", "output")


@dataclass(frozen=True)
class Eagle3Config:
    """Shape of an EAGLE-3 drafter, read from its ``config.json``.

    Attributes:
        hidden_size: Drafter width d.
        target_hidden_size: Width of the target's hidden states (``fc`` maps 3 of them to d).
        intermediate_size: MLP width.
        num_attention_heads: Query heads.
        num_key_value_heads: KV heads (grouped-query attention).
        head_dim: Per-head width.
        rms_norm_eps: RMSNorm epsilon.
        vocab_size: Target vocabulary size (rows of ``t2d`` and of the embedding).
        draft_vocab_size: Rows of ``lm_head``.
        tap_layers: Target hidden-state indices fused by ``fc`` (HF ``hidden_states`` indexing:
            0 = embeddings, i = output of layer i-1), or None for EAGLE-3's default.
        norm_before_residual: Variant where ``hidden_norm`` is applied before the residual branch.
        tap_numbering: The numbering the checkpoint's config listed its taps in (``tap_layers`` is
            always in HF indexing, converted on load).
        raw: The full config dict (RoPE settings are taken from it).
    """

    hidden_size: int
    target_hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    vocab_size: int
    draft_vocab_size: int
    tap_layers: tuple[int, ...] | None = None
    norm_before_residual: bool = False
    tap_numbering: str = "input"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def llama_config(self) -> LlamaConfig:
        """A LlamaConfig carrying the RoPE settings (theta, scaling) of the raw config."""
        keys = ("rope_theta", "rope_scaling", "rope_parameters", "max_position_embeddings")
        extra = {k: self.raw[k] for k in keys if self.raw.get(k) is not None}
        return LlamaConfig(
            hidden_size=self.hidden_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            **extra,
        )


def default_tap_layers(num_target_layers: int) -> tuple[int, int, int]:
    """EAGLE-3's low/middle/high choice, as in the EAGLE reference code and vLLM: (2, L//2, L-3)."""
    return (2, num_target_layers // 2, num_target_layers - 3)


def tap_problem(taps: tuple[int, ...], num_layers: int | None = None) -> str | None:
    """Why vLLM or upstream EAGLE could not serve a drafter with these taps, or None.

    vLLM collects the residual stream *before* each decoder layer whose index is tapped (``idx in
    aux_hidden_state_layers``, in layer order: HF ``hidden_states`` indexing, the same as ours). A
    repeated index yields one state, not two (a shape error at the first draft: 2d features where
    ``fc`` expects 3d), an unordered tuple is concatenated in layer order, not in the drafter's, and
    it can tap neither 0 (no residual yet) nor ``num_layers`` (after the last layer). Upstream EAGLE
    hard-codes EAGLE-3's default (2, L//2, L-3), which repeats or reverses a layer below 8 layers
    (6 layers: (2, 3, 3); 4 layers: (2, 2, 1)).
    """
    taps = tuple(taps)
    if len(set(taps)) != len(taps):
        return f"taps {taps} repeat a layer"
    if list(taps) != sorted(taps):
        return f"taps {taps} are not in ascending order"
    if num_layers is not None and not all(1 <= t <= num_layers - 1 for t in taps):
        return f"taps {taps} leave 1..{num_layers - 1}, the states a {num_layers}-layer target exposes to vLLM"
    return None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:  # one call instead of seven
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class MLP(nn.Module):
    def __init__(self, dim: int, inner: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, inner, bias=False)
        self.up_proj = nn.Linear(dim, inner, bias=False)
        self.down_proj = nn.Linear(inner, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # F.linear: a draft step is many small calls
        return F.linear(F.silu(F.linear(x, self.gate_proj.weight)) * F.linear(x, self.up_proj.weight),
                        self.down_proj.weight)


def check_unmasked(positions: int) -> None:
    """A drafter call without a mask lets every new position see every slot up to the last: right for one new
    position (a chain level), wrong for several (they would see each other's future)."""
    if positions != 1:
        raise ValueError(f"a drafter call without a mask reads every slot: one new position only, got {positions}")


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class DrafterKVCache:
    """Preallocated key/value storage of the drafter's single layer.

    Slots ``[0, length)`` hold committed context; tree expansion writes scratch slots after them,
    which the next step simply overwrites (rolling back a rejected branch costs nothing).
    """

    def __init__(
        self, config: Eagle3Config, capacity: int, device: torch.device, dtype: torch.dtype, batch: int = 1
    ) -> None:
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        self.keys = torch.zeros(shape, device=device, dtype=dtype)
        self.values = torch.zeros(shape, device=device, dtype=dtype)
        self.length = 0

    @property
    def capacity(self) -> int:
        return self.keys.shape[2]

    def write(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store [B, H, T, hd] at slots [start, start+T); return all keys/values up to start+T.

        In place at inference; out of place under autograd (training unrolls the drafter over its
        own outputs, and in-place writes would invalidate tensors saved for backward).
        """
        end = start + keys.shape[2]
        if torch.is_grad_enabled():
            self.keys = torch.cat((self.keys[:, :, :start], keys, self.keys[:, :, end:]), dim=2)
            self.values = torch.cat((self.values[:, :, :start], values, self.values[:, :, end:]), dim=2)
        else:
            self.keys[:, :, start:end] = keys
            self.values[:, :, start:end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]


class Attention(nn.Module):
    """Self-attention whose q/k/v read the 2d concatenation [embedding ; hidden]."""

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        d, hd = config.hidden_size, config.head_dim
        self.n_heads, self.n_kv, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
        self.q_proj = nn.Linear(2 * d, self.n_heads * hd, bias=False)
        self.k_proj = nn.Linear(2 * d, self.n_kv * hd, bias=False)
        self.v_proj = nn.Linear(2 * d, self.n_kv * hd, bias=False)
        self.o_proj = nn.Linear(self.n_heads * hd, d, bias=False)

    def forward(
        self,
        x: torch.Tensor,  # [B, T, 2d]
        cos: torch.Tensor,  # [1, T, hd]
        sin: torch.Tensor,
        cache: DrafterKVCache,
        start: int,
        mask: torch.Tensor | None,  # [T, start+T] bool, True = may attend; None: every slot up to start+T
    ) -> torch.Tensor:
        if mask is None:
            check_unmasked(x.shape[1])
        q, k, v = self.qkv(x, cos, sin)
        keys, values = cache.write(start, k, v)
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=None if mask is None else mask[None, None], enable_gqa=self.n_heads != self.n_kv
        )
        return self.output(out)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Queries [B, H, T, hd] and keys, values [B, Hkv, T, hd] of x [B, T, 2d], RoPE applied (cos/sin [1, T, hd])."""
        b, t, _ = x.shape
        q = F.linear(x, self.q_proj.weight).view(b, t, self.n_heads, self.head_dim)
        k = F.linear(x, self.k_proj.weight).view(b, t, self.n_kv, self.head_dim)
        v = F.linear(x, self.v_proj.weight).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        qk = torch.cat((q, k), dim=2).transpose(1, 2)  # RoPE on queries and keys in one pass
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        qk = qk * cos + rotate_half(qk) * sin
        return qk[:, : self.n_heads], qk[:, self.n_heads :], v

    def output(self, heads: torch.Tensor) -> torch.Tensor:
        """[B, H, T, hd] attention output -> [B, T, d]."""
        b, _, t, _ = heads.shape
        return F.linear(heads.transpose(1, 2).reshape(b, t, self.n_heads * self.head_dim), self.o_proj.weight)


class DecoderLayer(nn.Module):
    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        d = config.hidden_size
        self.input_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.hidden_norm = RMSNorm(d, config.rms_norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(d, config.rms_norm_eps)
        self.mlp = MLP(d, config.intermediate_size)
        self.norm_before_residual = config.norm_before_residual

    def forward(self, embeds: torch.Tensor, hidden: torch.Tensor, **attn: Any) -> torch.Tensor:
        x, residual = self.attention_input(embeds, hidden)
        return self.finish(residual, self.self_attn(x, **attn))

    def attention_input(self, embeds: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x [B, T, 2d] = [norm(embeds) ; norm(hidden)] that q/k/v read, the residual branch)."""
        normed = self.hidden_norm(hidden)
        residual = normed if self.norm_before_residual else hidden
        return torch.cat((self.input_layernorm(embeds), normed), dim=-1), residual

    def finish(self, residual: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Residual add, then the MLP block."""
        hidden = residual + attended
        return hidden + self.mlp(self.post_attention_layernorm(hidden))


def draft_vocab_target_ids(d2t: torch.Tensor) -> torch.Tensor:
    """Target ids of a draft vocabulary in draft-id order (EAGLE-3: target = draft + d2t[draft])."""
    return torch.arange(d2t.numel(), device=d2t.device) + d2t


class Eagle3Trunk(nn.Module):
    """An EAGLE-3 drafter without embeddings and head: fc, the decoder layer, the final norm, RoPE.

    The attribute names are the checkpoint's (``fc``, ``midlayer.*``, ``norm``), so the stages and the
    online distiller read a trunk and a whole drafter alike.
    """

    def __init__(self, config: Eagle3Config) -> None:
        super().__init__()
        self.config = config
        self._build_trunk(config)
        self.rotary = LlamaRotaryEmbedding(config.llama_config())

    def _build_trunk(self, config: Eagle3Config) -> None:
        self.fc = nn.Linear(3 * config.target_hidden_size, config.hidden_size, bias=False)
        self.midlayer = DecoderLayer(config)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Eagle3Drafter(Eagle3Trunk):
    """EAGLE-3 draft head: fuse target states, one decoder layer, norm, reduced-vocabulary head.

    ``embed_tokens`` is the drafter's own embedding when the checkpoint has one, else the target's
    (shared, not copied; it is not registered as a parameter of the drafter then).
    """

    def __init__(self, config: Eagle3Config, has_embeddings: bool, shared_embeddings: nn.Module | None = None) -> None:
        if not has_embeddings and shared_embeddings is None:
            raise ValueError("a drafter without embed_tokens needs the target's embeddings")
        nn.Module.__init__(self)  # parameters in the checkpoint's order: embeddings, trunk, head (seeded inits rely on it)
        self.config = config
        d = config.hidden_size
        # A tuple keeps the target's table out of this module's parameters and state_dict.
        self._table = (nn.Embedding(config.vocab_size, d),) if has_embeddings else (shared_embeddings,)
        if has_embeddings:
            self.embed_tokens = self._table[0]
        self._build_trunk(config)
        self.lm_head = nn.Linear(d, config.draft_vocab_size, bias=False)
        self._timed_head: tuple[SkinnyHead, ...] = ()  # a tuple keeps it out of the state dict (use_timed_head)
        self.register_buffer("d2t", torch.zeros(config.draft_vocab_size, dtype=torch.long))
        self.register_buffer("t2d", torch.zeros(config.vocab_size, dtype=torch.bool))
        self.rotary = LlamaRotaryEmbedding(config.llama_config())
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None  # not a buffer: the state dict stays the checkpoint's
        rope = config.raw.get("rope_parameters") or config.raw.get("rope_scaling") or {}
        self._rope_by_table = rope.get("rope_type", rope.get("type", "default")) not in LENGTH_DEPENDENT_ROPE

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def use_timed_head(self) -> bool:
        """Inference on a CPU: compute ``lm_head`` with the kernel fastest on this machine (nn.Linear repacks
        its weight on every call; a packed copy does not), timed at load as the target's head is
        (``runtime/skinny_head.py``). The module and its state dict stay as they are; False where nn.Linear
        stays (small heads, GPUs)."""
        timed = timed_drafter_head(self.lm_head)
        self._timed_head = (timed,) if timed is not None else ()
        return timed is not None

    def rope(self, hidden: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE cos/sin ``[B, T, hd]`` for ``positions``, read from a per-position table (one index instead of
        the rotary module's eight calls per draft step); rope types that rescale with the length compute."""
        if not self._rope_by_table:
            return self.rotary(hidden, positions)
        table = self._rope_table
        top = int(positions.max()) + 1
        if table is None or table[0].shape[0] < top or table[0].device != hidden.device or table[0].dtype != hidden.dtype:
            span = torch.arange(max(top, 1024, 2 * (0 if table is None else table[0].shape[0])), device=hidden.device)
            with torch.no_grad():
                cos, sin = self.rotary(hidden, span[None])
            table = self._rope_table = (cos[0], sin[0])
        return table[0][positions], table[1][positions]

    def embed(self, target_ids: torch.Tensor) -> torch.Tensor:
        return self._table[0](target_ids)

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        """Map draft-vocabulary ids to target ids (EAGLE-3: target = draft + d2t[draft])."""
        return draft_ids + self.d2t[draft_ids]

    def draft_vocab_target_ids(self) -> torch.Tensor:
        """Target ids of the drafter's own vocabulary in draft-id order: [draft_vocab_size], on d2t's device."""
        return draft_vocab_target_ids(self.d2t)

    def forward(
        self,
        hidden: torch.Tensor,  # [B, T, 3*target_d] target features, or [B, T, d] drafter states
        target_ids: torch.Tensor,  # [B, T] the token following each hidden state
        positions: torch.Tensor,  # [B, T]
        cache: DrafterKVCache,
        start: int,  # cache slot of the first of the T inputs
        mask: torch.Tensor | None,  # [T, start+T] bool; None: one input that attends to every slot up to it
        logit_rows: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (pre-norm hidden [B, T, d] fed back at the next depth, draft logits [B, T, Vd]; with
        ``logit_rows`` n, the logits of the last n inputs only, [B, n, Vd]).

        Drafting from newly committed positions needs the last one's logits alone: the head is most of a
        call's cost (16,384 x 160 floats read per row block on the medium pair), and a prompt's prefill has
        dozens of rows."""
        if hidden.shape[-1] == 3 * self.config.target_hidden_size:
            hidden = self.fc(hidden)
        embeds = self.embed(target_ids).to(hidden.dtype)
        cos, sin = self.rope(hidden, positions)
        out = self.midlayer(embeds, hidden, cos=cos, sin=sin, cache=cache, start=start, mask=mask)
        # the timed kernels have no backward: training (grad enabled) goes through nn.Linear
        head = self._timed_head[0] if self._timed_head and not torch.is_grad_enabled() else self.lm_head
        return out, head(self.norm(out if logit_rows is None else out[:, out.shape[1] - logit_rows:]))
