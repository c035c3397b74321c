"""A drafter that runs from compiled stages (torch, ONNX Runtime or TensorRT runners).

It has the interface the decoding loop uses (``config``, ``d2t``, ``draft_to_target``, ``dtype``,
and ``__call__(hidden, target_ids, positions, cache, start, mask)``), so trees, verification and
the generator are unchanged: only where the drafter's arithmetic happens moves.
"""

from __future__ import annotations

import torch
from evospec.runtime.drafter import DrafterKVCache, Eagle3Config
from evospec.runtime.gather import GatherPlan
from evospec.runtime.runners import Runner


class CompiledDrafter:
    def __init__(self, config: Eagle3Config, d2t: torch.Tensor, embed_table: torch.nn.Module,
                 runners: dict[str, Runner], plan: GatherPlan) -> None:
        self.config, self.d2t, self._embed, self.runners, self.plan = config, d2t, embed_table, runners, plan
        self.dtype = torch.float32  # engines take and return fp32 at their boundary

    def draft_to_target(self, draft_ids: torch.Tensor) -> torch.Tensor:
        return draft_ids + self.d2t[draft_ids]

    def embed(self, target_ids: torch.Tensor) -> torch.Tensor:
        return self._embed(target_ids)

    @torch.no_grad()
    def __call__(self, hidden: torch.Tensor, target_ids: torch.Tensor, positions: torch.Tensor,
                 cache: DrafterKVCache, start: int, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        device, c = hidden.device, self.config
        hidden = hidden.float()
        if hidden.shape[-1] == 3 * c.target_hidden_size:
            hidden = self.runners["fuse"].infer({"features": hidden})["hidden"].to(device)
        embeds = self.embed(target_ids).float()
        b, t = target_ids.shape
        if start == 0:  # engines take a non-empty past: one dummy slot that the mask hides
            empty = torch.zeros(b, c.num_key_value_heads, 1, c.head_dim, device=device)
            past_keys = past_values = empty
            mask = torch.cat((torch.zeros(t, 1, dtype=torch.bool, device=device), mask), dim=1)
        else:
            past_keys, past_values = cache.keys[:, :, :start].float(), cache.values[:, :, :start].float()
        out = self.runners["trunk"].infer({"hidden": hidden, "embeds": embeds, "positions": positions,
                                           "past_keys": past_keys, "past_values": past_values, "mask": mask})
        cache.write(start, out["new_keys"].to(device, cache.keys.dtype), out["new_values"].to(device, cache.values.dtype))
        normed = out["normed"].reshape(b * t, c.hidden_size)
        logits = self.runners["head"].infer({"normed": normed, "active": self.plan.ids, "bias": self.plan.bias})["logits"]
        return out["hidden_out"].to(device), logits[:, : self.plan.size].reshape(b, t, self.plan.size).to(device)
