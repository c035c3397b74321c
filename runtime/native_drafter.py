"""The C++ drafter library (runtime/cpp, issue 20) inside Python's decoding loop, through its C ABI.

Why: at batch 1 on a CPU the Python drafter is bound by per-op interpreter overhead (a chain of five
one-layer drafter passes is ~60 op calls each); the library runs the same stages, tree and
vocabulary policy op for op in C++ (tests/test_cpp.py: equal trees and active sets step by step).
The target, its cache and verification stay in Python, so decoding stays exact whatever drafts.

The library is loaded with ctypes from ``build/cpp/libevospec_drafter.so`` (``make cpp``) or the path
in ``EVOSPEC_CPP_LIBRARY``; it links the libtorch of the torch wheel it was built against, which is
the one this process has loaded.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from evospec.core.errors import SettingsError
from evospec.runtime.native_library import F32P, F64P, I64P, StepCostsC, check_status, library_path, load_library
from evospec.runtime.tree import EDGE_BINS, StepCosts


@dataclass
class NativeTree:
    tokens: list[int]
    parents: list[int]
    depths: list[int]
    scores: list[float] = field(default_factory=list)  # cumulative draft log-probability of each node
    level_rows: tuple[int, ...] = ()  # frontier rows of each drafter call past the root call
    root_ms: float = 0.0  # the library's root call (the newly committed positions)
    tree_ms: float = 0.0  # drafting past it: expansion levels and selection
    # a sampled chain (``propose_sampled_chain``): each node's law over ``columns`` (the active ids, head-column
    # order; [nodes, columns], float64) and the rows the policy moved into the set at this propose
    laws: np.ndarray | None = None
    columns: np.ndarray | None = None  # int64
    moved: int = 0


class NativeDrafter:
    """One decoding sequence at a time (as the library's Drafter): ``start``, then per step ``propose``
    (features of the newly committed positions, the newest token) and ``commit`` (accepted drafts)."""

    MAX_NODES = 1024

    def __init__(self, bundle: str | Path, *, vocab: str | None = None, frequencies: str | Path | None = None,
                 router: str | Path | None = None, target_dir: str | Path | None = None, threads: int = 0,
                 max_context: int = 4096, check_files: bool = True, library: Path | None = None) -> None:
        self._lib = load_library(Path(library) if library is not None else library_path())
        handle = ctypes.c_void_p()
        encode = lambda v: None if v is None else str(v).encode()
        self._check(self._lib.evospec_drafter_open(
            encode(bundle), encode(vocab), encode(frequencies), encode(router), encode(target_dir), int(threads),
            int(max_context), int(check_files), ctypes.byref(handle)))
        self._handle = handle
        sizes = (ctypes.c_int64 * 3)()
        self._check(self._lib.evospec_drafter_sizes(self._handle, sizes))
        self.hidden_size, self.target_hidden_size, self.vocab_size = sizes
        self._nodes = {name: np.empty(self.MAX_NODES, dtype=np.int64) for name in ("tokens", "parents", "depths")}
        self._scores = np.empty(self.MAX_NODES, dtype=np.float64)
        self._laws = np.empty(0, dtype=np.float64)  # a sampled chain's laws (``propose_sampled_chain``)
        self.policy = vocab
        self._router_fill = router is not None and str(vocab or "").startswith("evospec")

    @property
    def library(self) -> ctypes.CDLL:
        """The loaded library (its sampling verifier: runtime/native_verify.py)."""
        return self._lib

    def _check(self, status: int) -> None:
        check_status(self._lib, status)

    def start(self, prompt: list[int], greedy: bool = False) -> None:
        """Begin a sequence; ``greedy``: whether it is verified greedily (an ``evospec:K`` policy opened with a
        router fills greedy sequences from the router's clusters, as Python's ``MassRouted.decoding``)."""
        ids = np.asarray(prompt, dtype=np.int64)
        if hasattr(self._lib, "evospec_drafter_start_greedy"):
            self._check(self._lib.evospec_drafter_start_greedy(self._handle, ids.ctypes.data_as(I64P), ids.size,
                                                               int(bool(greedy))))
            return
        if greedy and self._router_fill:
            raise SettingsError("this build of the C++ drafter library cannot fill greedy sequences from a router "
                                "(no evospec_drafter_start_greedy): rebuild it with `make cpp`, or drop --router")
        self._check(self._lib.evospec_drafter_start(self._handle, ids.ctypes.data_as(I64P), ids.size))

    def set_siblings(self, siblings: int, ratio: float = 0.0) -> None:
        """Greedy chains proposed from now on also hold the drafter's second choice at their first ``siblings``
        levels, where the first choice is less than ``ratio`` times as likely (0: at each of them;
        ``DecodeSettings.draft_siblings`` and ``draft_sibling_ratio``; the same trees as Python's ``_draft_chain``)."""
        if not hasattr(self._lib, "evospec_drafter_set_siblings"):
            if siblings:
                raise SettingsError("this build of the C++ drafter library drafts no chain with siblings "
                                    "(evospec_drafter_set_siblings): rebuild it with `make cpp`, or use --draft-siblings 0")
            return
        if not hasattr(self._lib, "evospec_drafter_set_sibling_ratio"):
            if ratio:
                raise SettingsError("this build of the C++ drafter library keeps every sibling (no "
                                    "evospec_drafter_set_sibling_ratio): rebuild it with `make cpp`, or drop "
                                    "--draft-sibling-ratio")
        else:
            self._check(self._lib.evospec_drafter_set_sibling_ratio(self._handle, float(ratio)))
        self._check(self._lib.evospec_drafter_set_siblings(self._handle, int(siblings)))

    def _features(self, features: torch.Tensor) -> np.ndarray:
        """``features`` as the library reads them: float32 [positions, 3 x target hidden size], contiguous."""
        feats = np.ascontiguousarray(features.detach().to("cpu", torch.float32).numpy())
        if feats.ndim != 2 or feats.shape[1] != 3 * self.target_hidden_size:
            raise SettingsError(f"features of shape {tuple(feats.shape)}; the drafter takes [positions, "
                                f"{3 * self.target_hidden_size}] (three tapped target states)")
        return feats

    def propose(self, features: torch.Tensor, newest_token: int, depth: int, width: int, budget: int,
                costs: StepCosts | None = None) -> NativeTree:
        """The next tree; with ``costs``, a value-based budget (``budget`` nodes at most), chosen by the rule of
        :func:`evospec.runtime.tree.draft_tree` (tests/test_native_tree_budget.py: the same trees)."""
        feats = self._features(features)
        n, levels = ctypes.c_int64(), ctypes.c_int64()
        buf = self._nodes
        if not hasattr(self._lib, "evospec_drafter_propose_costed"):
            if costs is not None:
                raise SettingsError("this build of the C++ drafter library has no value-based budget "
                                    "(evospec_drafter_propose_costed): rebuild it with `make cpp`")
            self._check(self._lib.evospec_drafter_propose(  # an older library: no scores, level rows or timings
                self._handle, feats.ctypes.data_as(F32P), feats.shape[0], int(newest_token), depth, width, budget,
                buf["tokens"].ctypes.data_as(I64P), buf["parents"].ctypes.data_as(I64P),
                buf["depths"].ctypes.data_as(I64P), self.MAX_NODES, ctypes.byref(n)))
            k = n.value
            return NativeTree(buf["tokens"][:k].tolist(), buf["parents"][:k].tolist(), buf["depths"][:k].tolist())
        c_costs = None
        if costs is not None:
            rates = None
            if costs.rates is not None:
                if len(costs.rates) not in (len(EDGE_BINS) + 1, 2 * (len(EDGE_BINS) + 1)):
                    raise SettingsError(f"StepCosts.rates holds {len(EDGE_BINS) + 1} rates (or twice that: first "
                                        f"choices, then other children), got {len(costs.rates)}")
                rates = (ctypes.c_double * len(costs.rates))(*costs.rates)
            c_costs = StepCostsC(costs.fixed_ms, costs.level_ms, costs.row_ms, costs.level_row_ms,
                                 ctypes.cast(rates, F64P) if rates is not None else None,
                                 0 if rates is None else len(costs.rates), costs.spine)
        level_rows = np.empty(max(depth, 1), dtype=np.int64)
        timings = (ctypes.c_double * 2)()
        self._check(self._lib.evospec_drafter_propose_costed(
            self._handle, feats.ctypes.data_as(F32P), feats.shape[0], int(newest_token), depth, width, budget,
            ctypes.byref(c_costs) if c_costs is not None else None,
            buf["tokens"].ctypes.data_as(I64P), buf["parents"].ctypes.data_as(I64P), buf["depths"].ctypes.data_as(I64P),
            self._scores.ctypes.data_as(F64P), self.MAX_NODES, ctypes.byref(n),
            level_rows.ctypes.data_as(I64P), ctypes.byref(levels), timings))
        k = n.value
        return NativeTree(buf["tokens"][:k].tolist(), buf["parents"][:k].tolist(), buf["depths"][:k].tolist(),
                          self._scores[:k].tolist(), tuple(level_rows[: levels.value].tolist()), timings[0], timings[1])

    @property
    def samples_chains(self) -> bool:
        """Whether this build drafts sampled chains (``propose_sampled_chain``)."""
        return hasattr(self._lib, "evospec_drafter_propose_sampled")

    def propose_sampled_chain(self, features: torch.Tensor, newest_token: int, depth: int, temperature: float,
                              uniforms: list[float]) -> NativeTree:
        """A chain whose tokens the library draws from its q at ``temperature``, one of ``uniforms`` (the caller's
        generator's numbers, as Python's drafter would draw them) a level, with each node's q over the active ids
        (``NativeTree.laws`` and ``columns``) for verification."""
        if not self.samples_chains:
            raise SettingsError("this build of the C++ drafter library drafts no sampled chain "
                                "(evospec_drafter_propose_sampled): rebuild it with `make cpp`")
        feats = self._features(features)
        draws = np.ascontiguousarray(uniforms, dtype=np.float64)
        if draws.size != depth:
            raise SettingsError(f"a sampled chain of {depth} needs {depth} uniforms, got {draws.size}")
        if self._laws.size < depth * self.vocab_size:  # a bucket never holds more columns than the vocabulary
            self._laws = np.empty(depth * self.vocab_size, dtype=np.float64)
        laws = self._laws
        n, width = ctypes.c_int64(), ctypes.c_int64()
        timings = (ctypes.c_double * 2)()
        buf = self._nodes
        self._check(self._lib.evospec_drafter_propose_sampled(
            self._handle, feats.ctypes.data_as(F32P), feats.shape[0], int(newest_token), depth, float(temperature),
            draws.ctypes.data_as(F64P), buf["tokens"].ctypes.data_as(I64P), buf["parents"].ctypes.data_as(I64P),
            buf["depths"].ctypes.data_as(I64P), self._scores.ctypes.data_as(F64P), laws.ctypes.data_as(F64P),
            laws.size, ctypes.byref(width), self.MAX_NODES, ctypes.byref(n), timings))
        k = n.value
        active, moved = self._active_array()
        laws = laws[: k * width.value].reshape(k, width.value)
        if np.any(laws[:, len(active):] != 0):
            raise RuntimeError("the C++ drafter put draft mass on padding columns of its head; this is a bug")
        return NativeTree(buf["tokens"][:k].tolist(), buf["parents"][:k].tolist(), buf["depths"][:k].tolist(),
                          self._scores[:k].tolist(), tuple([1] * max(k - 1, 0)), timings[0], timings[1],
                          laws=laws[:, : len(active)].copy(), columns=active, moved=moved)  # the buffer is reused

    def policy_seconds(self) -> tuple[float, float]:
        """Seconds the last propose spent in the vocabulary policy (observing, choosing the set) and in moving the
        set's rows into the head, both inside its time; zeros from a library too old to say."""
        if not hasattr(self._lib, "evospec_drafter_policy_ms"):
            return 0.0, 0.0
        ms = (ctypes.c_double * 2)()
        self._check(self._lib.evospec_drafter_policy_ms(self._handle, ms))
        return ms[0] / 1e3, ms[1] / 1e3

    def commit(self, accepted: list[int]) -> None:
        ids = np.asarray(accepted, dtype=np.int64)
        self._check(self._lib.evospec_drafter_commit(self._handle, ids.ctypes.data_as(I64P), ids.size))

    def active(self) -> tuple[list[int], int]:
        """The active set at the last propose (head-column order) and the rows that moved into it."""
        ids, moved = self._active_array()
        return ids.tolist(), moved

    def _active_array(self) -> tuple[np.ndarray, int]:
        size, moved = ctypes.c_int64(), ctypes.c_int64()
        self._check(self._lib.evospec_drafter_active(self._handle, None, 0, ctypes.byref(size), ctypes.byref(moved)))
        ids = np.empty(size.value, dtype=np.int64)
        self._check(self._lib.evospec_drafter_active(self._handle, ids.ctypes.data_as(I64P), ids.size, None, None))
        return ids, moved.value

    def close(self) -> None:
        if getattr(self, "_handle", None):
            self._lib.evospec_drafter_close(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()
