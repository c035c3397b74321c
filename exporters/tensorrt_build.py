"""TensorRT engine build from ONNX, written against the real ``tensorrt`` Python API.

One optimisation profile per head bucket (min = opt = max = the bucket on the active axis) so
each bucket runs a kernel chosen for its exact size; REFIT is set so online alignment can
update weights in place with ``trt.Refitter``; FP16 when asked. Needs TensorRT and a GPU; the
tests that exercise it skip with a stated reason elsewhere. Never imported unless used.
"""

from __future__ import annotations

from pathlib import Path

from evospec.core.errors import CompileError


def _trt():
    try:
        import tensorrt as trt
    except ImportError:
        raise CompileError("backend 'tensorrt' needs TensorRT: pip install 'evospec[tensorrt]' on a CUDA machine") from None
    return trt


def build_engine(onnx_path: Path, out_path: Path, profiles: list[dict[str, tuple[tuple, tuple, tuple]]],
                 fp16: bool = False, workspace_bytes: int = 4 << 30) -> Path:
    """``profiles``: one dict per profile, input name -> (min, opt, max) shapes."""
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CompileError(f"TensorRT cannot parse {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    config.set_flag(trt.BuilderFlag.REFIT)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in shapes.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise CompileError(f"TensorRT failed to build an engine for {onnx_path.name} (see its log above)")
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(out_path)
    return out_path
