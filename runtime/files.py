"""File fingerprints: what a bundle records at compile time and checks at load time.

Both sides (the `finalise`/`validate_inputs` passes that write a manifest, the runtime's bundle
loader that reads one) hash files the same way, so the one definition lives here, below both.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

# Files of a model directory whose content defines the model: configs, weights, tokenizer.
MODEL_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".tiktoken")


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
