"""The C++ drafter's loader fails with one clear line when the library is missing or is not ours
(the library itself is built and checked against Python in tests/test_cpp.py, marker cpp)."""

from __future__ import annotations

import ctypes.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from evospec.cli import main
from evospec.core.errors import SettingsError
from evospec.runtime.native_drafter import NativeDrafter
from evospec.train.demo_pair import ASSET_DIR


def test_a_missing_library_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOSPEC_CPP_LIBRARY", str(tmp_path / "none.so"))
    with pytest.raises(SettingsError, match=r"none\.so does not exist: build the C\+\+ drafter library with `make cpp`"):
        NativeDrafter(tmp_path)


def test_a_library_without_the_c_api_is_refused(tmp_path):
    libm = ctypes.util.find_library("m")
    if libm is None:
        pytest.skip("no libm to stand in for a foreign library")
    path = next((p for p in (Path("/lib/x86_64-linux-gnu") / libm, Path("/usr/lib/x86_64-linux-gnu") / libm,
                             Path("/lib64") / libm, Path("/usr/lib64") / libm) if p.is_file()), None)
    if path is None:
        pytest.skip(f"{libm} not found in the usual folders")
    with pytest.raises(SettingsError, match="has no C API"):
        NativeDrafter(tmp_path, library=path)


def test_cli_refuses_the_cpp_runtime_without_a_bundle():
    done = CliRunner().invoke(main, ["generate", "--target", str(ASSET_DIR / "target"), "--drafter",
                                     str(ASSET_DIR / "drafter"), "--prompt-ids", "1,2", "--drafter-runtime", "cpp"])
    assert done.exit_code == 2 and "--drafter-runtime cpp needs --bundle" in done.output
