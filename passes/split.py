"""Pass 2: split the drafter into its fuse (fc), trunk (layer + norm, explicit KV cache) and head stages."""

from __future__ import annotations

from evospec.passes.base import CompileContext, PassResult
from evospec.runtime.stages import FuseStage, TrunkStage


class SplitStages:
    name = "split"

    def __call__(self, ctx: CompileContext) -> PassResult:
        ctx.stages["fuse"] = FuseStage(ctx.drafter).eval()
        ctx.stages["trunk"] = TrunkStage(ctx.drafter).eval()
        return PassResult(True, "fuse (fc) + trunk (decoder layer + norm; cache, positions, mask as inputs); "
                                "head follows from the reservoir")
