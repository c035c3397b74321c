"""`evospec profile stages`: time each drafter stage (trunk, head per bucket, full head, gather, top-k).

Runs on a synthetic production shape (random weights: only shapes matter for latency) or on a
compiled bundle's engines. Each stage is timed ``runs`` times after ``warmup`` runs; rows carry
the median and p90 in milliseconds. Ratios are only meaningful within one run on one machine.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from evospec.core.errors import SettingsError
from evospec.core.text_table import text_table
from evospec.eval.device_timing import time_eager
from evospec.exporters.onnx_export import export_stage
from evospec.runtime.active_rows import ActiveRows
from evospec.runtime.bundle import check_backend, check_files, load_reservoir, read_manifest
from evospec.runtime.checkpoint import load_drafter
from evospec.runtime.drafter import EAGLE3_ARCHITECTURE, Eagle3Config, Eagle3Drafter
from evospec.runtime.gather import GatherPlan, make_plan
from evospec.runtime.runners import OrtRunner, TorchRunner
from evospec.runtime.stages import SIGNATURES, ActiveHeadStage, HeadStage, StageSignature, TrunkStage

SYNTHETIC_SHAPES: dict[str, dict[str, int]] = {
    "llama3-8b": dict(hidden_size=4096, target_hidden_size=4096, vocab_size=128256, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=128, intermediate_size=14336),
    "qwen2-7b": dict(hidden_size=3584, target_hidden_size=3584, vocab_size=152064, num_attention_heads=28,
                     num_key_value_heads=4, head_dim=128, intermediate_size=18944),
    "tiny": dict(hidden_size=64, target_hidden_size=64, vocab_size=4096, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, intermediate_size=128),
}


DELTA_COLUMNS = 256  # columns a typical step's plan changes (a quarter of the bucket at most)


@dataclass
class StageRow:
    stage: str
    backend: str
    active_size: int
    median_ms: float
    p90_ms: float
    runs: int


def time_call(fn: Callable[[], object], runs: int, warmup: int) -> tuple[float, float]:
    """Median and p90 milliseconds by the host clock (CPU backends)."""
    return time_eager(fn, torch.device("cpu"), runs, warmup)


class FullHead(torch.nn.Module):
    """The unpruned LM head: logits over every row (what the active set is compared against)."""

    def __init__(self, rows: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("rows", rows)

    def forward(self, normed: torch.Tensor) -> torch.Tensor:
        return normed @ self.rows.T


def synthetic_drafter(name: str):
    if name not in SYNTHETIC_SHAPES:
        raise SettingsError(f"no synthetic shape {name!r}; known: {sorted(SYNTHETIC_SHAPES)}")
    shape = SYNTHETIC_SHAPES[name]
    config = Eagle3Config(rms_norm_eps=1e-5, draft_vocab_size=32, raw={"architectures": [EAGLE3_ARCHITECTURE]}, **shape)
    torch.manual_seed(0)
    embed = torch.nn.Embedding(1, 1)  # unused by the stages: embeddings are gathered outside them
    drafter = Eagle3Drafter(config, has_embeddings=False, shared_embeddings=embed).eval()
    for p in drafter.parameters():
        torch.nn.init.normal_(p, std=0.02)
    rows = torch.randn(shape["vocab_size"], shape["hidden_size"]) * 0.02
    return drafter, rows


@dataclass(frozen=True)
class ProfileShape:
    hidden_size: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int


def measure(runners: dict, shape: ProfileShape, rows: torch.Tensor, buckets: tuple[int, ...], backend: str,
            rows_per_step: int, context: int, runs: int, warmup: int, report: Callable[[str], None]) -> list[StageRow]:
    """Time the runners: ``trunk``, ``head`` and ``head_active`` (per bucket) and ``head_full`` (None: the
    head over all rows). ``delta`` times what the resident head pays when a plan changes ``DELTA_COLUMNS`` columns."""

    t, vocab = rows_per_step, shape.vocab_size
    g = torch.Generator().manual_seed(0)
    kv = (1, shape.num_key_value_heads, context, shape.head_dim)
    trunk_feed = {"hidden": torch.randn(1, t, shape.hidden_size, generator=g),
                  "embeds": torch.randn(1, t, shape.hidden_size, generator=g),
                  "positions": torch.arange(context, context + t)[None], "past_keys": torch.randn(kv, generator=g),
                  "past_values": torch.randn(kv, generator=g), "mask": torch.ones(t, context + t, dtype=torch.bool).tril(context)}
    normed = torch.randn(t, shape.hidden_size, generator=g)
    plans = {b: make_plan(torch.randperm(vocab, generator=g)[:b], (b,)) for b in buckets if b <= vocab}
    result: list[StageRow] = []

    def add(stage: str, size: int, fn: Callable[[], object], where: str = backend) -> None:
        report(f"timing {stage} {size or ''}")
        median, p90 = time_call(fn, runs, warmup)
        result.append(StageRow(stage, where, size, median, p90, runs))

    add("trunk", 0, lambda: runners["trunk"].infer(trunk_feed))
    for b, plan in plans.items():
        feed = {"normed": normed, "active": plan.ids, "bias": plan.bias}
        add("head", b, lambda feed=feed: runners["head"].infer(feed))
    if runners.get("head_active") is not None:
        for b, plan in plans.items():
            feed = {"normed": normed, "rows": rows.index_select(0, plan.ids), "bias": plan.bias}
            add("head_active", b, lambda feed=feed: runners["head_active"].infer(feed))
            del feed
        for b, plan in plans.items():
            other = plan.ids.clone()
            unused = torch.ones(vocab, dtype=torch.bool)
            unused[plan.ids] = False
            changes = min(DELTA_COLUMNS, plan.size // 4)
            other[:changes] = torch.nonzero(unused).flatten()[:changes]
            resident = ActiveRows(rows, plan)
            alternate = itertools.cycle((GatherPlan(ids=other, bias=plan.bias, size=plan.size), plan))
            add("delta", b, lambda r=resident, plans=alternate: r.follow(next(plans)), "torch")
            del resident
    if runners.get("head_full") is not None:
        add("head_full", vocab, lambda: runners["head_full"].infer({"normed": normed}))
    else:  # a bundle has no separate full head: the head stage over every row
        every = {"normed": normed, "active": torch.arange(vocab), "bias": torch.zeros(vocab)}
        add("head_full", vocab, lambda: runners["head"].infer(every))
    for b, plan in plans.items():
        add("gather", b, lambda plan=plan: torch.index_select(rows, 0, plan.ids), "torch")
    if hasattr(runners["head"], "update_weight") and runners["head"].weights:
        # online alignment's path: weights changed in place, the session kept
        changed = torch.randperm(vocab, generator=g)[:1024].numpy()
        fresh = torch.randn(len(changed), shape.hidden_size, generator=g).numpy()
        add("update_head_rows", len(changed), lambda: runners["head"].update_weight("reservoir", fresh, rows=changed))
        trunk_weights = {n: w.copy() for n, w in runners["trunk"].weights.items()}
        add("update_trunk", 0, lambda: [runners["trunk"].update_weight(n, w) for n, w in trunk_weights.items()])
    full_logits = normed @ rows.T
    for b in plans:
        logits = full_logits[:, :b].contiguous()
        add("topk", b, lambda logits=logits: logits.topk(8, dim=-1), "torch")
    add("topk", vocab, lambda: full_logits.topk(8, dim=-1), "torch")
    return result


def profile_synthetic(name: str, backend: str, buckets: tuple[int, ...], rows_per_step: int = 8, context: int = 512,
                      runs: int = 30, warmup: int = 3, progress: Callable[[str], None] | None = None) -> list[StageRow]:
    """Trunk, head per bucket, full head, gather and top-k at a production shape, random weights."""

    report = progress or (lambda what: None)
    report("building random weights")
    drafter, rows = synthetic_drafter(name)
    c = drafter.config
    shape = ProfileShape(c.hidden_size, c.num_key_value_heads, c.head_dim, rows.shape[0])
    modules = {"trunk": (TrunkStage(drafter), SIGNATURES["trunk"]), "head": (HeadStage(rows), SIGNATURES["head"]),
               "head_active": (ActiveHeadStage(), SIGNATURES["head_active"]),
               "head_full": (FullHead(rows), StageSignature(("normed",), ("logits",), ({0: "N"},)))}
    t, context = rows_per_step, 8
    example_plan = make_plan(torch.arange(3), (3,))
    examples = {
        "trunk": (torch.zeros(1, t, c.hidden_size), torch.zeros(1, t, c.hidden_size), torch.arange(context, context + t)[None],
                  torch.zeros(1, c.num_key_value_heads, context, c.head_dim),
                  torch.zeros(1, c.num_key_value_heads, context, c.head_dim),
                  torch.ones(t, context + t, dtype=torch.bool)),
        "head": (torch.zeros(t, c.hidden_size), example_plan.ids, example_plan.bias),
        "head_active": (torch.zeros(t, c.hidden_size), torch.zeros(3, c.hidden_size), example_plan.bias),
        "head_full": (torch.zeros(t, c.hidden_size),),
    }
    with tempfile.TemporaryDirectory(prefix="evospec-profile-") as tmp:
        runners = {}
        for stage, (module, signature) in modules.items():
            if backend == "ort":
                report(f"exporting {stage} to ONNX")
                path = export_stage(module, examples[stage], signature, Path(tmp) / f"{stage}.onnx")
                runners[stage] = OrtRunner(stage, path, bind_weights=stage != "head_full")
            else:
                runners[stage] = TorchRunner(stage, module, list(signature.inputs), list(signature.outputs))
            runners[stage].activate()
        return measure(runners, shape, rows, buckets, backend, rows_per_step, 512, runs, warmup, report)


def profile_bundle(bundle: Path, buckets: tuple[int, ...] | None, rows_per_step: int = 8, context: int = 512,
                   runs: int = 30, warmup: int = 3, progress: Callable[[str], None] | None = None) -> list[StageRow]:
    """The bundle's own engines (ONNX Runtime or torch) at its shapes."""

    manifest = read_manifest(bundle)
    check_files(bundle, manifest)
    backend = manifest["backend"]
    check_backend(bundle, backend)
    if backend == "tensorrt":
        raise SettingsError("profile stages --bundle runs ONNX Runtime and torch bundles; TensorRT profiling is "
                            "not implemented yet")
    s = manifest["shapes"]
    shape = ProfileShape(s["hidden_size"], s["num_key_value_heads"], s["head_dim"], s["vocab_size"])
    if backend == "ort":
        runners = {st: OrtRunner(st, bundle / manifest["artefacts"][f"onnx/{st}"]) for st in ("trunk", "head", "head_active")}
        runners["head"].activate()
        rows = torch.from_numpy(runners["head"].weights["reservoir"])
    else:
        embed = torch.nn.Embedding(s["vocab_size"], s["target_hidden_size"])
        drafter = load_drafter(bundle / "drafter", target_embeddings=embed, target_hidden_size=s["target_hidden_size"],
                               target_vocab_size=s["vocab_size"])
        rows = load_reservoir(bundle)
        runners = {"trunk": TorchRunner("trunk", TrunkStage(drafter), list(SIGNATURES["trunk"].inputs),
                                        list(SIGNATURES["trunk"].outputs)),
                   "head": TorchRunner("head", HeadStage(rows), list(SIGNATURES["head"].inputs), ["logits"]),
                   "head_active": TorchRunner("head_active", ActiveHeadStage(), list(SIGNATURES["head_active"].inputs),
                                              ["logits"])}
    for runner in runners.values():
        runner.activate()
    chosen = tuple(buckets or manifest["gather"]["buckets"])
    return measure(runners, shape, rows, chosen, backend, rows_per_step, context, runs, warmup, progress or (lambda w: None))


HEADS = ("head", "head_active", "head_full")


def rows_table(rows: list[StageRow]) -> str:
    full = next((r.median_ms for r in rows if r.stage == "head_full"), None)
    trunk = next((r.median_ms for r in rows if r.stage == "trunk"), 0.0)
    header = ("stage", "backend", "active", "median ms", "p90 ms", "vs full head", "draft step vs full")
    lines = []
    for r in rows:
        ratio = f"{r.median_ms / full:.2f}x" if full and r.stage in HEADS else "-"
        step = f"{(trunk + r.median_ms) / (trunk + full):.2f}x" if full and r.stage in HEADS else "-"
        lines.append((r.stage, r.backend, str(r.active_size or "-"), f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", ratio, step))
    return text_table(header, lines)


def rows_json(rows: list[StageRow]) -> list[dict]:
    return [asdict(r) for r in rows]
