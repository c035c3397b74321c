"""vLLM serves our exported drafters: greedy output equal to the target's, acceptance equal to our runtime's.

vLLM lives in its own environment (`make vllm-setup` builds .venv-vllm; EVOSPEC_VLLM_BIN points elsewhere).
These tests run `evospec bench --engine both` there: this runtime and vLLM's CPU engine decode the same prompts
with the same exported drafter, and the JSON rows are compared.
"""

from __future__ import annotations

import json
import os
import subprocess
from functools import cache
from pathlib import Path

import pytest
import torch

from evospec.bundle.export import export_drafter
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.train.demo_pair import ASSET_DIR

from .test_bench import CODE, PROSE

REPO = Path(__file__).resolve().parents[1]
VLLM_BIN = Path(os.environ.get("EVOSPEC_VLLM_BIN", REPO / ".venv-vllm" / "bin"))
DEPTH = 4


@cache
def vllm_missing() -> str | None:
    python = VLLM_BIN / "python"
    if not python.exists():
        return f"no vLLM environment at {VLLM_BIN} (make vllm-setup builds it)"
    proc = subprocess.run([str(python), "-c", "import vllm, evospec"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return f"vllm or evospec does not import in {VLLM_BIN}: {proc.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture
def vllm_bin():
    if (reason := vllm_missing()) is not None:
        pytest.skip(reason)
    return VLLM_BIN


@pytest.fixture
def corpus(tmp_path):
    for domain, text in (("code", CODE), ("prose", PROSE)):
        (tmp_path / "corpus" / domain / "test").mkdir(parents=True)
        for i in range(2):
            (tmp_path / "corpus" / domain / "test" / f"{i}.txt").write_text(text * (4 + i))
    return tmp_path / "corpus"


def bench_both(vllm_bin: Path, drafter: Path, corpus: Path, out: Path, batches: str) -> list[dict]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run(
        [str(vllm_bin / "evospec"), "bench", "--engine", "both", "--target", str(ASSET_DIR / "target"),
         "--drafter", str(drafter), "--vllm-drafter", str(drafter), "--corpus", str(corpus), "--prompts", "2",
         "--prompt-tokens", "16", "--max-new-tokens", "24", "--draft-tree", "chain", "--draft-depth", str(DEPTH),
         "--batch", batches, "--vllm-eager", "--json", str(out)],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


def check_side_by_side(rows: list[dict], batches: list[int]) -> None:
    ours = {r["domain"]: r for r in rows if r["engine"] == "evospec" and r["method"] == "eagle3"}
    theirs = [r for r in rows if r["engine"] == "vllm"]
    assert sorted({(r["batch"], r["method"]) for r in theirs}) == sorted((b, m) for b in batches for m in ("eagle3", "plain"))
    for row in theirs:
        assert row["identical_to_plain"] is True, row  # the target's own greedy output, token for token
        assert row["new_tokens"] == ours[row["domain"]]["new_tokens"]
        if row["method"] == "eagle3":
            mine = ours[row["domain"]]
            # The same drafter through two engines: acceptance per position within one draft in ten (float
            # kernels may break a near-tie differently); a drafter vLLM loaded wrongly accepts next to nothing.
            assert len(row["acceptance_per_depth"]) == DEPTH
            assert all(abs(a - b) <= 0.1 for a, b in zip(row["acceptance_per_depth"], mine["acceptance_per_depth"]))
            assert row["mean_accepted_length"] == pytest.approx(mine["mean_accepted_length"], abs=0.25)
            assert row["mean_accepted_length"] > 1.5


@pytest.mark.vllm
def test_vllm_serves_the_exported_drafter_exactly(vllm_bin, corpus, tmp_path):
    export_drafter(tmp_path / "eagle3", "vllm", drafter_dir=ASSET_DIR / "drafter")
    rows = bench_both(vllm_bin, tmp_path / "eagle3", corpus, tmp_path / "rows.json", "1,2")
    check_side_by_side(rows, [1, 2])


@pytest.mark.vllm
@pytest.mark.slow  # the same side-by-side check as the eagle3 export's (default run), on a pruned head
def test_vllm_serves_an_frspec_pruned_export_exactly(vllm_bin, corpus, tmp_path):
    from transformers import AutoTokenizer

    counts = torch.ones(512, dtype=torch.long)  # FR-Spec's list: the tokens of the text, most frequent first
    ids = torch.tensor(AutoTokenizer.from_pretrained(ASSET_DIR / "target")(CODE + PROSE)["input_ids"])
    counts += torch.bincount(ids, minlength=512)
    TokenFrequencies(512, counts, documents=1, source="test").save(tmp_path / "freq.json")
    summary = export_drafter(tmp_path / "fr", "vllm", "frspec:160", drafter_dir=ASSET_DIR / "drafter",
                             frequencies=tmp_path / "freq.json")
    assert summary.draft_vocab_size == 160
    assert json.loads((tmp_path / "fr" / "config.json").read_text())["draft_vocab_size"] == 160
    rows = bench_both(vllm_bin, tmp_path / "fr", corpus, tmp_path / "rows.json", "1")
    check_side_by_side(rows, [1])


@pytest.mark.vllm
@pytest.mark.slow  # vLLM's one-line errors stay in the default run (test_a_corrupt_vllm_drafter_config_is_named)
def test_a_head_size_vllm_has_no_cpu_kernel_for_is_refused_by_name(vllm_bin, checkpoint_dirs, corpus):
    target_dir, drafter_dir, _, _ = checkpoint_dirs  # head_dim 8
    proc = subprocess.run(
        [str(vllm_bin / "evospec"), "bench", "--engine", "vllm", "--target", str(target_dir), "--drafter",
         str(drafter_dir), "--corpus", str(corpus), "--draft-tree", "chain"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{target_dir}: head_dim 8 has no kernel in vLLM's CPU attention" in proc.stderr


def test_without_vllm_the_engine_option_says_how_to_get_it(corpus):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed in this test environment itself")
    from .test_cli import run

    proc = run("bench", "--engine", "vllm", "--target", str(ASSET_DIR / "target"), "--drafter",
               str(ASSET_DIR / "drafter"), "--corpus", str(corpus), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "make vllm-setup" in proc.stderr


@pytest.mark.vllm
def test_a_corrupt_vllm_drafter_config_is_named(vllm_bin, corpus, tmp_path):
    bad = tmp_path / "bad-drafter"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    proc = subprocess.run(
        [str(vllm_bin / "evospec"), "bench", "--engine", "vllm", "--target", str(ASSET_DIR / "target"), "--drafter",
         str(ASSET_DIR / "drafter"), "--vllm-drafter", str(bad), "--corpus", str(corpus), "--draft-tree", "chain"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad / 'config.json'} is not valid JSON" in proc.stderr


def test_siblings_are_refused_beside_vllm(corpus):
    """vLLM drafts a plain chain: a side by side with --draft-siblings would give the two sides different shapes."""
    from .test_cli import run

    proc = run("bench", "--engine", "both", "--target", str(ASSET_DIR / "target"), "--drafter",
               str(ASSET_DIR / "drafter"), "--corpus", str(corpus), "--draft-tree", "chain", "--draft-siblings", "2",
               check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "vLLM drafts a plain chain" in proc.stderr
