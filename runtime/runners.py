"""One small runner interface over torch modules, ONNX Runtime sessions and TensorRT engines.

Polygraphy's pattern: a runner is activated once (sessions and contexts are created lazily, so
building a bundle's runners costs nothing until used), then ``infer`` maps named input tensors
to named output tensors. Every runner takes and returns torch tensors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from evospec.core.errors import BundleError, SettingsError


class Runner(Protocol):
    name: str

    def activate(self) -> None: ...

    def deactivate(self) -> None: ...

    def infer(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class ActivatedRunner:
    """``with runner:`` activates it (sessions, engines, contexts) and releases them on exit."""

    def activate(self) -> None:
        pass

    def deactivate(self) -> None:
        pass

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc_info) -> None:
        self.deactivate()


class TorchRunner(ActivatedRunner):
    """Eager torch: the reference every engine is checked against."""

    def __init__(self, name: str, module: torch.nn.Module, inputs: list[str], outputs: list[str]) -> None:
        self.name, self.module, self.inputs, self.outputs = name, module.eval(), inputs, outputs

    @torch.no_grad()
    def infer(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = self.module(*(feeds[n] for n in self.inputs))
        out = out if isinstance(out, tuple) else (out,)
        return dict(zip(self.outputs, out))


def onnx_initializers(path: Path, keep) -> dict[str, np.ndarray]:
    """Writable, C-ordered copies of the initializers of an ONNX file (external data included) for
    which ``keep(name, array)`` holds."""
    import onnx

    model = onnx.load(str(path), load_external_data=True)
    arrays = ((init.name, onnx.numpy_helper.to_array(init)) for init in model.graph.initializer)
    return {name: np.array(a, copy=True, order="C") for name, a in arrays if keep(name, a)}


def ort_threads() -> int:
    """ONNX Runtime's intra-op threads for a session: ``EVOSPEC_ORT_THREADS``, or 0 (ONNX Runtime's choice)."""
    value = os.environ.get("EVOSPEC_ORT_THREADS", "0")
    if not value.isdigit():
        raise SettingsError(f"EVOSPEC_ORT_THREADS must be a whole number of threads (0: ONNX Runtime's choice), "
                            f"got {value!r}")
    return int(value)


class OrtRunner(ActivatedRunner):
    """An ONNX Runtime session whose float weights live in buffers this runner owns.

    The weights are handed to the session with ``add_initializer`` (prepacking disabled), so
    ``update_weight`` changes them in place, without recreating the session: the path online
    alignment uses to apply drafter updates.
    """

    def __init__(self, name: str, path: Path, providers: list[str] | None = None, bind_weights: bool = True) -> None:
        self.name, self.path, self.providers, self.bind_weights = name, Path(path), providers, bind_weights
        self.session: Any = None
        self.weights: dict[str, np.ndarray] = {}

    def activate(self) -> None:
        if self.session is not None:
            return
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # ONNX Runtime's pool threads spin after each run by default, on the cores torch then needs for the
        # target's verification pass: on a 2-core host that made a verification step 74 ms instead of 9
        # (medium pair, ORT bundle, chain of 5; speculation at 26 instead of 130 tokens/s). No spinning.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # EVOSPEC_ORT_THREADS=1: one intra-op thread, for runs that repeat bit for bit. With two, a kernel's work
        # goes to whichever pool thread is free, and while another thread held a core (the retrieval worker) the
        # medium drafter's states differed in the last bits between runs: at T = 1 one seed then drew another text
        # in 1 of 6 runs, never with one thread (README, issue 18, stop 43); its drafting time was the same.
        options.intra_op_num_threads = ort_threads()
        if self.bind_weights:
            options.add_session_config_entry("session.disable_prepacking", "1")
            floats = onnx_initializers(self.path, lambda name, a: a.dtype in (np.float32, np.float16) and a.size > 1)
            self.weights.update(floats)
            self._values = {n: ort.OrtValue.ortvalue_from_numpy(a) for n, a in self.weights.items()}
            for n, value in self._values.items():
                options.add_initializer(n, value)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers or ["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types; name the file
            raise BundleError(f"{self.path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from None

    def infer(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.activate()
        arrays = {k: v.detach().cpu().numpy() for k, v in feeds.items()}
        outputs = self.session.run(None, arrays)
        names = [o.name for o in self.session.get_outputs()]
        return {n: torch.from_numpy(o) for n, o in zip(names, outputs)}

    def deactivate(self) -> None:
        """Release the session; the weight buffers stay (a later ``activate`` binds them again)."""
        self.session = None

    def update_weight(self, name: str, value: np.ndarray | torch.Tensor, rows: np.ndarray | None = None) -> None:
        """Overwrite a weight (or only ``rows`` of it) in place; the session sees it on its next run.

        ``name`` is the torch parameter name; the export stores some weights transposed (as
        ``name.T``), which is handled here.
        """
        self.activate()
        value = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if name in self.weights:
            target = self.weights[name]
        elif f"{name}.T" in self.weights and rows is None:
            target, value = self.weights[f"{name}.T"], value.T
        else:
            raise KeyError(f"{self.path} has no updatable weight {name!r}; it has {sorted(self.weights)[:8]}")
        if rows is None:
            np.copyto(target, value.astype(target.dtype, copy=False))
        else:
            target[rows] = value.astype(target.dtype, copy=False)
