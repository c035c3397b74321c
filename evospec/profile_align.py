"""`evospec profile align`: acceptance over topic-switch streams with each alignment method.

Each method gets a fresh copy of the bundle's drafter and walks the same topic-switch streams
(general -> code -> law -> medicine): every ``chunk`` tokens the stream so far (its last
``context`` tokens) is the prompt and ``chunk`` tokens are generated, so the context follows the
stream's topics while the drafter is judged on the target's own continuations. Alignment state
carries over from call to call. Rows: mean accepted length per segment, tokens needed after each
switch to reach that segment's mean acceptance (recovery), update latency, and the memory the
method adds (its buffers, optimiser state and gradients, summed over the tensors it allocated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from evospec.corpus import CorpusError, read_documents, switch_segment_tokens
from evospec.errors import SettingsError
from evospec.settings import DecodeSettings
from evospec.text_table import text_table

METHODS = ("none", "osd", "evospec", "evospec-nocurriculum")


@dataclass
class AlignRow:
    method: str
    alignment_bytes: int
    mean_accepted_length: float
    recovery_tokens: float
    segment_accepted_length: list[float]
    updates: int
    rollbacks: int
    update_ms: float
    curve: list[tuple[int, float]] = field(default_factory=list)  # (stream position, tau of that chunk)


def make_aligner(method: str, reservoir: torch.Tensor):
    from evospec.runtime.align.dense_head import DenseHeadAligner
    from evospec.runtime.align.head_aligner import AlignSettings, HeadAligner

    if method == "none":
        return None
    if method == "osd":
        return DenseHeadAligner(reservoir)
    if method in ("evospec", "evospec-nocurriculum"):
        return HeadAligner(reservoir, AlignSettings(curriculum=method == "evospec"))
    raise SettingsError(f"unknown alignment method {method!r}; known: {', '.join(METHODS)}")


def recovery(curve: list[tuple[int, float]], segment: int) -> float:
    """Mean over the switches of one stream of the tokens after a switch until a chunk reaches the
    mean tau of that segment."""
    waits = []
    segments = sorted({pos // segment for pos, _ in curve})
    for k in segments[1:]:
        inside = [(pos, tau) for pos, tau in curve if pos // segment == k]
        level = sum(t for _, t in inside) / len(inside)
        waits.append(next((pos - k * segment for pos, tau in inside if tau >= level), segment))
    return sum(waits) / max(len(waits), 1)


def run_profile_align(bundle: str, target: str, corpus: str, methods: list[str], streams: int = 2, chunk: int = 32,
                      context: int = 192, progress: Callable[[str], None] | None = None) -> list[AlignRow]:
    from evospec.runtime.generator import SpeculativeGenerator

    for method in methods:
        if method not in METHODS:
            raise SettingsError(f"unknown alignment method {method!r}; known: {', '.join(METHODS)}")
    segment = switch_segment_tokens(corpus, "switch")
    if segment is None:
        raise CorpusError(f"{corpus} has no topic-switch streams (`evospec data build` writes them under switch/)")
    rows = []
    for method in methods:
        generator = SpeculativeGenerator.from_bundle(bundle, target)  # a fresh drafter per method
        if generator.drafter.reservoir is None:
            raise SettingsError(f"{bundle}: profile align needs an ort or torch bundle (host reservoir rows)")
        aligner = generator.aligner = make_aligner(method, generator.drafter.reservoir)
        curve, waits = [], []
        for s, doc in enumerate(read_documents(corpus, "switch", "test")[:streams]):
            ids = generator.encode(doc)
            stream_curve = []
            for pos in range(chunk, len(ids) - chunk + 1, chunk):
                result = generator.generate(ids[max(0, pos - context) : pos], DecodeSettings(max_new_tokens=chunk))
                stream_curve.append((pos, result.stats.mean_accepted_length))
            waits.append(recovery(stream_curve, segment))
            curve += stream_curve
            if progress is not None:
                progress(f"{method}: stream {s + 1}/{streams}")
        by_segment: dict[int, list[float]] = {}
        for pos, tau in curve:
            by_segment.setdefault(pos // segment, []).append(tau)
        rows.append(AlignRow(
            method=method, alignment_bytes=0 if aligner is None else aligner.nbytes,
            mean_accepted_length=sum(t for _, t in curve) / max(len(curve), 1),
            recovery_tokens=sum(waits) / max(len(waits), 1),
            segment_accepted_length=[sum(v) / len(v) for _, v in sorted(by_segment.items())],
            updates=0 if aligner is None else aligner.updates, rollbacks=0 if aligner is None else aligner.rollbacks,
            update_ms=0.0 if aligner is None or not aligner.updates else 1e3 * aligner.update_seconds / aligner.updates,
            curve=curve))
    return rows


def align_table(rows: list[AlignRow]) -> str:
    base = next((r.alignment_bytes for r in rows if r.method == "osd"), 0)
    header = ("method", "alignment MiB", "vs osd", "tau", "tau per segment", "recovery tokens", "updates", "rollbacks",
              "ms/update")
    return text_table(header, [(r.method, f"{r.alignment_bytes / 2**20:.2f}",
                                f"{r.alignment_bytes / base:.3f}x" if base else "-", f"{r.mean_accepted_length:.2f}",
                                " ".join(f"{t:.2f}" for t in r.segment_accepted_length), f"{r.recovery_tokens:.0f}",
                                r.updates, r.rollbacks, f"{r.update_ms:.2f}") for r in rows])


def align_json(rows: list[AlignRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def align_plot(rows: list[AlignRow], path) -> None:
    from evospec.plotting import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(10, 4))
    for r in rows:
        ax.plot(range(len(r.curve)), [t for _, t in r.curve], label=r.method, linewidth=1)
    ax.set_xlabel("generation call along the topic-switch streams")
    ax.set_ylabel("mean accepted length")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)
