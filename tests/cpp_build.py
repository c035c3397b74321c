"""Building the C++ library (runtime/cpp) for the tests that load it: the toolchain check, a cmake build into a
folder, and whether the library `make cpp` built is current (then the tests load it instead of building one)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import sys
from pathlib import Path

CPP_SOURCE = Path(__file__).resolve().parent.parent / "runtime" / "cpp"
NEWEST_SYMBOL = "evospec_greedy_choice"  # a library without it predates the newest C API


def tool(name: str) -> str | None:
    """``name`` on PATH, or beside this Python (``pip install cmake ninja`` puts them in the venv's bin,
    which `make test` does not put on PATH)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def toolchain_problem() -> str | None:
    """Why the library cannot be built here, or None."""
    if tool("cmake") is None:
        return "cmake is not installed (apt install cmake, or pip install cmake)"
    if shutil.which("c++") is None and shutil.which("g++") is None:
        return "no C++ compiler (c++/g++) on PATH"
    import torch.utils

    if not (Path(torch.utils.cmake_prefix_path) / "Torch" / "TorchConfig.cmake").is_file():
        return "this torch wheel ships no libtorch CMake config (torch/share/cmake/Torch)"
    return None


def build_cpp(build: Path, *targets: str) -> None:
    """Configure runtime/cpp into ``build`` with cmake (Ninja where there is one) and build ``targets``
    (none: all) against this torch's libtorch."""
    import torch.utils

    cmake, ninja = tool("cmake"), tool("ninja")
    generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
    chosen = [arg for target in targets for arg in ("--target", target)]
    for cmd in ([cmake, "-S", str(CPP_SOURCE), "-B", str(build), *generator, "-DCMAKE_BUILD_TYPE=Release",
                 f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"],
                [cmake, "--build", str(build), "-j2", *chosen]):
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1200)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def current_library(path: Path) -> bool:
    """``path`` is a library built from the current runtime/cpp sources, with the newest C API."""
    if not path.is_file() or not hasattr(ctypes.CDLL(str(path)), NEWEST_SYMBOL):
        return False
    sources = [p for p in CPP_SOURCE.rglob("*") if p.suffix in (".cpp", ".hpp", ".h") and "third_party" not in p.parts]
    return max(p.stat().st_mtime for p in sources) <= path.stat().st_mtime
