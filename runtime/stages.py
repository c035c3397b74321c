"""The drafter split into stages with explicit state: what the compile pipeline exports and runs.

``FuseStage``  fc: three tapped target states [B, T, 3*Dt] -> drafter width [B, T, d].
``TrunkStage`` the decoder layer + final norm. KV cache, positions and the attention mask are
               inputs; the new keys/values are outputs (the runtime owns the cache), so the stage
               is a pure function with static weights: what ONNX and TensorRT want.
``HeadStage``  LM head over an *active* subset of a reservoir of rows: logits [N, A] for the
               rows ``active`` (padded to a bucket; padding carries bias -inf and never wins).
``ActiveHeadStage`` the same logits from rows already gathered by the runtime (``rows`` [A, d]).
               The runtime keeps those rows resident and moves only the columns a gather plan
               changed, so a step reads A rows once instead of gathering a fresh copy (on CPU the
               in-graph gather costs more than the matmul it feeds).

Token embeddings stay outside: the table is the target's (or drafter's) and the runtime gathers
it, so the exported trunk does not carry a 151k-row table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from evospec.runtime.drafter import Eagle3Trunk


@dataclass(frozen=True)
class StageSignature:
    """Input/output names and which axes of each input are dynamic ({axis: name})."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: tuple[dict[int, str], ...]


# One place for every stage's names: exporters name graph inputs by them, runners feed by them.
SIGNATURES: dict[str, StageSignature] = {
    "fuse": StageSignature(("features",), ("hidden",), ({1: "T"},)),
    "trunk": StageSignature(
        ("hidden", "embeds", "positions", "past_keys", "past_values", "mask"),
        ("hidden_out", "normed", "new_keys", "new_values"),
        ({1: "T"}, {1: "T"}, {1: "T"}, {2: "P"}, {2: "P"}, {0: "T", 1: "auto"}),
    ),
    "head": StageSignature(("normed", "active", "bias"), ("logits",), ({0: "N"}, {0: "A"}, {0: "A"})),
    "head_active": StageSignature(("normed", "rows", "bias"), ("logits",), ({0: "N"}, {0: "A"}, {0: "A"})),
}


class FuseStage(nn.Module):
    def __init__(self, drafter: Eagle3Trunk) -> None:
        super().__init__()
        self.fc = drafter.fc

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)


class TrunkStage(nn.Module):
    """One EAGLE-3 decoder layer + norm with the cache as explicit inputs/outputs.

    ``past_keys``/``past_values`` [B, Hkv, P, hd] are the cache slots before the T inputs, ``mask``
    [T, P+T] bool. Returns (hidden [B, T, d] fed back at the next depth, normed [B, T, d] for the
    head, new keys and values [B, Hkv, T, hd]).
    """

    def __init__(self, drafter: Eagle3Trunk) -> None:
        super().__init__()
        c = drafter.config
        self.layer = drafter.midlayer
        self.norm = drafter.norm
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        rotary = drafter.rotary
        self.register_buffer("inv_freq", rotary.inv_freq.detach().clone().float(), persistent=False)
        self.attention_scaling = float(getattr(rotary, "attention_scaling", 1.0))

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions[..., None].float() * self.inv_freq  # [B, T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return (emb.cos() * self.attention_scaling).to(dtype), (emb.sin() * self.attention_scaling).to(dtype)

    def forward(self, hidden, embeds, positions, past_keys, past_values, mask):
        layer, attn = self.layer, self.layer.self_attn
        x, residual = layer.attention_input(embeds, hidden)
        q, k, v = attn.qkv(x, *self.rope(positions, hidden.dtype))
        keys = torch.cat((past_keys, k), dim=2)
        values = torch.cat((past_values, v), dim=2)
        if self.n_heads != self.n_kv:  # grouped-query attention, spelled out for exporters
            keys = keys.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            values = values.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        scores = q @ keys.transpose(-1, -2) / self.head_dim**0.5
        scores = scores.masked_fill(~mask, float("-inf"))
        out = torch.softmax(scores.float(), dim=-1).to(q.dtype) @ values
        hidden = layer.finish(residual, attn.output(out))
        return hidden, self.norm(hidden), k, v


class HeadStage(nn.Module):
    """Logits over active reservoir rows: ``normed [N, d] @ rows[active].T + bias`` -> [N, A]."""

    def __init__(self, reservoir: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("reservoir", reservoir.detach().clone())  # [V, d]

    def forward(self, normed: torch.Tensor, active: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(normed, torch.index_select(self.reservoir, 0, active)) + bias


class ActiveHeadStage(nn.Module):
    """Logits over rows the runtime already gathered: ``normed [N, d] @ rows.T + bias`` -> [N, A]."""

    def forward(self, normed: torch.Tensor, rows: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.linear(normed, rows) + bias
