"""The C++ drafter library against the Python runtime: run ``evospec-draft`` on a recording,
compare its trees and active sets step by step, and time both (``evospec profile cpp``).

Both sides replay the same recorded inputs without a target: per step the policy's observe and
choice, the gather-plan update and resident-row delta, the drafter's pass over the new positions
and the draft tree. What is timed is that whole drafter step; each side reports per step the best
of ``repeat`` replays, and the table gives the median over steps.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from evospec.core.errors import EvoSpecError, SettingsError
from evospec.eval.record_drafts import PythonReplay, load_recording, replay_python

DEFAULT_BINARY = Path("build/cpp/evospec-draft")  # where `make cpp` puts it


class CppDrafterError(EvoSpecError):
    """``evospec-draft`` failed; the message is its one-line error."""


def run_cpp(binary: Path, bundle: Path, recording: Path, out: Path, *, target: Path | None = None,
            vocab: str | None = None, repeat: int = 1, row_updates: Path | None = None, threads: int | None = None) -> dict:
    """Run ``evospec-draft`` and return its JSON (policy, step_ms, steps: tokens/parents/depths/active/moved).
    ``threads``: libtorch's intra-op threads there (OMP_NUM_THREADS; default: libtorch's own choice)."""
    if not Path(binary).is_file():
        raise SettingsError(f"{binary} does not exist: build the C++ library with `make cpp`")
    cmd = [str(binary), "--bundle", str(bundle), "--recording", str(recording), "--out", str(out), "--repeat", str(repeat)]
    if target is not None:
        cmd += ["--target", str(target)]
    if vocab is not None:
        cmd += ["--vocab", vocab]
    if row_updates is not None:
        cmd += ["--row-updates", str(row_updates)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise CppDrafterError(done.stderr.strip().removeprefix("evospec: error: ") or f"exit code {done.returncode}")
    return json.loads(Path(out).read_text())


def mismatches(expected_trees: list[dict], expected_active: list[list[int]], cpp: dict) -> list[str]:
    """Steps where the C++ tree or active set differs from the expected ones (empty: identical)."""
    found = []
    if len(cpp["steps"]) != len(expected_trees):
        found.append(f"{len(cpp['steps'])} C++ steps, {len(expected_trees)} expected")
    for i, (tree, active, got) in enumerate(zip(expected_trees, expected_active, cpp["steps"])):
        mine = {k: got[k] for k in ("tokens", "parents", "depths")}
        if mine != tree:
            found.append(f"step {i}: tree {mine} != {tree}")
        if got["active"] != active:
            found.append(f"step {i}: active sets differ ({len(got['active'])} vs {len(active)} ids, "
                         f"{len(set(got['active']) ^ set(active))} not shared)")
    return found


def recorded_expectations(recording: Path) -> tuple[list[dict], list[list[int]]]:
    rec, _ = load_recording(recording)
    return [s["tree"] for s in rec["steps"]], [s["active"] for s in rec["steps"]]


def profile_cpp(binary: Path, bundle: Path, target: Path, recording: Path, repeat: int = 5,
                threads: int | None = None) -> dict:
    """Replay ``recording`` through both runtimes, check they agree, and time the drafter step.
    ``threads``: intra-op threads for both sides (default: each library's own choice)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        python: PythonReplay = replay_python(bundle, target, recording, repeat=repeat)
    finally:
        torch.set_num_threads(before)
    with tempfile.TemporaryDirectory() as tmp:
        cpp = run_cpp(binary, bundle, recording, Path(tmp) / "cpp.json", target=target, repeat=repeat, threads=threads)
    expected_trees, expected_active = recorded_expectations(recording)
    rec, _ = load_recording(recording)
    py_ms, cpp_ms = statistics.median(python.step_ms), statistics.median(cpp["step_ms"])
    return {
        "bundle": str(bundle), "recording": str(recording), "vocab": rec["vocab"], "settings": rec["settings"],
        "steps": len(rec["steps"]), "repeat": repeat, "threads": threads or "default",
        "python_step_ms_median": py_ms, "cpp_step_ms_median": cpp_ms, "python_over_cpp": py_ms / cpp_ms,
        "python_step_ms": python.step_ms, "cpp_step_ms": cpp["step_ms"],
        "cpp_mismatches_vs_recording": mismatches(expected_trees, expected_active, cpp),
        "python_replay_mismatches_vs_recording": mismatches(expected_trees, expected_active,
                                                            {"steps": [{**t, "active": a} for t, a in zip(python.trees, python.active)]}),
    }
