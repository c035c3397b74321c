"""End-to-end tests of the installed ``evospec`` console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import char_tokenizer, hf_greedy

EVOSPEC = shutil.which("evospec") or str(Path(sys.executable).parent / "evospec")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([EVOSPEC, *args], capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_generate_json_matches_target_greedy(checkpoint_dirs):
    target_dir, drafter_dir, model, _ = checkpoint_dirs
    proc = run(
        "generate", "--target", str(target_dir), "--drafter", str(drafter_dir), "--prompt-ids", "1,2,3",
        "--max-new-tokens", "20", "--draft-tree", "tree", "--draft-depth", "3", "--draft-topk", "2",
        "--draft-tokens", "6", "--json",
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["token_ids"] == hf_greedy(model, [1, 2, 3], 20)
    for key in ("steps", "accepted_lengths", "mean_accepted_length", "tokens_per_second", "wall_time_s", "text"):
        assert key in out
    assert out["steps"] == len(out["accepted_lengths"])
    fallback = run(
        "generate", "--target", str(target_dir), "--drafter", str(drafter_dir), "--prompt-ids", "1,2,3",
        "--max-new-tokens", "40", "--draft-tree", "chain", "--draft-depth", "3", "--plain-fallback", "--json",
    )
    out = json.loads(fallback.stdout.strip().splitlines()[-1])
    assert out["token_ids"] == hf_greedy(model, [1, 2, 3], 40)
    assert out["steps"] >= 8 and out["plain_steps"] >= 2  # the gate's plain probes follow its 5 speculative steps
    siblings = run(
        "generate", "--target", str(target_dir), "--drafter", str(drafter_dir), "--prompt-ids", "1,2,3",
        "--max-new-tokens", "20", "--draft-tree", "chain", "--draft-depth", "3", "--draft-siblings", "2", "--json",
    )
    assert json.loads(siblings.stdout.strip().splitlines()[-1])["token_ids"] == hf_greedy(model, [1, 2, 3], 20)
    refused = run("generate", "--target", str(target_dir), "--drafter", str(drafter_dir), "--prompt-ids", "1",
                  "--draft-tree", "tree", "--draft-siblings", "2", check=False)
    assert refused.returncode != 0 and "a tree has its own children" in refused.stderr
    assert "Traceback" not in refused.stderr
    ratio = run("generate", "--target", str(target_dir), "--drafter", str(drafter_dir), "--prompt-ids", "1",
                "--draft-tree", "chain", "--draft-siblings", "2", "--draft-sibling-ratio", "0.5", check=False)
    assert ratio.returncode != 0 and "draft_sibling_ratio must be 0" in ratio.stderr
    assert "Traceback" not in ratio.stderr


def test_generate_text_prompt_with_tokenizer_and_no_draft(tmp_path):
    import dataclasses

    from evospec.testing.tiny import TINY_SHAPES, tiny_target

    model = tiny_target(dataclasses.replace(TINY_SHAPES["llama"], vocab_size=len(char_tokenizer())), seed=5)
    target_dir = tmp_path / "target"
    model.save_pretrained(target_dir)
    char_tokenizer().save_pretrained(target_dir)
    proc = run("generate", "--target", str(target_dir), "--no-draft", "--prompt", "ab", "--max-new-tokens", "8", "--json")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["token_ids"] == hf_greedy(model, [65, 66], 8)
    assert out["text"] == char_tokenizer().decode(out["token_ids"])
    assert out["accepted_lengths"] == [0] * 7


def test_generate_sampling_stream_and_table(checkpoint_dirs):
    target_dir, drafter_dir, _, _ = checkpoint_dirs
    proc = run(
        "generate", "--target", str(target_dir), "--drafter", str(drafter_dir), "--prompt-ids", "4,5",
        "--max-new-tokens", "12", "--temperature", "0.8", "--top-p", "0.9", "--seed", "3", "--stream",
    )
    assert "mean accepted length" in proc.stdout and "tokens/s" in proc.stdout


@pytest.mark.parametrize("children", ["sampled", pytest.param("topk", marks=pytest.mark.slow)])
def test_generate_sampled_tree(checkpoint_dirs, children):
    """``--tree-children``: a sampled tree's children drawn from the drafter, or its top-k; both decode, draft and
    report their accepted lengths."""
    target_dir, drafter_dir, _, _ = checkpoint_dirs
    proc = run(
        "generate", "--target", str(target_dir), "--drafter", str(drafter_dir), "--prompt-ids", "4,5",
        "--max-new-tokens", "16", "--temperature", "1", "--seed", "3", "--draft-tree", "tree", "--draft-depth", "3",
        "--draft-topk", "2", "--draft-tokens", "6", "--tree-children", children, "--json",
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(out["token_ids"]) == 16 and out["steps"] >= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--drafter", "{tmp}/missing"], "drafter directory"),
        (["--drafter", "{target}"], "not an EAGLE-3 drafter"),
        (["--drafter", "{drafter}", "--draft-depth", "0"], "draft_depth must be >= 1"),
        (["--drafter", "{drafter}", "--target", "{tmp}"], "config.json is missing"),
    ],
    ids=["missing-drafter", "target-as-drafter", "bad-setting", "target-not-a-model"],
)
def test_bad_input_is_one_line_and_exit_2(checkpoint_dirs, tmp_path, args, message):
    target_dir, drafter_dir, _, _ = checkpoint_dirs
    args = [a.format(tmp=tmp_path, target=target_dir, drafter=drafter_dir) for a in args]
    proc = run("generate", "--target", str(target_dir), *args, "--prompt-ids", "1", check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_demo_runs_the_shipped_pair():
    proc = run("demo", "--max-new-tokens", "24", "--json")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    steps, emitted = out["steps"], out["step_tokens"]
    assert len(out["token_ids"]) == 24 and sum(emitted) == 23 and len(emitted) == steps  # the prefill gives one
    assert out["mean_accepted_length"] == pytest.approx(23 / steps) and out["mean_accepted_length"] > 1  # it drafts
    assert emitted[:-1] == [a + 1 for a in out["accepted_lengths"][:-1]]  # accepted + the target's; the last is cut
    assert emitted[-1] <= out["accepted_lengths"][-1] + 1
    assert out["text"]
    table = run("demo", "--max-new-tokens", "24", "--draft-tree", "chain").stdout
    assert "mean accepted length" in table and "identical tokens: True" in table


def test_build_demo_writes_a_loadable_pair(tmp_path):
    run("build-demo", "--out", str(tmp_path / "pair"), "--target-steps", "2", "--drafter-steps", "2")
    for name in ("target/tokenizer.json", "target/model.safetensors", "drafter/model.safetensors", "recipe.json"):
        assert (tmp_path / "pair" / name).exists()
    proc = run("demo", "--pair", str(tmp_path / "pair"), "--max-new-tokens", "8", "--json")
    assert len(json.loads(proc.stdout.strip().splitlines()[-1])["token_ids"]) == 8
