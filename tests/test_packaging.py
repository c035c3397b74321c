"""The design card's folders install only under ``evospec.*``; nothing generic lands in site-packages."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Built from a copy of the tracked sources, so setuptools' build/ folder never lands in the checkout."""
    out, source = tmp_path_factory.mktemp("wheel"), tmp_path_factory.mktemp("source") / "evospec"
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True, timeout=300,
    )
    return next(out.glob("evospec-*.whl"))


def test_only_evospec_at_top_level(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"evospec"}
    for folder in ("evospec", "runtime", "passes", "exporters"):  # every source package, sub-packages included
        for init in (ROOT / folder).rglob("__init__.py"):
            installed = "evospec/" + str(init.relative_to(ROOT / "evospec" if folder == "evospec" else ROOT))
            assert installed in names, f"{init.relative_to(ROOT)} is not in the wheel (pyproject packages)"
    for asset in ("target/model.safetensors", "target/tokenizer.json", "drafter/model.safetensors", "recipe.json"):
        assert f"evospec/assets/demo/{asset}" in names


def test_import_without_optional_backends():
    # torch and transformers may import some of these themselves where they are installed (torch's CUDA
    # builds import triton); what matters is that evospec adds none of them.
    code = (
        "import sys, torch, transformers, transformers.models.llama.modeling_llama; before = set(sys.modules); "
        "import evospec, evospec.cli, evospec.runtime.generator; "
        "print({'tensorrt', 'onnxruntime', 'onnx', 'triton', 'polygraphy'} & (set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"


def test_the_command_line_answers_without_loading_torch():
    """`evospec --help` and usage errors come back at once: the CLI loads torch only inside a command."""
    code = "import sys, evospec, evospec.cli; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
