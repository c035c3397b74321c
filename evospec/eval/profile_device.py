"""`evospec profile stages --device cuda`: the LM-head stage on a GPU against the memory-bandwidth floor.

At a production shape (random weights; default llama3-8b: d=4096, |V|=128,256) and for each
active size and number of hidden-state rows, one run times: the full-vocabulary head, torch
gather + matmul, torch on rows already gathered (the resident head), the fused Triton kernel
(gather + matmul + top-k + log-sum-exp), and the floor: the bytes of the active rows divided by
the device's measured copy bandwidth. GPU times come from CUDA-graph replays (launches removed,
as the runtime's per-bucket graphs do) and, for the fused kernel, eagerly too. Then a whole draft
step (trunk + retrieval of the next active set + fused head) serial and with the retrieval's
host work and id upload overlapped with the trunk on a second stream.

On CPU the same code runs with the host clock (the fused kernel only under TRITON_INTERPRET=1,
where its times mean nothing): that is how the tests exercise it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from evospec.core.errors import SettingsError
from evospec.core.text_table import text_table
from evospec.eval.device_timing import copy_bandwidth, time_eager, time_graphed
from evospec.eval.profile_stages import SYNTHETIC_SHAPES, synthetic_drafter
from evospec.runtime.stages import TrunkStage

HIDDEN_ROWS = (1, 8, 16)
TOP_K = 8


@dataclass
class DeviceRow:
    stage: str  # floor | head_full | torch_gather_matmul | torch_pregathered | fused | step_serial | step_overlap
    active_size: int
    hidden_rows: int
    median_ms: float
    p90_ms: float
    timing: str  # graphed | eager | host clock | bandwidth
    device: str


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError("--device cuda: torch sees no CUDA device (torch.cuda.is_available() is False)")
    return device


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def fused_available(device: torch.device) -> bool:
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def profile_device_heads(shape_name: str, device: torch.device, buckets: tuple[int, ...],
                         hidden_rows: tuple[int, ...] = HIDDEN_ROWS, dtype: torch.dtype | None = None,
                         runs: int = 50, warmup: int = 5, progress: Callable[[str], None] | None = None) -> list[DeviceRow]:

    if shape_name not in SYNTHETIC_SHAPES:
        raise SettingsError(f"no synthetic shape {shape_name!r}; known: {sorted(SYNTHETIC_SHAPES)}")
    report = progress or (lambda what: None)
    cuda = device.type == "cuda"
    dtype = dtype or (torch.bfloat16 if cuda else torch.float32)
    shape = SYNTHETIC_SHAPES[shape_name]
    d, vocab = shape["hidden_size"], shape["vocab_size"]
    g = torch.Generator().manual_seed(0)
    report("allocating the reservoir")
    rows = (torch.randn(vocab, d, generator=g) * 0.02).to(device, dtype)
    report("measuring copy bandwidth")
    bandwidth = copy_bandwidth(device, nbytes=(1 << 30) if cuda else (1 << 26))
    name = device_name(device)
    timer = (lambda fn: time_graphed(fn, device, runs, warmup)) if cuda else (lambda fn: time_eager(fn, device, runs, warmup))
    timing = "graphed" if cuda else "host clock"
    fused = fused_available(device)
    if fused:
        from evospec.runtime.kernels.gathered_head import gathered_head_topk
    out: list[DeviceRow] = [DeviceRow("copy_bandwidth_GBps", 0, 0, bandwidth / 1e9, bandwidth / 1e9, "bandwidth", name)]

    def add(stage: str, size: int, n: int, fn: Callable[[], object], how: Callable = timer, label: str = timing) -> None:
        report(f"{stage} active={size} rows={n}")
        median, p90 = how(fn)
        out.append(DeviceRow(stage, size, n, median, p90, label, name))

    for n in hidden_rows:
        hidden = torch.randn(n, d, generator=g).to(device, dtype)
        add("head_full", vocab, n, lambda: F.linear(hidden, rows))
        for size in (b for b in buckets if b <= vocab):
            ids = torch.randperm(vocab, generator=g)[:size].to(device)
            bias = torch.zeros(size, device=device)
            floor_ms = 1e3 * size * d * rows.element_size() / bandwidth
            out.append(DeviceRow("floor", size, n, floor_ms, floor_ms, "bandwidth", name))
            add("torch_gather_matmul", size, n, lambda: F.linear(hidden, rows.index_select(0, ids)))
            resident = rows.index_select(0, ids)
            add("torch_pregathered", size, n, lambda: F.linear(hidden, resident))
            if fused:
                call = lambda: gathered_head_topk(hidden, rows, ids, TOP_K, bias=bias)  # noqa: E731
                add("fused", size, n, call)
                if cuda:
                    add("fused", size, n, call, lambda fn: time_eager(fn, device, runs, warmup), "eager")
    return out


def profile_device_step(shape_name: str, device: torch.device, active: int = 16384, n: int = 8, context: int = 512,
                        runs: int = 30, warmup: int = 3, progress: Callable[[str], None] | None = None) -> list[DeviceRow]:
    """One draft step, serial and overlapped: trunk, retrieval of the next active set, fused head.

    Retrieval here is host work of the size the policies do (a top-``active`` over |V| scores)
    plus the upload of the ids through pinned memory. Overlapped: the trunk is enqueued first,
    the host retrieves while the GPU runs it, the ids go up on a second stream and the head waits
    on that stream's event; the only host synchronisation is at the end of the step.
    """
    from evospec.runtime.kernels.gathered_head import gathered_head_topk

    if device.type != "cuda":
        raise SettingsError("the overlapped draft step needs CUDA streams (--device cuda)")
    report = progress or (lambda what: None)
    report("building the synthetic trunk")
    drafter, rows = synthetic_drafter(shape_name)
    dtype = torch.bfloat16
    trunk = TrunkStage(drafter).to(device, dtype).eval()
    rows = rows.to(device, dtype)
    c, vocab = drafter.config, rows.shape[0]
    kv = (1, c.num_key_value_heads, context, c.head_dim)
    feeds = (torch.randn(1, n, c.hidden_size, device=device, dtype=dtype),
             torch.randn(1, n, c.hidden_size, device=device, dtype=dtype),
             torch.arange(context, context + n, device=device)[None], torch.randn(kv, device=device, dtype=dtype),
             torch.randn(kv, device=device, dtype=dtype),
             torch.ones(n, context + n, dtype=torch.bool, device=device).tril(context))
    scores = torch.randn(vocab)
    pinned = torch.empty(active, dtype=torch.long).pin_memory()
    ids = torch.randperm(vocab)[:active].to(device)
    side, uploaded = torch.cuda.Stream(device), torch.cuda.Event()
    main = torch.cuda.current_stream(device)

    def retrieve() -> None:
        scores.add_(1e-3)  # the scores move step to step, as the evidence does
        pinned.copy_(scores.topk(active).indices)

    @torch.no_grad()
    def serial() -> None:
        retrieve()
        ids.copy_(pinned, non_blocking=True)
        normed = trunk(*feeds)[1]
        gathered_head_topk(normed[0], rows, ids, TOP_K)
        torch.cuda.synchronize(device)

    @torch.no_grad()
    def overlapped() -> None:
        normed = trunk(*feeds)[1]  # enqueued: the GPU runs it while the host retrieves
        retrieve()
        with torch.cuda.stream(side):
            ids.copy_(pinned, non_blocking=True)
            uploaded.record(side)
        main.wait_event(uploaded)
        gathered_head_topk(normed[0], rows, ids, TOP_K)
        torch.cuda.synchronize(device)

    name, out = device_name(device), []
    for stage, fn in (("step_serial", serial), ("step_overlap", overlapped)):
        report(stage)
        median, p90 = time_eager(fn, torch.device("cpu"), runs, warmup)  # host clock: the step ends in a sync
        out.append(DeviceRow(stage, active, n, median, p90, "host clock", name))
    return out


def device_table(rows: list[DeviceRow]) -> str:
    """One line per (active size, hidden rows): each head variant's median ms and the fused kernel vs the floor."""
    cell = {(r.stage, r.active_size, r.hidden_rows, r.timing): r.median_ms for r in rows}
    full = {r.hidden_rows: r.median_ms for r in rows if r.stage == "head_full"}
    timing = next((r.timing for r in rows if r.stage == "head_full"), "graphed")
    header = ("active", "rows", "floor ms", "full head", "torch gather+matmul", "torch pre-gathered", "fused",
              "fused eager", "fused / floor")
    keys = sorted({(r.active_size, r.hidden_rows) for r in rows if r.stage == "floor"})
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    lines = []
    for size, n in keys:
        floor, fused = cell.get(("floor", size, n, "bandwidth")), cell.get(("fused", size, n, timing))
        lines.append((size, n, fmt(floor), fmt(full.get(n)), fmt(cell.get(("torch_gather_matmul", size, n, timing))),
                      fmt(cell.get(("torch_pregathered", size, n, timing))), fmt(fused),
                      fmt(cell.get(("fused", size, n, "eager"))), f"{fused / floor:.2f}x" if fused and floor else "-"))
    table = text_table(header, lines)
    extra = [f"{r.stage}: {r.median_ms:.3f} ms (p90 {r.p90_ms:.3f}), active {r.active_size}, rows {r.hidden_rows}"
             for r in rows if r.stage.startswith("step_")]
    bandwidth = next((r.median_ms for r in rows if r.stage == "copy_bandwidth_GBps"), None)
    device = rows[0].device if rows else "?"
    head = f"device: {device}; copy bandwidth {bandwidth:.0f} GB/s; head times: {timing}" if bandwidth else ""
    return "\n".join([head, table, *extra])


def device_json(rows: list[DeviceRow]) -> list[dict]:
    return [asdict(r) for r in rows]
