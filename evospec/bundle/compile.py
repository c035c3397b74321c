"""``evospec compile``: run the pass pipeline into a temporary directory, then rename it into place.

An interrupted or failing compile leaves no bundle (and no half-written one) at ``out``.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable, Sequence
from pathlib import Path

from evospec.core.atomic import atomic_directory
from evospec.passes.base import CompileContext, CompileSettings, Pass, run_passes
from evospec.passes.pipeline import default_passes
from evospec.passes.reservoir import build_reservoir
from evospec.runtime.bundle import BUNDLE_FORMAT
from evospec.runtime.compiled_drafter import eager_compiled
from evospec.runtime.generator import SpeculativeGenerator


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for name in ("evospec", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt", "polygraphy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def compile_bundle(
    target_dir: Path, drafter_dir: Path, out: Path, settings: CompileSettings | None = None,
    passes: Sequence[Pass] | None = None, on_pass: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Compile ``drafter_dir`` (for ``target_dir``) into the bundle ``out``; returns its manifest."""

    settings = settings or CompileSettings()

    with atomic_directory(Path(out)) as work:
        ctx = CompileContext(Path(target_dir), Path(drafter_dir), work, settings)
        ctx.manifest.update(format=BUNDLE_FORMAT, backend=settings.backend, precision=settings.precision,
                            packages=package_versions(), settings={k: getattr(settings, k) for k in settings.__dataclass_fields__})
        run_passes(passes if passes is not None else default_passes(), ctx, on_pass)
        (work / "manifest.json").write_text(json.dumps(ctx.manifest, indent=2, default=list))
    return ctx.manifest


def compile_in_memory(target: str | Path, drafter: str | Path):
    """A target + drafter pair drafting through in-memory torch stages over a full-vocabulary reservoir
    (what `evospec compile --backend torch` would write), for ``--target --drafter`` without a bundle."""
    plain = SpeculativeGenerator.from_paths(target, drafter)
    d = plain.drafter
    vocab_ids = d.draft_vocab_target_ids().cpu()
    head = plain.target.model.get_output_embeddings().weight.detach().float().cpu()[: d.config.vocab_size]
    reservoir, _ = build_reservoir(head, d.lm_head.weight.detach().cpu(), vocab_ids)
    buckets = tuple(sorted({d.config.draft_vocab_size, d.config.vocab_size}))
    return SpeculativeGenerator(plain.target, eager_compiled(d.float(), reservoir, buckets))
