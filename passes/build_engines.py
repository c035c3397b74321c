"""Pass 6: build the engines of the chosen backend (ONNX Runtime, TensorRT, or none for torch)."""

from __future__ import annotations

from evospec.exporters.ort_build import build_ort
from evospec.passes.base import CompileContext, CompilePass, PassResult, ensure_artefacts, relative
from evospec.runtime.stages import SIGNATURES


def tensorrt_profiles(stage: str, ctx: CompileContext) -> list[dict]:
    s, shapes = ctx.settings, ctx.manifest["shapes"]
    d, kv, hd, dt = shapes["hidden_size"], shapes["num_key_value_heads"], shapes["head_dim"], shapes["target_hidden_size"]
    t, p = s.max_draft_tokens, s.max_context

    def rng(*dims_lo_opt_hi):
        return tuple(tuple(x) for x in zip(*dims_lo_opt_hi))

    if stage == "fuse":
        return [{"features": ((1, 1, 3 * dt), (1, 8, 3 * dt), (1, t, 3 * dt))}]
    if stage == "trunk":
        return [{"hidden": ((1, 1, d), (1, 8, d), (1, t, d)), "embeds": ((1, 1, d), (1, 8, d), (1, t, d)),
                 "positions": ((1, 1), (1, 8), (1, t)), "past_keys": ((1, kv, 1, hd), (1, kv, 256, hd), (1, kv, p, hd)),
                 "past_values": ((1, kv, 1, hd), (1, kv, 256, hd), (1, kv, p, hd)), "mask": ((1, 2), (8, 264), (t, p + t))}]
    if stage == "head_active":
        return [{"normed": ((1, d), (8, d), (t, d)), "rows": ((b, d), (b, d), (b, d)), "bias": ((b,), (b,), (b,))}
                for b in ctx.manifest["gather"]["buckets"]]
    return [{"normed": ((1, d), (8, d), (t, d)), "active": ((b,), (b,), (b,)), "bias": ((b,), (b,), (b,))}
            for b in ctx.manifest["gather"]["buckets"]]


class BuildEngines(CompilePass):
    name = "build_engines"
    reads = ('stages',)

    def requires(self, ctx: CompileContext) -> None:
        super().requires(ctx)
        if ctx.settings.backend != "torch":
            ensure_artefacts(ctx, [f"onnx/{stage}" for stage in SIGNATURES])

    def ensures(self, ctx: CompileContext) -> None:
        if ctx.settings.backend != "torch":
            ensure_artefacts(ctx, [f"{ctx.settings.backend}/{stage}" for stage in SIGNATURES])

    def call(self, ctx: CompileContext) -> PassResult:
        backend = ctx.settings.backend
        if backend == "torch":
            return PassResult(False, "torch backend: nothing to build (stages run eagerly from bundle weights)")
        folder = ctx.work / backend
        folder.mkdir(exist_ok=True)
        built = []
        for stage in SIGNATURES:
            source = ctx.work / ctx.files[f"onnx/{stage}"]
            if backend == "ort":
                path = build_ort(source, folder / f"{stage}.opt.onnx")
            else:
                from evospec.exporters.tensorrt_build import build_engine

                path = build_engine(source, folder / f"{stage}.engine", tensorrt_profiles(stage, ctx),
                                    fp16=ctx.settings.precision == "fp16")
            ctx.files[f"{backend}/{stage}"] = relative(ctx, path)
            built.append(path.name)
        return PassResult(True, f"{backend}: built {', '.join(built)}")
