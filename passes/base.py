"""The pass machinery: a pass takes the compile context, changes it, and says what it changed.

Modelled on ONNX IR's passes: each pass is a small ``CompilePass`` with a name; calling it checks
``requires`` (what it reads is there and well formed), runs ``call`` and checks ``ensures`` (what it
promised to write is there, with the shapes later passes rely on). ``run_passes`` runs an ordered
list, times each pass into the manifest, and turns any failure, a broken condition included, into a
``CompileError`` that names the failing pass and those that ran.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from evospec.core.errors import CompileError, EvoSpecError, SettingsError
from evospec.runtime.drafter import TAP_NUMBERINGS, Eagle3Drafter
from evospec.runtime.target import TargetModel


@dataclass(frozen=True)
class CompileSettings:
    """Attributes:
    backend: ``ort`` (ONNX Runtime), ``tensorrt`` or ``torch`` (no engine build).
    buckets: Active-set sizes the LM-head stage is built for (ascending); the smallest bucket
        that holds the active set is used, padded with rows that can never be selected.
    precision: ``fp32`` or ``fp16`` weights/activations in the built engines.
    opset: ONNX opset of the exported graphs.
    parity_feeds: Recorded feeds per stage for the parity check.
    index_dims: Dimensions of the semantic index's projection (0: no semantic index).
    mass_clusters: Clusters of the mass index (``runtime/vocab/mass_index.py``; 0: none).
    frequencies: A token-frequency file (``evospec vocab frequencies``) to carry in the bundle.
    tap_numbering: How the drafter's config counts its taps: ``input`` (EAGLE, vLLM) or ``output``
        (SGLang, SpecForge). The bundle's drafter copy is written in ``input`` numbering.
    """

    backend: str = "ort"
    buckets: tuple[int, ...] = (4096, 8192, 16384, 32768)
    precision: str = "fp32"
    opset: int = 18
    parity_feeds: int = 3
    index_dims: int = 64
    mass_clusters: int = 2048
    frequencies: str | None = None
    tap_numbering: str = "input"
    max_context: int = 4096  # TensorRT profiles: longest drafter cache
    max_draft_tokens: int = 512  # TensorRT profiles: most tokens in one trunk call (prefill chunk or tree level)

    def __post_init__(self) -> None:
        if self.backend not in ("ort", "tensorrt", "torch"):
            raise SettingsError(f"backend must be ort, tensorrt or torch (got {self.backend!r})")
        if self.precision not in ("fp32", "fp16"):
            raise SettingsError(f"precision must be fp32 or fp16 (got {self.precision!r})")
        if not self.buckets or any(b < 1 for b in self.buckets) or list(self.buckets) != sorted(set(self.buckets)):
            raise SettingsError(f"buckets must be ascending positive sizes (got {self.buckets})")
        if self.tap_numbering not in TAP_NUMBERINGS:
            raise SettingsError(f"tap_numbering must be one of {', '.join(TAP_NUMBERINGS)} (got {self.tap_numbering!r})")
        if self.mass_clusters < 0:
            raise SettingsError(f"mass_clusters must be >= 0 (0: no mass index; got {self.mass_clusters})")
        if self.index_dims < 0:
            raise SettingsError(f"index_dims must be >= 0 (0: no semantic index; got {self.index_dims})")


@dataclass
class CompileContext:
    """Everything passes read and write. ``work`` is the bundle's temporary directory."""

    target_dir: Path
    drafter_dir: Path
    work: Path
    settings: CompileSettings
    target: TargetModel | None = None  # set by validate_inputs
    drafter: Eagle3Drafter | None = None  # set by validate_inputs
    stages: dict[str, nn.Module] = field(default_factory=dict)  # name -> torch module (split, reservoir)
    reservoir: torch.Tensor | None = None  # [V, d] float, set by reservoir
    draft_vocab_ids: torch.Tensor | None = None  # [Vd] target ids of the drafter's own head rows, set by reservoir
    files: dict[str, str] = field(default_factory=dict)  # artefact name -> path relative to work
    manifest: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PassResult:
    changed: bool
    summary: str


class Pass(Protocol):
    name: str

    def __call__(self, ctx: CompileContext) -> PassResult: ...


def condition(holds: bool, message: str) -> None:
    """One requires/ensures condition: a broken one stops the compile with ``message``."""
    if not holds:
        raise CompileError(message)


class CompilePass:
    """Base of the compile passes: ``reads`` names the context fields the pass needs set (checked by
    ``requires``, which a pass may extend); ``ensures`` checks what it wrote; ``call`` does the work."""

    name: str = "pass"
    reads: tuple[str, ...] = ()

    def requires(self, ctx: CompileContext) -> None:
        for name in self.reads:
            value = getattr(ctx, name)
            condition(value is not None and not (isinstance(value, dict) and not value),
                      f"requires ctx.{name}, which no earlier pass set (check the pass order in pipeline.py)")

    def ensures(self, ctx: CompileContext) -> None:
        pass

    def call(self, ctx: CompileContext) -> PassResult:
        raise NotImplementedError

    def __call__(self, ctx: CompileContext) -> PassResult:
        self.requires(ctx)
        result = self.call(ctx)
        self.ensures(ctx)
        return result


def ensure_artefacts(ctx: CompileContext, names: list[str]) -> None:
    """Each named artefact is recorded in ``ctx.files`` and exists in the bundle's work directory."""
    for name in names:
        condition(name in ctx.files and (ctx.work / ctx.files[name]).exists(),
                  f"ensures artefact {name!r} is written (files: {sorted(ctx.files)})")


def run_passes(
    passes: Sequence[Pass], ctx: CompileContext, on_pass: Callable[[str, int, int], None] | None = None
) -> list[dict[str, Any]]:
    """Run ``passes`` in order; returns (and stores in the manifest) one record per pass."""
    records: list[dict[str, Any]] = []
    ctx.manifest["passes"] = records
    for index, compile_pass in enumerate(passes):
        if on_pass is not None:
            on_pass(compile_pass.name, index, len(passes))
        start = time.perf_counter()
        try:
            result = compile_pass(ctx)
        except Exception as exc:  # any failure: name the pass and what already ran
            ran = [r["name"] for r in records] or "none"
            detail = str(exc) if isinstance(exc, EvoSpecError) else f"{type(exc).__name__}: {exc}"
            raise CompileError(f"pass '{compile_pass.name}' failed: {detail} (passes that ran: {ran})") from exc
        records.append({"name": compile_pass.name, "changed": result.changed, "summary": result.summary,
                        "seconds": round(time.perf_counter() - start, 3)})
    return records


def relative(ctx: CompileContext, path: Path) -> str:
    return str(Path(path).relative_to(ctx.work))
