"""`evospec doctor`: what this machine can run (backends, devices), and why a missing one is missing."""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version


def _module(name: str, dists: tuple[str, ...], extra: str) -> tuple[object | None, str]:
    try:
        module = import_module(name)
    except ImportError as exc:
        return None, f"not importable ({exc}); install with pip install '{extra}'"
    for dist in dists:
        try:
            return module, f"{dist} {version(dist)}"
        except PackageNotFoundError:
            continue
    return module, getattr(module, "__version__", "unknown version")


def doctor_rows() -> list[dict]:
    rows = []
    torch, detail = _module("torch", ("torch",), "torch")
    rows.append({"component": "torch", "available": torch is not None, "detail": detail})
    if torch is not None:
        if torch.cuda.is_available():
            names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
            rows.append({"component": "cuda", "available": True, "detail": f"CUDA {torch.version.cuda}: {names}"})
        else:
            why = "this torch is a CPU build" if torch.version.cuda is None else "no CUDA device or driver visible"
            rows.append({"component": "cuda", "available": False, "detail": why})
    ort, detail = _module("onnxruntime", ("onnxruntime", "onnxruntime-gpu"), "evospec[onnx]")
    rows.append({"component": "onnxruntime", "available": ort is not None,
                 "detail": detail if ort is None else f"{detail}; providers: {', '.join(ort.get_available_providers())}"})
    for name, dist, extra in (("onnx", "onnx", "evospec[onnx]"), ("tensorrt", "tensorrt", "evospec[tensorrt]"),
                              ("polygraphy", "polygraphy", "evospec[tensorrt]"), ("usearch", "usearch", "usearch"),
                              ("triton", "triton", "evospec[gpu]")):
        module, detail = _module(name, (dist,), extra)
        rows.append({"component": name, "available": module is not None, "detail": detail})
    return rows
