"""ONNX Runtime "build": let ORT optimise a graph once and save the optimised model into the bundle."""

from __future__ import annotations

from pathlib import Path

from evospec.core.errors import CompileError


def build_ort(onnx_path: Path, out_path: Path, providers: list[str] | None = None) -> Path:
    try:
        import onnxruntime as ort
    except ImportError:
        raise CompileError("backend 'ort' needs onnxruntime: pip install 'evospec[onnx]'") from None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(out_path)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", out_path.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    try:
        ort.InferenceSession(str(onnx_path), options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # ORT's own exception types; name the graph
        raise CompileError(f"ONNX Runtime cannot build {onnx_path.name}: {type(exc).__name__}: {exc}") from None
    return out_path
