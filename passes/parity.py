"""Pass 7: every built engine against the torch stages on recorded feeds, per output, with tolerances.

The ONNX Runtime check runs the graph the runtime will use (weights bound as updatable
buffers). With TensorRT, Polygraphy's comparator also checks the engine against ONNX Runtime.
A stage out of tolerance fails the compile: a bundle that drafts differently is not shipped.
"""

from __future__ import annotations

import torch

from evospec.core.errors import CompileError
from evospec.passes.base import CompileContext, CompilePass, PassResult, condition
from evospec.passes.feeds import recorded_feeds
from evospec.runtime.runners import OrtRunner, TorchRunner
from evospec.runtime.stages import SIGNATURES

TOLERANCE = {"fp32": (1e-4, 1e-4), "fp16": (2e-2, 2e-2)}  # (atol, rtol of the reference's max |value|)


def compare(reference: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], atol: float, rtol: float) -> dict:
    rows = {}
    for name, ref in reference.items():
        ref, got = ref.float().cpu(), candidate[name].float().cpu()
        finite = torch.isfinite(ref)
        same_inf = bool(torch.equal(finite, torch.isfinite(got)))
        err = float((ref[finite] - got[finite]).abs().max()) if finite.any() else 0.0
        bound = atol + rtol * (float(ref[finite].abs().max()) if finite.any() else 0.0)
        rows[name] = {"max_abs_error": err, "bound": bound, "ok": same_inf and err <= bound}
    return rows


class CheckParity(CompilePass):
    name = "parity"
    reads = ('stages',)

    def ensures(self, ctx: CompileContext) -> None:
        condition("parity" in ctx.manifest, "ensures a parity report in the manifest")

    def call(self, ctx: CompileContext) -> PassResult:
        backend = ctx.settings.backend
        if backend == "torch":
            ctx.manifest["parity"] = {"backend": "torch", "note": "the reference itself; nothing to compare"}
            return PassResult(False, "torch backend: the stages are the reference")
        atol, rtol = TOLERANCE[ctx.settings.precision]
        feeds = recorded_feeds(ctx, ctx.settings.parity_feeds, seed=1)
        report: dict = {"backend": backend, "precision": ctx.settings.precision, "atol": atol, "rtol": rtol, "stages": {}}
        failures = []
        for stage, signature in SIGNATURES.items():
            reference = TorchRunner(stage, ctx.stages[stage], list(signature.inputs), list(signature.outputs))
            if backend == "ort":
                engine = OrtRunner(stage, ctx.work / ctx.files[f"onnx/{stage}"])
            else:
                from evospec.runtime.trt_runner import TrtRunner

                engine = TrtRunner(stage, ctx.work / ctx.files[f"tensorrt/{stage}"], tuple(ctx.manifest["gather"]["buckets"]))
            rows: dict[str, list[dict]] = {}
            with reference, engine:
                for feed in feeds[stage]:
                    for name, row in compare(reference.infer(feed), engine.infer(feed), atol, rtol).items():
                        rows.setdefault(name, []).append(row)
            worst = {name: max(rs, key=lambda r: (not r["ok"], r["max_abs_error"] / max(r["bound"], 1e-30)))
                     for name, rs in rows.items()}
            report["stages"][stage] = worst
            failures += [f"{stage}.{n} (error {r['max_abs_error']:.2e} > {r['bound']:.2e})" for n, r in worst.items() if not r["ok"]]
        if backend == "tensorrt":
            report["polygraphy"] = polygraphy_compare(ctx, feeds)
            failures += polygraphy_failures(report["polygraphy"])
        ctx.manifest["parity"] = report
        if failures:
            raise CompileError(f"{backend} engines differ from the torch stages beyond tolerance: {', '.join(failures)}")
        worst_err = max(r["max_abs_error"] for s in report["stages"].values() for r in s.values())
        return PassResult(False, f"{backend} matches torch on {len(feeds['fuse'])} feeds per stage "
                                 f"(worst abs error {worst_err:.2e})")


def polygraphy_failures(result: dict[str, bool]) -> list[str]:
    """Stages where Polygraphy's comparator found TensorRT and ONNX Runtime apart: each fails the compile."""
    return [f"{stage} (Polygraphy: TensorRT vs ONNX Runtime)" for stage, ok in result.items() if not ok]


def polygraphy_compare(ctx: CompileContext, feeds: dict) -> dict:
    """TensorRT engine vs ONNX Runtime on the same feeds with Polygraphy's Comparator."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.comparator import Comparator, CompareFunc

    atol, rtol = TOLERANCE[ctx.settings.precision]
    result = {}
    for stage in SIGNATURES:
        buckets = ctx.manifest["gather"]["buckets"]
        profile = buckets.index(int(feeds[stage][0]["bias"].numel())) if stage.startswith("head") else None
        runners = [OnnxrtRunner(SessionFromOnnx(str(ctx.work / ctx.files[f"onnx/{stage}"]))),
                   TrtRunner(EngineFromBytes(BytesFromPath(str(ctx.work / ctx.files[f"tensorrt/{stage}"]))),
                             optimization_profile=profile)]
        data = [{k: v.numpy() for k, v in feed.items()} for feed in feeds[stage]]
        results = Comparator.run(runners, data_loader=data)
        accuracy = Comparator.compare_accuracy(results, compare_func=CompareFunc.simple(atol=atol, rtol=rtol))
        result[stage] = bool(accuracy)
    return result
