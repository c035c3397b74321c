"""Pass 2: split the drafter into its fuse (fc), trunk (layer + norm, explicit KV cache) and head stages."""

from __future__ import annotations

from evospec.passes.base import CompileContext, CompilePass, PassResult, condition
from evospec.runtime.stages import FuseStage, TrunkStage


class SplitStages(CompilePass):
    name = "split"
    reads = ('drafter',)

    def ensures(self, ctx: CompileContext) -> None:
        condition({"fuse", "trunk"} <= set(ctx.stages), f"ensures stages fuse and trunk (have {sorted(ctx.stages)})")

    def call(self, ctx: CompileContext) -> PassResult:
        ctx.stages["fuse"] = FuseStage(ctx.drafter).eval()
        ctx.stages["trunk"] = TrunkStage(ctx.drafter).eval()
        return PassResult(True, "fuse (fc) + trunk (decoder layer + norm; cache, positions, mask as inputs); "
                                "head follows from the reservoir")
