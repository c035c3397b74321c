"""Load a compiled bundle: check its manifest, files and inputs, then build a CompiledDrafter.

Every way a bundle can be wrong is a ``BundleError`` that says what, where, and what to run:
no manifest, another format version, a missing or truncated (or altered) file, a target that is
not the one it was compiled for, a backend that is not installed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from evospec.core.errors import BundleError
from evospec.runtime.checkpoint import load_drafter
from evospec.runtime.compiled_drafter import CompiledDrafter
from evospec.runtime.files import fingerprint, hash_directory
from evospec.runtime.gather import make_plan
from evospec.runtime.runners import OrtRunner, TorchRunner, onnx_initializers
from evospec.runtime.stages import SIGNATURES, ActiveHeadStage, FuseStage, HeadStage, TrunkStage
from evospec.runtime.vocab.mass_index import MassIndex
from evospec.runtime.vocab.semantic import SemanticIndex

BUNDLE_FORMAT = 2  # 2: head_active stage (resident rows); `evospec compile` writes this format

RECOMPILE = "recompile with `evospec compile --target DIR --drafter DIR --out {bundle}`"


def read_manifest(bundle: str | Path) -> dict:
    bundle = Path(bundle)
    path = bundle / "manifest.json"
    if not bundle.is_dir():
        raise BundleError(f"bundle {bundle} does not exist")
    if not path.exists():
        raise BundleError(f"{bundle} is not a bundle: manifest.json is missing; {RECOMPILE.format(bundle=bundle)}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON ({exc}); {RECOMPILE.format(bundle=bundle)}") from None
    if manifest.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{bundle} has bundle format {manifest.get('format')!r}; this evospec reads format "
                          f"{BUNDLE_FORMAT}; {RECOMPILE.format(bundle=bundle)}")
    return manifest


def check_files(bundle: Path, manifest: dict) -> None:
    for name, expected in manifest.get("files", {}).items():
        path = bundle / name
        if not path.is_file():
            raise BundleError(f"{path} is missing from the bundle; {RECOMPILE.format(bundle=bundle)}")
        size = path.stat().st_size
        if size != expected["bytes"]:
            raise BundleError(f"{path} is truncated or altered ({size} bytes, expected {expected['bytes']}); "
                              f"{RECOMPILE.format(bundle=bundle)}")
        if fingerprint(path)["sha256"] != expected["sha256"]:
            raise BundleError(f"{path} was altered after compiling (sha256 differs); {RECOMPILE.format(bundle=bundle)}")


def check_target(bundle: Path, manifest: dict, target_dir: Path) -> None:
    compiled = manifest["inputs"]["target"]["files"]
    found = hash_directory(target_dir)
    for name, expected in compiled.items():
        if name not in found or found[name]["sha256"] != expected["sha256"]:
            raise BundleError(f"target {target_dir} is not the one {bundle} was compiled for ({name} differs; "
                              f"compiled for {manifest['inputs']['target']['path']}); {RECOMPILE.format(bundle=bundle)}")


def check_backend(bundle: Path, backend: str) -> None:
    needs = {"ort": ("onnxruntime", "pip install 'evospec[onnx]'"), "tensorrt": ("tensorrt", "pip install 'evospec[tensorrt]'")}
    if backend in needs:
        module, install = needs[backend]
        try:
            __import__(module)
        except ImportError:
            raise BundleError(f"{bundle} was built for backend '{backend}', but {module} is not installed here: "
                              f"{install}, or compile with --backend torch") from None
    if backend == "tensorrt" and not torch.cuda.is_available():
        raise BundleError(f"{bundle} holds TensorRT engines, which need a CUDA GPU; torch sees none here")


# Stage inputs that CUDA graphs read in place rather than copy: the resident head rows, the KV cache.
BY_REFERENCE = {"head_active": ("rows",), "trunk": ("past_keys", "past_values")}
# CUDA-graph outputs CompiledDrafter consumes within the call that made them (copied into the cache or fed to
# the next stage, whose graph copies its inputs): handed out without a clone
BORROWED = {"fuse": ("hidden",), "trunk": ("new_keys", "new_values", "normed")}


def load_compiled_drafter(bundle: str | Path, target, check_inputs: bool = True, cuda_graphs: bool = True):
    """A CompiledDrafter for ``target`` (a loaded TargetModel whose directory was checked by the caller).

    A torch bundle on a CUDA target runs on the GPU: rows on the device, the trunk over a static
    cache shape, every stage replayed from CUDA graphs (``cuda_graphs``)."""

    bundle = Path(bundle)
    manifest = read_manifest(bundle)
    if check_inputs:
        check_files(bundle, manifest)
    backend = manifest["backend"]
    check_backend(bundle, backend)
    graphs = cuda_graphs and backend == "torch" and torch.device(target.device).type == "cuda"
    drafter = load_drafter(bundle / "drafter", target_embeddings=target.model.get_input_embeddings(),
                           target_hidden_size=target.hidden_size, target_vocab_size=target.vocab_size,
                           device=target.device, dtype=torch.float32)
    vocab_ids = drafter.draft_vocab_target_ids().cpu()
    plan = make_plan(vocab_ids, tuple(manifest["gather"]["buckets"]))
    runners = {}
    for stage, signature in SIGNATURES.items():
        if backend == "ort":
            runners[stage] = OrtRunner(stage, bundle / manifest["artefacts"][f"onnx/{stage}"])
        elif backend == "tensorrt":
            from evospec.runtime.trt_runner import TrtRunner

            runners[stage] = TrtRunner(stage, bundle / manifest["artefacts"][f"tensorrt/{stage}"],
                                       tuple(manifest["gather"]["buckets"]))
        else:
            module = {"fuse": lambda: FuseStage(drafter), "trunk": lambda: TrunkStage(drafter),
                      "head": lambda: HeadStage(load_reservoir(bundle).to(target.device)),
                      "head_active": ActiveHeadStage}[stage]()
            runners[stage] = TorchRunner(stage, module, list(signature.inputs), list(signature.outputs))
            if graphs:
                from evospec.runtime.cuda_graphs import GraphedRunner

                runners[stage] = GraphedRunner(runners[stage], by_reference=BY_REFERENCE.get(stage, ()),
                                               borrowed=BORROWED.get(stage, ()))
        runners[stage].activate()  # sessions are created now, not inside the first timed draft step
    buckets = tuple(manifest["gather"]["buckets"])
    reservoir = None  # host rows for the resident head, shared with the head engine's own weights
    if backend == "ort":
        reservoir = torch.from_numpy(runners["head"].weights["reservoir"])
    elif backend == "torch":
        reservoir = runners["head"].module.reservoir
    host_rows = None
    if backend == "tensorrt":  # the engine holds its rows; a host copy (from the bundle's ONNX head) is what
        host_rows = onnx_weight(bundle / manifest["artefacts"]["onnx/head"], "reservoir")  # alignment updates
    compiled = CompiledDrafter(drafter.config, drafter.d2t, drafter._table[0], runners, plan, buckets, reservoir,
                               static_past=graphs, host_rows=host_rows)
    if "semantic_index" in manifest:
        compiled.semantic_index = SemanticIndex.load(bundle, drafter.config.vocab_size, drafter.config.hidden_size)
    if "mass_index" in manifest:
        compiled.mass_index = MassIndex.load(bundle, drafter.config.vocab_size, drafter.config.hidden_size)
    if "statistical_index" in manifest:  # fingerprint checked above; parsed when a policy asks for it
        compiled.frequencies_path = bundle / manifest["statistical_index"]["file"]
    return compiled, manifest


def onnx_weight(path: Path, name: str) -> torch.Tensor:
    """One initializer of an ONNX file (external data included) as a writable torch tensor."""

    found = onnx_initializers(path, lambda initializer, _: initializer == name)
    if name not in found:
        raise BundleError(f"{path} has no weight {name!r}")
    return torch.from_numpy(found[name])


def load_reservoir(bundle: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(bundle / "reservoir.safetensors"))["reservoir"]
