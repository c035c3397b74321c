"""The design card's folders install only under ``evospec.*``; nothing generic lands in site-packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    return next(out.glob("evospec-*.whl"))


def test_only_evospec_at_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"evospec"}
    for sub in ("runtime", "passes", "exporters"):
        assert f"evospec/{sub}/__init__.py" in names
    for asset in ("target/model.safetensors", "target/tokenizer.json", "drafter/model.safetensors", "recipe.json"):
        assert f"evospec/assets/demo/{asset}" in names


def test_import_without_optional_backends():
    code = "import sys, evospec, evospec.cli; bad = {'tensorrt', 'onnxruntime', 'onnx', 'triton'} & set(sys.modules); print(bad)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"
