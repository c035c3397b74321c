"""The C++ library's vocabulary policy for Python's drafter (``--policy-runtime cpp``; drafter_c.h, ``evospec_policy_*``).

Why: with Python's drafter, EvoSpec's per-step policy work on the decoding thread (collecting the worker's set and
patching it, the mass fill's ranking and gather) is a few dozen numpy and torch calls, each several times dearer
inside the decoding loop than alone: 0.8-0.9 ms a step at ``evospec:16384`` on the reference pair, against 0.3 ms
for the same policy inside the C++ library (README, issue 18). The library's policies mirror Python's call for call
(the same sets step by step: ``tests/test_cpp.py``, ``tests/test_native_policy.py``), so the drafts, and with them
every output, are unchanged; only where the time goes changes. Python's drafter keeps its own rows and plan: the
library hands out ids.

The object has the interface the decoding loop drives (``decoding``, ``reset``, ``observe``, ``start_pending``, and
``route`` for a routed policy or ``active_ids``), and runs EvoSpec's built-in settings (the library's
``EvoSpecPolicySettings``; a settings file, ``target_top`` feedback and ``+align`` stay with Python's policy).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import torch

from evospec.core.errors import SettingsError
from evospec.runtime.native_library import check_status, library_path, load_library


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    if not hasattr(lib, "evospec_policy_open"):
        raise SettingsError("this build of the C++ library has no standalone policy (evospec_policy_open): rebuild it "
                            "with `make cpp`, or run the policy in Python (--policy-runtime python)")
    address, i64, handle = ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p
    lib.evospec_policy_open.argtypes = [ctypes.c_char_p] * 4 + [i64, i64, ctypes.POINTER(ctypes.c_void_p)]
    lib.evospec_policy_close.argtypes = [handle]
    lib.evospec_policy_close.restype = None
    lib.evospec_policy_routed.argtypes = [handle, address]
    lib.evospec_policy_start.argtypes = [handle, address, i64, ctypes.c_int]
    lib.evospec_policy_observe.argtypes = [handle, address, i64, address, i64]
    lib.evospec_policy_start_pending.argtypes = [handle]
    lib.evospec_policy_next.argtypes = [handle, address, i64, address, i64, address, address]
    return lib


class NativePolicy:
    """A policy run by the library: ``active_ids`` each cycle (routed policies: ``NativeRoutedPolicy``)."""

    target_top = 0  # the library's policies take no verification feedback

    def __init__(self, lib: ctypes.CDLL, handle: ctypes.c_void_p, name: str, vocab_size: int) -> None:
        self._lib, self._handle, self.name = lib, handle, name
        self._greedy = False
        self._ids = np.empty(vocab_size, dtype=np.int64)
        self._out = np.zeros(2, dtype=np.int64)  # the size, and whether the set changed (an int in a zeroed slot)
        self._last: torch.Tensor | None = None

    def _check(self, status: int) -> None:
        check_status(self._lib, status)

    def decoding(self, greedy: bool) -> None:
        """The next sequence decodes greedily or samples (an ``evospec:K`` policy opened with a router fills greedy
        sequences from its clusters, as Python's ``MassRouted.decoding``)."""
        self._greedy = bool(greedy)

    def reset(self, prompt_ids: list[int]) -> None:
        ids = np.asarray(prompt_ids, dtype=np.int64)
        self._check(self._lib.evospec_policy_start(self._handle, ids.ctypes.data, ids.size, int(self._greedy)))
        self._last = None

    def observe(self, committed: list[int], state: torch.Tensor | None = None,
                target_top: torch.Tensor | None = None) -> None:
        ids = np.asarray(committed, dtype=np.int64)
        h = None if state is None else _host_state(state)
        self._check(self._lib.evospec_policy_observe(self._handle, ids.ctypes.data, ids.size,
                                                     None if h is None else h.ctypes.data, 0 if h is None else h.size))

    def start_pending(self) -> None:
        """Start the newest observation's job (the loop calls this as the target's pass begins)."""
        self._check(self._lib.evospec_policy_start_pending(self._handle))

    def _next(self, state: torch.Tensor | None) -> torch.Tensor:
        h = None if state is None else _host_state(state)
        out = self._out
        self._check(self._lib.evospec_policy_next(self._handle, None if h is None else h.ctypes.data,
                                                  0 if h is None else h.size, self._ids.ctypes.data, self._ids.size,
                                                  out.ctypes.data, out.ctypes.data + 8))
        if self._last is not None and not out[1]:
            return self._last  # the same tensor: the drafter's plan update then costs nothing
        self._last = torch.from_numpy(self._ids[: int(out[0])].copy())
        return self._last

    def active_ids(self) -> torch.Tensor:
        return self._next(None)

    def close(self) -> None:
        if self._handle:
            self._lib.evospec_policy_close(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


class NativeRoutedPolicy(NativePolicy):
    """A routed policy (``evospec:K`` with its mass fill, ``dynaspec:K:C``): the set is chosen from each cycle's root
    state, between the drafter's trunk and head (``route``)."""

    def route(self, state: torch.Tensor) -> torch.Tensor:
        return self._next(state)


def _host_state(state: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(state.detach().reshape(-1).to("cpu", torch.float32).numpy())


def native_policy(spec: str, bundle: str | Path, vocab_size: int, hidden_size: int,
                  frequencies: str | Path | None = None, router: str | Path | None = None,
                  library: Path | None = None) -> NativePolicy:
    """The library's policy ``spec`` over ``bundle`` (its mass, statistical and semantic indexes), or one clear
    ``SettingsError`` / ``BundleError`` line (a missing library, a policy it cannot run, a bad file)."""
    lib = _declare(load_library(Path(library) if library is not None else library_path()))
    handle = ctypes.c_void_p()
    encode = lambda v: None if v is None else str(v).encode()
    check_status(lib, lib.evospec_policy_open(encode(bundle), encode(spec), encode(frequencies), encode(router),
                                              int(vocab_size), int(hidden_size), ctypes.byref(handle)))
    routed = ctypes.c_int()
    check_status(lib, lib.evospec_policy_routed(handle, ctypes.addressof(routed)))
    return (NativeRoutedPolicy if routed.value else NativePolicy)(lib, handle, spec, vocab_size)
