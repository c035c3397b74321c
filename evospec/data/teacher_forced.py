"""One teacher-forced pass of target and compiled drafter over a token stream.

Used where a policy must be judged or trained on real text instead of on generated text (the
streams come from ``replay_streams``): the drafter's head inputs at every position (what
semantic retrieval and the DynaSpec router read) and the target's own greedy choice there.
"""

from __future__ import annotations

import torch

from evospec.data.corpus import read_documents
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


def replay_streams(generator, corpus: str, domain: str, tokens: int,
                   per_document: int = 1024, split: str = "test") -> list[list[int]]:
    """Up to ``tokens`` tokens of the domain's ``split`` text, at most ``per_document`` from each document."""
    streams, count = [], 0
    for doc in read_documents(corpus, domain, split):
        ids = generator.encode(doc)[:per_document]
        if len(ids) < 2:
            continue
        streams.append(ids)
        count += len(ids)
        if count >= tokens:
            break
    return streams
