"""Export a stage module to ONNX (torch.export-based exporter), then check it.

Graphs are exported unoptimised so every initializer keeps its torch parameter name (the
names weight updates and TensorRT refits address); ONNX Runtime and TensorRT optimise at build
time anyway. Large weights go to external data beside the graph (protobuf's 2 GB limit).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from evospec.core.errors import CompileError
from evospec.runtime.stages import StageSignature

MAX_DIM = 1 << 20


def export_stage(module: torch.nn.Module, example: tuple[torch.Tensor, ...], signature: StageSignature, path: Path,
                 opset: int = 18, external_data: bool = True) -> Path:
    """Write ``path`` (+ ``path.data`` when weights are external); returns ``path``."""
    import onnx
    from torch.export import Dim

    dims: dict[str, object] = {}
    dynamic_shapes = []
    for axes in signature.dynamic:
        spec = {}
        for axis, name in axes.items():
            if name == "auto":
                spec[axis] = Dim.AUTO
            else:
                spec[axis] = dims.setdefault(name, Dim(name, min=1, max=MAX_DIM))
        dynamic_shapes.append(spec)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=True, input_names=list(signature.inputs),
                          output_names=list(signature.outputs), dynamic_shapes=tuple(dynamic_shapes),
                          opset_version=opset, optimize=False, external_data=external_data, verbose=False)
    fold_weight_transposes(path)
    try:
        onnx.checker.check_model(str(path), full_check=True)  # path form: handles external data
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise CompileError(f"{path}: the exported graph does not pass the ONNX checker: {exc}") from None
    return path


def fold_weight_transposes(path: Path) -> int:
    """Replace ``Transpose(weight)`` by a stored ``<weight>.T`` initializer; returns how many.

    Left in the graph, ONNX Runtime would constant-fold these transposes into private copies at
    session start, and a weight updated in place would never reach the MatMul. Folded here, every
    weight a node reads is an initializer with a predictable name: ``name`` or ``name.T``.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=True)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    folded, keep = 0, []
    for node in graph.node:
        if node.op_type == "Transpose" and node.input[0] in inits:
            array = numpy_helper.to_array(inits[node.input[0]])
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(array.ndim))[::-1])
            name = node.input[0] + (".T" if perm == list(range(array.ndim))[::-1] else f".perm{''.join(map(str, perm))}")
            if name not in inits:
                inits[name] = numpy_helper.from_array(np.ascontiguousarray(array.transpose(perm)), name)
                graph.initializer.append(inits[name])
            for other in graph.node:
                for i, value in enumerate(other.input):
                    if value == node.output[0]:
                        other.input[i] = name
            folded += 1
        else:
            keep.append(node)
    if not folded:
        return 0
    del graph.node[:]
    graph.node.extend(keep)
    used = {v for n in graph.node for v in n.input} | {o.name for o in graph.output}
    remaining = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(remaining)
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return folded


def graph_summary(path: Path) -> dict:
    """Inputs/outputs with their (symbolic) shapes, node count and weight bytes, for the manifest."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def shape(value) -> list:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    return {
        "inputs": {v.name: shape(v) for v in model.graph.input},
        "outputs": {v.name: shape(v) for v in model.graph.output},
        "nodes": len(model.graph.node),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
    }
