"""Stage signatures and recorded feeds: real target features run through the torch stages.

Feeds for the parity check come from the target itself (random prompt tokens -> tapped features
-> fuse -> trunk with a real KV prefix -> head over the default plan), so engines are compared
on the value ranges they will see, not on unit Gaussians.
"""

from __future__ import annotations

import torch

from evospec.passes.base import CompileContext
from evospec.runtime.gather import make_plan
from evospec.runtime.stages import SIGNATURES


@torch.no_grad()
def recorded_feeds(ctx: CompileContext, count: int, prefix: int = 5, step: int = 3, seed: int = 0) -> dict[str, list[dict]]:
    """``count`` feeds per stage; feed i drafts ``step + i`` tokens after a ``prefix + i``-token past."""
    g = torch.Generator().manual_seed(seed)
    target, drafter, stages = ctx.target, ctx.drafter, ctx.stages
    c = drafter.config
    feeds: dict[str, list[dict]] = {stage: [] for stage in SIGNATURES}
    for i in range(count):
        p, t = prefix + i, step + i
        ids = torch.randint(0, c.vocab_size, (1, p + t + 1), generator=g)
        positions = torch.arange(p + t)[None]
        out = target.forward(ids[:, : p + t].to(target.device), positions.to(target.device), target.new_cache())
        features = out.features[None].float().cpu()  # [1, p+t, 3*Dt]
        feeds["fuse"].append({"features": features[:, p:]})
        hidden = stages["fuse"](features)
        embeds = drafter.embed(ids[:, 1 : p + t + 1].to(drafter.d2t.device)).float().cpu()
        empty = torch.zeros(1, c.num_key_value_heads, 1, c.head_dim)  # one masked dummy slot
        mask0 = torch.cat((torch.zeros(p, 1, dtype=torch.bool), torch.ones(p, p, dtype=torch.bool).tril()), dim=1)
        _, _, keys, values = stages["trunk"](hidden[:, :p], embeds[:, :p], positions[:, :p], empty, empty, mask0)
        mask = torch.ones(t, p + t, dtype=torch.bool).tril(diagonal=p)
        trunk_feed = {"hidden": hidden[:, p:], "embeds": embeds[:, p:], "positions": positions[:, p:],
                      "past_keys": keys, "past_values": values, "mask": mask}
        feeds["trunk"].append(trunk_feed)
        normed = stages["trunk"](*trunk_feed.values())[1]
        plan = make_plan(ctx.draft_vocab_ids, tuple(ctx.manifest["gather"]["buckets"]))
        feeds["head"].append({"normed": normed[0], "active": plan.ids, "bias": plan.bias})
        feeds["head_active"].append({"normed": normed[0], "rows": ctx.reservoir[plan.ids], "bias": plan.bias})
    return feeds
