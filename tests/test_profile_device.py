"""`profile stages --device cuda` pieces: the head benchmark on CPU (interpreter), the CLI's CUDA path."""

from __future__ import annotations

import json

import pytest
import torch

from evospec.eval.profile_device import device_table, profile_device_heads

from .test_cli import run

CUDA = torch.cuda.is_available()


def test_head_benchmark_rows_on_cpu():
    pytest.importorskip("triton", reason="Triton is not installed")
    rows = profile_device_heads("tiny", torch.device("cpu"), (256, 1024), (1, 4), runs=2, warmup=0)
    stages = {(r.stage, r.active_size, r.hidden_rows) for r in rows}
    for size in (256, 1024):
        for n in (1, 4):
            for stage in ("floor", "torch_gather_matmul", "torch_pregathered", "fused"):
                assert (stage, size, n) in stages
    assert ("head_full", 4096, 1) in stages
    floor = {(r.active_size, r.hidden_rows): r.median_ms for r in rows if r.stage == "floor"}
    assert floor[(1024, 1)] == pytest.approx(4 * floor[(256, 1)])  # bytes of the active rows / one bandwidth
    table = device_table(rows)
    assert "fused / floor" in table and "copy bandwidth" in table and "device: cpu" in table


@pytest.mark.skipif(CUDA, reason="checks the error on a machine without CUDA")
def test_cli_device_cuda_without_a_gpu_says_so():
    proc = run("profile", "stages", "--device", "cuda", "--synthetic", "tiny", check=False)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cli_device_cuda_end_to_end(tmp_path):
    out = tmp_path / "gpu.json"
    proc = run("profile", "stages", "--device", "cuda", "--synthetic", "tiny", "--buckets", "1024,2048",
               "--hidden-rows", "1,8", "--runs", "5", "--warmup", "2", "--json", str(out))
    assert "fused / floor" in proc.stdout
    rows = json.loads(out.read_text())
    assert {r["stage"] for r in rows} >= {"floor", "head_full", "torch_gather_matmul", "fused", "step_serial",
                                          "step_overlap"}
    assert all(r["median_ms"] > 0 for r in rows)
