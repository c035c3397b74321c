"""One teacher-forced pass of target and compiled drafter over a token stream.

Used where a policy must be judged or trained on real text instead of on generated text: the
drafter's head inputs at every position (what semantic retrieval and the DynaSpec router read)
and the target's own greedy choice at every position.
"""

from __future__ import annotations

import torch

from evospec.runtime.drafter import DrafterKVCache


@torch.no_grad()
def teacher_forced(generator, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(states [n, d], greedy [n]) with n = len(ids) - 1: ``states[j]`` is the drafter's head input at position j (it predicts the token at j + 2) and
    ``greedy[j]`` is the target's argmax after position j (its choice for token j + 1)."""
    drafter, target = generator.drafter, generator.target
    if not hasattr(drafter, "root_normed"):
        raise TypeError("teacher_forced needs a compiled drafter (SpeculativeGenerator.from_bundle)")
    device, n = target.device, len(ids) - 1
    out = target.forward(torch.tensor([ids[:n]], device=device), torch.arange(n, device=device)[None],
                         target.new_cache())
    cache = DrafterKVCache(drafter.config, n + 1, device, drafter.dtype)
    mask = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    drafter(out.features[None].to(drafter.dtype), torch.tensor([ids[1:]], device=device),
            torch.arange(n, device=device)[None], cache, 0, mask)
    return drafter.root_normed.cpu(), out.logits.argmax(-1).cpu()
