"""TensorRT runner: a thin layer over Polygraphy's ``TrtRunner`` (engine loading, bindings, profiles).

Head engines hold one optimisation profile per bucket; ``buckets`` lets the runner switch to
the profile of the active-set size it is fed. Needs TensorRT, Polygraphy and a CUDA GPU; the
bundle loader checks for them before building one of these.
"""

from __future__ import annotations

from pathlib import Path

import torch

from evospec.core.errors import BundleError
from evospec.runtime.runners import ActivatedRunner


def bucket_profile(buckets: tuple[int, ...], feeds: dict[str, torch.Tensor]) -> int | None:
    """The optimisation profile of the bucket a head call is fed, or None for a stage without buckets.

    Both head engines (``head`` takes ``active`` ids, ``head_active`` takes gathered ``rows``) take a
    ``bias`` of the bucket's size, so the bucket is read from it.
    """
    if "bias" not in feeds:
        return None
    size = int(feeds["bias"].numel())
    if size not in buckets:
        raise BundleError(f"a head call of {size} rows matches no engine profile (buckets {list(buckets)})")
    return buckets.index(size)


class TrtRunner(ActivatedRunner):
    def __init__(self, name: str, path: Path, buckets: tuple[int, ...] | None = None) -> None:
        self.name, self.path, self.buckets = name, Path(path), buckets
        self._runner = None
        self._engine = None
        self._profile = 0

    def activate(self) -> None:
        if self._runner is not None:
            return
        from polygraphy.backend.common import BytesFromPath
        from polygraphy.backend.trt import EngineFromBytes
        from polygraphy.backend.trt import TrtRunner as PolygraphyTrtRunner

        self._engine = EngineFromBytes(BytesFromPath(str(self.path)))()
        self._runner = PolygraphyTrtRunner(self._engine, name=self.name)
        self._runner.activate()

    def infer(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.activate()
        profile = None if self.buckets is None else bucket_profile(self.buckets, feeds)
        if profile is not None:
            if profile != self._profile:
                self._runner.set_profile(profile)
                self._profile = profile
        cuda_feeds = {k: v.to("cuda").contiguous() for k, v in feeds.items()}  # torch in -> torch out
        return dict(self._runner.infer(cuda_feeds, copy_outputs_to_host=False))

    def update_weight(self, name: str, value: torch.Tensor) -> None:
        """Refit one weight in place (the engine was built with REFIT); ``name.T`` weights take the transpose."""
        self.activate()
        array = value.detach().float().cpu().numpy()
        try:
            refit_weights(self._engine, {name: array})
        except BundleError:  # not found under its own name: the export stored it transposed
            refit_weights(self._engine, {f"{name}.T": array.T.copy()})

    def deactivate(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None


def refit_weights(engine, weights: dict[str, object]) -> None:
    """Update named weights of a deserialised REFIT engine in place (``trt.Refitter``)."""
    import tensorrt as trt  # present: the bundle loader checked before building a TrtRunner

    refitter = trt.Refitter(engine, trt.Logger(trt.Logger.WARNING))
    for name, array in weights.items():
        if not refitter.set_named_weights(name, trt.Weights(array)):
            raise BundleError(f"TensorRT engine has no refittable weight {name!r}")
    if not refitter.refit_cuda_engine():
        raise BundleError("TensorRT refit failed: some weights were not supplied (see the log)")
