"""Pass 8: put the drafter's own checkpoint in the bundle and fingerprint every artefact.

The bundle carries a copy of the drafter (official layout): the torch backend runs from it, and
every backend takes d2t/t2d (and the drafter's own embeddings, if it has them) from it. Sizes
and sha256 of all files go into the manifest, so a truncated or swapped file is caught at load.
"""

from __future__ import annotations

from evospec.passes.base import CompileContext, CompilePass, PassResult, condition, ensure_artefacts, relative
from evospec.runtime.checkpoint import save_drafter
from evospec.runtime.files import fingerprint


class Finalise(CompilePass):
    name = "finalise"
    reads = ('drafter', 'reservoir')

    def ensures(self, ctx: CompileContext) -> None:
        ensure_artefacts(ctx, ["drafter"] + (["reservoir"] if ctx.settings.backend == "torch" else []))
        condition(bool(ctx.manifest.get("files")), "ensures every bundle file is fingerprinted in the manifest")

    def call(self, ctx: CompileContext) -> PassResult:
        save_drafter(ctx.drafter, ctx.work / "drafter")
        ctx.files["drafter"] = "drafter"
        if ctx.settings.backend == "torch":  # the other backends carry the reservoir inside head.onnx
            from safetensors.torch import save_file

            save_file({"reservoir": ctx.reservoir.contiguous()}, str(ctx.work / "reservoir.safetensors"))
            ctx.files["reservoir"] = "reservoir.safetensors"
        files = sorted(p for p in ctx.work.rglob("*") if p.is_file() and p.name != "manifest.json")
        ctx.manifest["files"] = {relative(ctx, p): fingerprint(p) for p in files}
        ctx.manifest["artefacts"] = dict(ctx.files)
        total = sum(v["bytes"] for v in ctx.manifest["files"].values())
        return PassResult(True, f"{len(files)} files, {total / 2**20:.1f} MiB")
