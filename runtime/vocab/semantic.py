"""The semantic index: a USearch inner-product index over a low-dimensional projection of the
reservoir rows, queried with the drafter's hidden state.

A head scores token t by ``<row_t, h>``. Projecting both onto the top-r right singular vectors
``P`` of the reservoir (``rows @ P`` in the index, ``h @ P`` as the query) keeps most of that
inner product in r dimensions, so the nearest neighbours of ``h @ P`` are the long-tail tokens the
full head would score highly, found without scoring 150k rows. Built at compile time (a pass),
loaded and checked here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evospec.core.errors import BundleError

INDEX_FILE, PROJECTION_FILE = "index/semantic.usearch", "index/projection.safetensors"


def projection(rows: torch.Tensor, dims: int) -> torch.Tensor:
    """[d, r]: the top-``dims`` right singular vectors of ``rows`` (uncentred: inner products, not distances)."""
    gram = rows.double().T @ rows.double()
    _, vectors = torch.linalg.eigh(gram)  # ascending eigenvalues
    return vectors[:, -dims:].flip(-1).float().contiguous()


def build_index(rows: torch.Tensor, proj: torch.Tensor, threads: int = 0):
    from usearch.index import Index

    index = Index(ndim=proj.shape[1], metric="ip", dtype="f32")
    index.add(np.arange(rows.shape[0], dtype=np.uint64), (rows.float() @ proj).numpy(), threads=threads)
    return index


@dataclass
class SemanticIndex:
    index: object  # usearch.index.Index
    projection: torch.Tensor  # [d, r]
    rows: int

    def query(self, state: torch.Tensor, count: int) -> list[int]:
        """Ids of the ``count`` rows with the largest projected inner product with ``state`` [d]."""
        q = (state.detach().float().cpu().reshape(1, -1) @ self.projection).numpy()
        return [int(k) for k in self.index.search(q[0], count).keys]

    @classmethod
    def load(cls, bundle: Path, vocab_size: int, hidden_size: int) -> SemanticIndex:
        """The bundle's index, or a BundleError saying which file is missing, corrupt or mismatched."""
        from safetensors.torch import load_file

        try:
            from usearch.index import Index
        except ImportError:
            raise BundleError(f"{bundle}: the semantic index needs usearch (pip install 'evospec[index]')") from None
        index_path, proj_path = Path(bundle) / INDEX_FILE, Path(bundle) / PROJECTION_FILE
        for path in (index_path, proj_path):
            if not path.is_file():
                raise BundleError(f"{path} is missing; recompile the bundle with `evospec compile`")
        try:
            proj = load_file(str(proj_path))["projection"]
        except Exception as exc:  # safetensors raises its own error types
            raise BundleError(f"{proj_path} is not a readable projection ({type(exc).__name__}: {exc})") from None
        try:
            index = Index.restore(str(index_path))
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{index_path} is not a readable USearch index ({exc})") from None
        if index is None:
            raise BundleError(f"{index_path} is not a readable USearch index")
        if proj.ndim != 2 or proj.shape[0] != hidden_size or index.ndim != proj.shape[1]:
            raise BundleError(f"{index_path}: index of dimension {index.ndim} with a projection of shape "
                              f"{tuple(proj.shape)} does not fit a drafter of width {hidden_size}")
        if len(index) != vocab_size:
            raise BundleError(f"{index_path} indexes {len(index)} rows but the reservoir has {vocab_size}")
        return cls(index, proj, vocab_size)
