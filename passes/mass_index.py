"""Pass: the mass index (k-means clusters of the reservoir rows, ``runtime/vocab/mass_index.py``).

Built at compile time because k-means over 150k rows takes tens of seconds; the runtime only loads
it. The manifest records the build time and what the index buys on real drafter states (the head
inputs of the recorded feeds): the share of the full head's softmax mass inside the rows of the
clusters it ranks first, cut at the smallest bucket, against as many of the drafter's own rows.
"""

from __future__ import annotations

import time

import torch

from evospec.passes.base import CompileContext, CompilePass, PassResult, ensure_artefacts
from evospec.passes.feeds import recorded_feeds
from evospec.runtime.vocab.mass_fill import MassFill
from evospec.runtime.vocab.mass_index import MASS_FILE, MassIndex


class BuildMassIndex(CompilePass):
    name = "mass_index"
    reads = ("reservoir", "drafter")

    def ensures(self, ctx: CompileContext) -> None:
        if ctx.settings.mass_clusters:
            ensure_artefacts(ctx, ["mass_index"])

    def call(self, ctx: CompileContext) -> PassResult:
        clusters = min(ctx.settings.mass_clusters, ctx.reservoir.shape[0])
        if clusters == 0:
            return PassResult(False, "mass index off (mass_clusters = 0): evospec:K fills its tail by frequency")
        start = time.perf_counter()
        index = MassIndex.build(ctx.reservoir, clusters)
        build_s = time.perf_counter() - start
        (ctx.work / "index").mkdir(exist_ok=True)
        index.save(ctx.work / MASS_FILE)
        ctx.files["mass_index"] = MASS_FILE

        rows = ctx.reservoir.float()
        size = min(ctx.manifest["gather"]["buckets"][0], rows.shape[0])
        states = torch.cat([f["normed"] for f in recorded_feeds(ctx, 2)["head"]]).float()
        probs = torch.softmax(states @ rows.T, dim=-1)
        none = torch.zeros(0, dtype=torch.long)  # no core, nothing kept: the clusters alone fill the set
        fill = MassFill(index, none, torch.arange(rows.shape[0]))
        routed = sum(float(p[fill.ids(h, none, size)].sum()) for h, p in zip(states, probs)) / len(states)
        baseline = ctx.draft_vocab_ids[:size]
        drafter_rows = float(probs[:, baseline].sum(-1).mean())
        report = {"clusters": clusters, "rows": int(rows.shape[0]), "build_s": round(build_s, 3), "queries": len(states),
                  "set_size": size, "drafter_mass_routed": routed, "drafter_mass_drafter_rows": drafter_rows,
                  "files": [MASS_FILE]}
        ctx.manifest["mass_index"] = report
        return PassResult(True, f"{rows.shape[0]} rows in {clusters} clusters, {build_s:.1f} s; the drafter's mass in "
                                f"{size} routed rows {routed:.2f} (in {size} of its own rows {drafter_rows:.2f})")
