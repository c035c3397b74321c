"""Pass: the semantic index (USearch, inner product) over a projection of the reservoir rows.

Built here, at compile time, because building it takes tens of seconds for 150k rows; the
runtime only loads it. The manifest records the build time and two recalls measured on real
drafter states (the head inputs of the recorded feeds): of the index against an exact search in
the projected space (what approximate search loses) and against the full-width head (what the
projection loses).
"""

from __future__ import annotations

import time

import torch

from evospec.core.errors import CompileError
from evospec.passes.base import CompileContext, CompilePass, PassResult, ensure_artefacts
from evospec.passes.feeds import recorded_feeds
from evospec.runtime.vocab.semantic import INDEX_FILE, PROJECTION_FILE, build_index, projection

RECALL_AT = 64


def recall(found: list[list[int]], exact: torch.Tensor) -> float:
    return sum(len(set(f) & set(e.tolist())) for f, e in zip(found, exact)) / max(1, exact.numel())


class BuildSemanticIndex(CompilePass):
    name = "semantic_index"
    reads = ('reservoir', 'drafter')

    def ensures(self, ctx: CompileContext) -> None:
        if ctx.settings.index_dims:
            ensure_artefacts(ctx, ["semantic_index", "semantic_projection"])

    def call(self, ctx: CompileContext) -> PassResult:
        dims = ctx.settings.index_dims
        if dims == 0:
            return PassResult(False, "semantic index off (index_dims = 0): policy evospec uses its statistical index only")
        try:
            import usearch.index  # noqa: F401
        except ImportError:
            raise CompileError("the semantic index needs usearch: pip install 'evospec[index]', "
                               "or compile with --index-dims 0 to leave it out") from None
        from safetensors.torch import save_file

        rows = ctx.reservoir
        dims = min(dims, rows.shape[1])
        start = time.perf_counter()
        proj = projection(rows, dims)
        index = build_index(rows, proj)
        build_s = time.perf_counter() - start
        (ctx.work / "index").mkdir(exist_ok=True)
        index.save(str(ctx.work / INDEX_FILE))
        save_file({"projection": proj}, str(ctx.work / PROJECTION_FILE))
        ctx.files["semantic_index"], ctx.files["semantic_projection"] = INDEX_FILE, PROJECTION_FILE

        states = torch.cat([f["normed"] for f in recorded_feeds(ctx, 2)["head"]])
        k = min(RECALL_AT, rows.shape[0])
        projected = states @ proj
        found = [[int(x) for x in index.search(q.numpy(), k).keys] for q in projected]
        exact_projected = (projected @ (rows @ proj).T).topk(k, dim=-1).indices
        exact_head = (states @ rows.T).topk(k, dim=-1).indices
        report = {"dims": dims, "rows": int(rows.shape[0]), "metric": "ip", "build_s": round(build_s, 3),
                  "queries": int(states.shape[0]), f"recall_at_{k}_vs_projected": recall(found, exact_projected),
                  f"recall_at_{k}_vs_head": recall(found, exact_head), "files": [INDEX_FILE, PROJECTION_FILE]}
        ctx.manifest["semantic_index"] = report
        return PassResult(True, f"{rows.shape[0]} rows in {dims} dims, {build_s:.1f} s; recall@{k}: "
                                f"{report[f'recall_at_{k}_vs_projected']:.2f} of the projected search, "
                                f"{report[f'recall_at_{k}_vs_head']:.2f} of the full head")
