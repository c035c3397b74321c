"""`evospec profile stages`: tables and JSON rows on tiny shapes (production shapes behind `slow`)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from evospec.eval.profile_stages import SYNTHETIC_SHAPES

from .test_cli import run

pytest.importorskip("onnxruntime", reason="profiling the ort backend needs onnxruntime")


def test_shapes_file_mirrors_the_presets():
    path = Path(__file__).parents[1] / "configs" / "profile-shapes.toml"
    assert tomllib.loads(path.read_text()) == SYNTHETIC_SHAPES


@pytest.mark.parametrize("backend", ["ort", "torch"])
def test_profile_synthetic_rows(tmp_path, backend):
    out = tmp_path / "p.json"
    proc = run("profile", "stages", "--synthetic", "tiny", "--backend", backend, "--buckets", "256,1024",
               "--runs", "5", "--json", str(out))
    assert "head_full" in proc.stdout and "vs full head" in proc.stdout
    rows = json.loads(out.read_text())
    stages = [(r["stage"], r["active_size"]) for r in rows]
    updates = [("update_head_rows", 1024), ("update_trunk", 0)] if backend == "ort" else []
    assert stages == [("trunk", 0), ("head", 256), ("head", 1024), ("head_active", 256), ("head_active", 1024),
                      ("delta", 256), ("delta", 1024), ("head_full", 4096), ("gather", 256),
                      ("gather", 1024), *updates, ("topk", 256), ("topk", 1024), ("topk", 4096)]
    for r in rows:
        assert 0 < r["median_ms"] <= r["p90_ms"] and r["runs"] == 5
        assert r["backend"] == (backend if r["stage"] in ("trunk", "head", "head_active", "head_full") or "update" in r["stage"]
                                else "torch")


@pytest.mark.slow  # `profile stages` end to end stays in the default run (test_profile_synthetic_rows)
def test_profile_bundle_and_bad_input(tmp_path):
    from evospec.train.demo_pair import ASSET_DIR

    bundle = tmp_path / "b"
    run("compile", "--target", str(ASSET_DIR / "target"), "--drafter", str(ASSET_DIR / "drafter"), "--out", str(bundle),
        "--buckets", "384,512")
    out = tmp_path / "p.json"
    run("profile", "stages", "--bundle", str(bundle), "--buckets", "128,384", "--runs", "3", "--json", str(out))
    rows = json.loads(out.read_text())
    assert [(r["stage"], r["active_size"]) for r in rows if r["stage"] != "topk"][:8] == [
        ("trunk", 0), ("head", 128), ("head", 384), ("head_active", 128), ("head_active", 384), ("delta", 128),
        ("delta", 384), ("head_full", 512)]
    for args, message in ((["--synthetic", "gpt5"], "no synthetic shape 'gpt5'"),
                          (["--synthetic", "tiny", "--bundle", str(bundle)], "exactly one of"),
                          (["--bundle", str(tmp_path / "none")], "does not exist")):
        proc = run("profile", "stages", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


@pytest.mark.slow
def test_profile_production_shape(tmp_path):
    """llama3-8b shape with ONNX Runtime (about 4 GB of random weights; run with -m slow)."""
    out = tmp_path / "p.json"
    run("profile", "stages", "--synthetic", "llama3-8b", "--buckets", "16384", "--runs", "5", "--json", str(out))
    rows = {(r["stage"], r["active_size"]): r for r in json.loads(out.read_text())}
    assert rows[("head", 16384)]["median_ms"] < rows[("head_full", 128256)]["median_ms"]
