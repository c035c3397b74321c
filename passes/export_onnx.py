"""Pass 5: export fuse, trunk, head and head_active to ONNX (external data), checked by the ONNX checker."""

from __future__ import annotations

from evospec.exporters.onnx_export import export_stage, graph_summary
from evospec.passes.base import CompileContext, CompilePass, PassResult, condition, ensure_artefacts, relative
from evospec.passes.feeds import recorded_feeds
from evospec.runtime.stages import SIGNATURES


class ExportOnnx(CompilePass):
    name = "export_onnx"
    reads = ('stages', 'reservoir')

    def requires(self, ctx: CompileContext) -> None:
        super().requires(ctx)
        condition(set(SIGNATURES) <= set(ctx.stages), f"requires stages {sorted(SIGNATURES)} (have {sorted(ctx.stages)})")

    def ensures(self, ctx: CompileContext) -> None:
        ensure_artefacts(ctx, [f"onnx/{stage}" for stage in SIGNATURES])

    def call(self, ctx: CompileContext) -> PassResult:
        examples = recorded_feeds(ctx, 1)
        (ctx.work / "onnx").mkdir(exist_ok=True)
        summaries = {}
        for stage in SIGNATURES:
            signature = SIGNATURES[stage]
            path = ctx.work / "onnx" / f"{stage}.onnx"
            feed = examples[stage][0]
            export_stage(ctx.stages[stage], tuple(feed[n] for n in signature.inputs), signature, path, ctx.settings.opset)
            ctx.files[f"onnx/{stage}"] = relative(ctx, path)
            summaries[stage] = graph_summary(path)
        ctx.manifest["graphs"] = summaries
        return PassResult(True, "exported " + ", ".join(f"{s} ({v['nodes']} nodes)" for s, v in summaries.items()))
