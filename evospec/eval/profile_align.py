"""`evospec profile align`: acceptance over topic-switch streams with each alignment method.

Each method gets a fresh copy of the bundle's drafter and walks the same topic-switch streams
(general -> code -> law -> medicine): every ``chunk`` tokens the stream so far (its last
``context`` tokens) is the prompt and ``chunk`` tokens are generated, so the context follows the
stream's topics while the drafter is judged on the target's own continuations. Alignment state
carries over from call to call. Rows: mean accepted length per segment, tokens needed after each
switch until a moving average over 8 verification steps reaches the unaligned drafter's (`none`)
mean in that segment of that stream (recovery; a method's own mean if `none` is not measured),
update latency (the arithmetic, and the decoding thread's share per cycle), and the memory the
method adds (its buffers, trainable copies, optimiser state and gradients, summed over the
tensors it allocated), also as a ratio to ``osd`` (standard online distillation of the drafter
as it is) and, when measured, to ``osd-reservoir`` (the same over every reservoir row).

Methods: ``evospec.runtime.align.methods``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from evospec.bundle.compile import compile_in_memory
from evospec.core.errors import SettingsError
from evospec.core.plotting import pyplot, save_figure
from evospec.core.settings import DecodeSettings
from evospec.core.text_table import text_table
from evospec.data.corpus import CorpusError, read_documents, switch_segment_tokens
from evospec.runtime.align.methods import make_aligner, parse_method
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.stats import mean_tokens_per_step

SMOOTH = 8  # verification steps in the moving average that recovery is judged on


@dataclass
class AlignRow:
    method: str
    alignment_bytes: int
    mean_accepted_length: float
    recovery_tokens: float
    segment_accepted_length: list[float]
    updates: int
    rollbacks: int
    update_ms: float  # arithmetic per update, wherever it ran
    decode_thread_ms: float  # per verification cycle, spent by the decoding thread in the aligner
    recovery_level: str  # whose segment means recovery is judged against: "none" (the unaligned drafter) or "own"
    curve: list[tuple[int, float]] = field(default_factory=list)  # (stream position, tokens of that step)


def moving_mean(values: list[float], window: int) -> list[float]:
    """Mean of the last ``window`` values at each index (fewer at the start)."""
    return [sum(values[max(0, i - window + 1) : i + 1]) / min(i + 1, window) for i in range(len(values))]


def segment_levels(curve: list[tuple[int, float]], segment: int) -> dict[int, float]:
    """Mean tokens per step in each segment of one stream's step curve."""
    by: dict[int, list[float]] = {}
    for pos, tau in curve:
        by.setdefault(pos // segment, []).append(tau)
    return {k: sum(v) / len(v) for k, v in by.items()}


def recovery(curve: list[tuple[int, float]], segment: int, levels: dict[int, float] | None = None) -> float:
    """Mean over the switches of one stream of the tokens after a switch until the moving average of
    ``SMOOTH`` verification steps reaches the segment's reference level: ``levels`` (the unaligned
    drafter's mean there, so every method is held to the same bar) or else the curve's own mean.
    A method that never reaches it waits the whole segment."""
    own = segment_levels(curve, segment)
    waits = []
    for k in sorted(own)[1:]:
        inside = [(pos, tau) for pos, tau in curve if pos // segment == k]
        level = (levels or own).get(k, own[k])
        smooth = moving_mean([t for _, t in inside], SMOOTH)
        reached = (pos for (pos, _), mean in zip(inside, smooth) if mean >= level)
        waits.append(next(reached, (k + 1) * segment) - k * segment)
    return sum(waits) / max(len(waits), 1)


def run_profile_align(bundle: str | None, target: str, corpus: str, methods: list[str], streams: int = 2,
                      chunk: int = 32, context: int = 192, progress: Callable[[str], None] | None = None,
                      drafter: str | None = None) -> list[AlignRow]:
    """``bundle`` (an ort or torch bundle) or ``drafter`` (an EAGLE-3 checkpoint, staged in memory)."""

    if (bundle is None) == (drafter is None):
        raise SettingsError("profile align needs exactly one of a bundle or a drafter checkpoint")
    for method in methods:
        parse_method(method)
    segment = switch_segment_tokens(corpus, "switch")
    if segment is None:
        raise CorpusError(f"{corpus} has no topic-switch streams (`evospec data build` writes them under switch/)")
    rows, reference = [], None  # reference: the `none` run's segment levels per stream, when it is measured
    order = sorted(methods, key=lambda m: m != "none")  # `none` first: the others' recovery is judged against it
    for method in order:
        # a fresh drafter per method
        generator = (SpeculativeGenerator.from_bundle(bundle, target) if bundle is not None
                     else compile_in_memory(target, drafter))
        if generator.drafter.reservoir is None:
            raise SettingsError(f"{bundle}: profile align needs an ort or torch bundle (host reservoir rows)")
        aligner = generator.aligner = make_aligner(method, generator.drafter)
        curve, waits, cycles, levels = [], [], 0, []
        for s, doc in enumerate(read_documents(corpus, "switch", "test")[:streams]):
            ids = generator.encode(doc)
            stream_curve = []
            for pos in range(chunk, len(ids) - chunk + 1, chunk):
                result = generator.generate(ids[max(0, pos - context) : pos], DecodeSettings(max_new_tokens=chunk))
                at = pos + 1  # the prefill commits one token; each step then commits accepted + 1
                for emitted in result.stats.step_tokens:  # tokens the caller got at each step
                    stream_curve.append((at, float(emitted)))
                    at += emitted
                cycles += result.stats.steps
            waits.append(recovery(stream_curve, segment, None if reference is None else reference[s]))
            if method == "none":
                levels.append(segment_levels(stream_curve, segment))
            curve += stream_curve
            if progress is not None:
                progress(f"{method}: stream {s + 1}/{streams}")
        if hasattr(aligner, "close"):
            aligner.close()
        updates = 0 if aligner is None else aligner.updates
        rows.append(AlignRow(
            method=method, alignment_bytes=0 if aligner is None else aligner.nbytes,
            mean_accepted_length=mean_tokens_per_step(t for _, t in curve),
            recovery_tokens=sum(waits) / max(len(waits), 1),
            segment_accepted_length=[v for _, v in sorted(segment_levels(curve, segment).items())],
            updates=updates, rollbacks=0 if aligner is None else aligner.rollbacks,
            update_ms=1e3 * aligner.update_seconds / updates if updates else 0.0,
            decode_thread_ms=1e3 * aligner.blocking_seconds / cycles if aligner is not None and cycles else 0.0,
            recovery_level="none" if reference is not None or method == "none" else "own", curve=curve))
        if method == "none":
            reference = levels
    return sorted(rows, key=lambda r: methods.index(r.method))


def memory_base(rows: list[AlignRow], method: str) -> int:
    """Bytes ``method`` added (its first run, at whatever learning rate), or 0 if it was not measured."""
    return next((r.alignment_bytes for r in rows if r.method.partition(":")[0] == method), 0)


def ratio(value: int, base: int) -> str:
    return f"{value / base:.3f}x" if base else "-"


def align_table(rows: list[AlignRow]) -> str:
    base, reservoir = memory_base(rows, "osd"), memory_base(rows, "osd-reservoir")
    header = ("method", "alignment MiB", "vs osd", *(("vs osd-reservoir",) if reservoir else ()), "tau",
              "tau per segment", "recovery tokens", "updates", "rollbacks", "ms/update", "decode-thread ms/cycle")
    return text_table(header, [(r.method, f"{r.alignment_bytes / 2**20:.2f}", ratio(r.alignment_bytes, base),
                                *((ratio(r.alignment_bytes, reservoir),) if reservoir else ()),
                                f"{r.mean_accepted_length:.2f}",
                                " ".join(f"{t:.2f}" for t in r.segment_accepted_length), f"{r.recovery_tokens:.0f}",
                                r.updates, r.rollbacks, f"{r.update_ms:.2f}", f"{r.decode_thread_ms:.2f}")
                               for r in rows])


def align_json(rows: list[AlignRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def align_plot(rows: list[AlignRow], path) -> None:
    fig, ax = pyplot().subplots(figsize=(10, 4))
    for r in rows:
        smooth = moving_mean([t for _, t in r.curve], 32)
        ax.plot(range(len(smooth)), smooth, label=r.method, linewidth=1)
    ax.set_xlabel("verification step along the topic-switch streams")
    ax.set_ylabel("tokens per step (moving mean of 32)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
