"""The shipped demo pair compiled as the living-vocabulary tests need it (the C++ library's and the native policy's)."""

from __future__ import annotations

from pathlib import Path

import torch

from evospec.bundle.compile import compile_bundle
from evospec.passes.base import CompileSettings
from evospec.runtime.vocab.frequencies import count_tokens
from evospec.train.demo_pair import ASSET_DIR

DEMO_TARGET = ASSET_DIR / "target"


def compile_demo_policy_bundle(directory: Path, mass_clusters: int = 32) -> Path:
    """The demo pair compiled for torch into ``directory / "demo-bundle"``, with a 16-dim semantic index,
    ``mass_clusters`` mass clusters and a statistical index (``directory / "demo-frequencies.json"``) counted on a seeded Zipf-like token
    stream (frequent and rare tokens, successors; no text or tokenizer needed, so the policies' behaviour does not
    depend on this machine's files)."""
    g = torch.Generator().manual_seed(7)
    weights = 1.0 / torch.arange(1, 513).float()
    perm = torch.randperm(512, generator=g)
    docs = [perm[torch.multinomial(weights, 256, replacement=True, generator=g)].tolist() for _ in range(32)]
    count_tokens([docs], 512, "zipf", successors=8).save(directory / "demo-frequencies.json")
    compile_bundle(DEMO_TARGET, ASSET_DIR / "drafter", directory / "demo-bundle",
                   CompileSettings(backend="torch", buckets=(64, 128, 512), index_dims=16, mass_clusters=mass_clusters,
                                   frequencies=str(directory / "demo-frequencies.json")))
    return directory / "demo-bundle"
