"""Loading the C++ drafter library (runtime/cpp) with ctypes, and its C ABI's shared types.

The library is ``build/cpp/libevospec_drafter.so`` (``make cpp``) or the path in ``EVOSPEC_CPP_LIBRARY``. Apart from
``native_drafter.py`` so that Python paths that only borrow one of its calls (the plan update, the greedy choice, the
policy, the verifier) load it without importing the drafter's own module, which imports the tree builder.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from evospec.core.errors import BundleError, SettingsError

log = logging.getLogger(__name__)

DEFAULT_LIBRARY = Path(__file__).resolve().parents[1] / "build" / "cpp" / "libevospec_drafter.so"
I64P = ctypes.POINTER(ctypes.c_int64)
F32P = ctypes.POINTER(ctypes.c_float)
F64P = ctypes.POINTER(ctypes.c_double)


class StepCostsC(ctypes.Structure):
    """evospec_step_costs (drafter_c.h): a :class:`~evospec.runtime.tree.StepCosts` for the C ABI."""

    _fields_ = [("fixed_ms", ctypes.c_double), ("level_ms", ctypes.c_double), ("row_ms", ctypes.c_double),
                ("level_row_ms", ctypes.c_double), ("rates", F64P), ("rate_count", ctypes.c_int64),
                ("spine", ctypes.c_int64)]


def library_path() -> Path:
    return Path(os.environ.get("EVOSPEC_CPP_LIBRARY", DEFAULT_LIBRARY))


def check_status(lib: ctypes.CDLL, status: int) -> None:
    """Raise the library's one-line message for a failed call's status (drafter_c.h: 1 a bundle error, else a
    settings error)."""
    if status == 0:
        return
    message = (lib.evospec_last_error() or b"").decode(errors="replace")
    raise (BundleError if status == 1 else SettingsError)(message)


def optional_library(switch: str, symbols: tuple[str, ...], fallback: str) -> ctypes.CDLL | None:
    """The built library when it exports ``symbols``, else None: not built, built before them, or ``switch`` set to 0
    in the environment. For the Python paths that use the library where it is built and keep their own way otherwise
    (``fallback`` says which, in the log line)."""
    if os.environ.get(switch, "1") == "0":
        return None
    path = library_path()
    if not path.is_file():
        return None
    try:
        lib = load_library(path)
    except SettingsError as exc:
        log.info("%s: %s", fallback, exc)
        return None
    missing = [name for name in symbols if not hasattr(lib, name)]
    if missing:
        log.info("%s: %s predates %s (rebuild it with `make cpp`)", fallback, path, ", ".join(missing))
        return None
    return lib


def load_library(path: Path) -> ctypes.CDLL:
    """The library at ``path`` with its drafter C API declared; one clear line when it is missing or not ours."""
    if not path.is_file():
        raise SettingsError(f"{path} does not exist: build the C++ drafter library with `make cpp` "
                            "(or set EVOSPEC_CPP_LIBRARY)")
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot load the C++ drafter library ({exc})") from None
    if not hasattr(lib, "evospec_drafter_open"):
        raise SettingsError(f"{path} has no C API (evospec_drafter_open): rebuild it with `make cpp`")
    lib.evospec_drafter_open.argtypes = [ctypes.c_char_p] * 5 + [ctypes.c_int, ctypes.c_int64, ctypes.c_int,
                                                                 ctypes.POINTER(ctypes.c_void_p)]
    lib.evospec_drafter_close.argtypes = [ctypes.c_void_p]
    lib.evospec_drafter_close.restype = None
    lib.evospec_last_error.restype = ctypes.c_char_p
    lib.evospec_drafter_start.argtypes = [ctypes.c_void_p, I64P, ctypes.c_int64]
    if hasattr(lib, "evospec_drafter_start_greedy"):  # libraries built before EvoSpec's router fill lack it
        lib.evospec_drafter_start_greedy.argtypes = [ctypes.c_void_p, I64P, ctypes.c_int64, ctypes.c_int]
    lib.evospec_drafter_propose.argtypes = [ctypes.c_void_p, F32P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                                            ctypes.c_int, ctypes.c_int, I64P, I64P, I64P, ctypes.c_int64, I64P]
    if hasattr(lib, "evospec_drafter_propose_costed"):  # libraries built before value-based budgets lack it
        lib.evospec_drafter_propose_costed.argtypes = [
            ctypes.c_void_p, F32P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
            ctypes.POINTER(StepCostsC), I64P, I64P, I64P, F64P, ctypes.c_int64, I64P, I64P, I64P, F64P]
    if hasattr(lib, "evospec_drafter_propose_sampled"):  # libraries built before sampled chains lack it
        lib.evospec_drafter_propose_sampled.argtypes = [
            ctypes.c_void_p, F32P, ctypes.c_int64, ctypes.c_int64, ctypes.c_int, ctypes.c_double, F64P, I64P, I64P,
            I64P, F64P, F64P, ctypes.c_int64, I64P, ctypes.c_int64, I64P, F64P]
    lib.evospec_drafter_commit.argtypes = [ctypes.c_void_p, I64P, ctypes.c_int64]
    lib.evospec_drafter_active.argtypes = [ctypes.c_void_p, I64P, ctypes.c_int64, I64P, I64P]
    lib.evospec_drafter_sizes.argtypes = [ctypes.c_void_p, I64P]
    if hasattr(lib, "evospec_drafter_policy_ms"):  # libraries built before the step breakdown saw the policy lack it
        lib.evospec_drafter_policy_ms.argtypes = [ctypes.c_void_p, F64P]
    if hasattr(lib, "evospec_drafter_set_siblings"):  # libraries built before chains with siblings lack it
        lib.evospec_drafter_set_siblings.argtypes = [ctypes.c_void_p, ctypes.c_int]
    if hasattr(lib, "evospec_drafter_set_sibling_ratio"):  # ... and before the siblings' ratio test
        lib.evospec_drafter_set_sibling_ratio.argtypes = [ctypes.c_void_p, ctypes.c_double]
    return lib
