"""Speculative sampling verification in the C++ library (``evospec_verify_sampled``, runtime/cpp/src/verify.cpp).

Why: at T > 0 Python's verifier costs about half a millisecond for each row it visits (numpy and torch passes
over a 151k-token row, however much the bounds of ``target_law.py`` save), a fifth of a step's time outside the
model forwards on this CPU. The library computes the same law (temperature in float32, the softmax, the top-p
nucleus with ties ordered by logit) and walks the tree the same way (children in draft order, recursive
rejection, the bonus token from what is left), in a few vectorisable passes a row.

The random numbers come from the caller's generator, ``nodes + 8`` of them a step, drawn in one call; the
library uses them in the order Python's verifier draws its own (one per tested child, two per proposal of the
bonus token from the softmax, one for a draw from the exact law). So from the same generator state both verifiers
decide alike (``tests/test_native_verify.py``: the same verdicts on random trees and rows), but across steps the
native one moves the generator further (it always takes ``nodes + 8``): one seed gives different samples of the
same law.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch

from evospec.core.errors import SettingsError
from evospec.runtime.native_library import F32P, F64P, check_status, library_path, load_library
from evospec.runtime.tree import DraftTree
from evospec.runtime.verify import Verdict

# uniform numbers a step takes from the generator, beyond one per node: the bonus token's at most 2 x 3 proposals
# from the softmax and one draw from the exact law (verify.cpp, DRAW_ATTEMPTS), and one to spare
UNIFORMS_OVER_NODES = 8


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    if not hasattr(lib, "evospec_verify_sampled"):
        raise SettingsError("this build of the C++ library has no sampling verifier (evospec_verify_sampled): "
                            "rebuild it with `make cpp`, or verify in Python (--verifier python)")
    # buffers as plain addresses (c_void_p): a ctypes pointer object per argument cost more than the C++ verdict of a
    # plain step in the decoding loop
    address, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.evospec_verify_sampled.argtypes = [address, i64, i64, i64, i64, address, address, i64, address, address, i64,
                                           ctypes.c_double, ctypes.c_double, address, i64, address, address, address,
                                           address]
    lib.evospec_sampling_weights.argtypes = [F32P, ctypes.c_int64, ctypes.c_int64, ctypes.c_double, ctypes.c_double,
                                             F32P, F64P]
    return lib


class NativeVerifier:
    """``verify(tree, logits, temperature, top_p, generator)``, as :func:`evospec.runtime.verify.verify_sampling`."""

    def __init__(self, library: Path | ctypes.CDLL | None = None) -> None:
        lib = library if isinstance(library, ctypes.CDLL) else load_library(Path(library) if library else library_path())
        self._lib = _declare(lib)

    def weights(self, row: torch.Tensor, temperature: float, top_p: float) -> tuple[np.ndarray, float]:
        """The law the verifier computes at one row of logits, as :func:`evospec.runtime.sampling.sampling_weights`
        gives it: (weights, their float64 total)."""
        x = np.ascontiguousarray(row.detach().to("cpu", torch.float32).numpy().reshape(-1))
        out, total = np.empty_like(x), ctypes.c_double()
        self._check(self._lib.evospec_sampling_weights(x.ctypes.data_as(F32P), x.size, 1, float(temperature),
                                                       float(top_p), out.ctypes.data_as(F32P), ctypes.byref(total)))
        return out, total.value

    def _check(self, status: int) -> None:
        check_status(self._lib, status)

    def verify(self, tree: DraftTree, logits: torch.Tensor, temperature: float, top_p: float,
               generator: torch.Generator) -> Verdict:
        """``logits``: [1 + N, V], row 0 at the root, row i + 1 at node i (any strides)."""
        if logits.dtype == torch.float64:
            raise SettingsError("the C++ verifier computes the law in float32; a float64 target's law is float64: "
                                "verify in Python (--verifier python)")
        host = logits.detach().to("cpu", torch.float32)
        if host.dim() != 2 or host.shape[0] != tree.size + 1:
            raise SettingsError(f"logits of shape {tuple(host.shape)} for a tree of {tree.size} nodes "
                                f"(expected [{tree.size + 1}, V])")
        n = tree.size
        # torch tensors passed by address (one pointer each, no ctypes objects: this runs every step)
        uniforms = torch.rand(n + UNIFORMS_OVER_NODES, generator=generator, dtype=torch.float64)
        tokens, parents = _as(tree.tokens, torch.long), _as(tree.parents, torch.long)
        laws = None if tree.proposals is None else _as(tree.proposals.detach().cpu(), torch.float64)
        columns = None if laws is None or tree.proposal_ids is None else _as(tree.proposal_ids.cpu(), torch.long)
        out = torch.zeros(n + 3, dtype=torch.long)  # accepted count, bonus token, uniforms used, accepted nodes
        base = out.data_ptr()
        self._check(self._lib.evospec_verify_sampled(
            host.data_ptr(), host.shape[0], host.shape[1], host.stride(0), host.stride(1), tokens.data_ptr(),
            parents.data_ptr(), n, None if laws is None else laws.data_ptr(),
            None if columns is None else columns.data_ptr(), 0 if laws is None else laws.shape[1], float(temperature),
            float(top_p), uniforms.data_ptr(), uniforms.numel(), base + 24, base, base + 8, base + 16))
        values = out.tolist()
        return Verdict(values[3: 3 + values[0]], values[1])


def _as(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` as a contiguous host tensor of ``dtype`` (itself when it is one already)."""
    return tensor if tensor.dtype == dtype and tensor.is_contiguous() else tensor.to(dtype).contiguous()
