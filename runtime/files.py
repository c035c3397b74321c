"""Model-directory files: the ``config.json`` reader every loader shares, and file fingerprints.

Fingerprints are what a bundle records at compile time and checks at load time. Both sides (the
`finalise`/`validate_inputs` passes that write a manifest, the runtime's bundle loader that reads
one) hash files the same way, so the one definition lives here, below both.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from evospec.core.errors import CheckpointError

# Files of a model directory whose content defines the model: configs, weights, tokenizer.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken")


def read_model_config(directory: str | Path, kind: str = "model", described: str | None = None) -> dict:
    """``directory/config.json`` as a dict, or a CheckpointError naming what is wrong and where.

    Args:
        directory: A model directory (HF layout).
        kind: What the directory should hold, for the messages ("target", "drafter").
        described: How the missing-config message names the directory (default: "a <kind> directory").
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{kind} directory {directory} does not exist")
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {described or f'a {kind} directory'} needs config.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds {type(config).__name__}, not a JSON object")
    return config


def fingerprint(path: Path) -> dict:
    """Size and sha256 of one file, read in 4 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return {"bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def hash_directory(directory: Path) -> dict[str, dict]:
    """sha256 and size of every model file (configs, weights, tokenizer) directly in ``directory``."""
    files = {}
    for path in sorted(Path(directory).iterdir()):
        if path.is_file() and path.suffix in MODEL_FILE_SUFFIXES and not path.name.startswith("."):
            files[path.name] = fingerprint(path)
    return files
