"""``evospec record-drafts`` and ``evospec profile cpp``: the C++ drafter library (runtime/cpp)
checked and timed against the Python runtime on recorded inputs."""

from __future__ import annotations

from pathlib import Path

import click

from evospec.cli.output import emit_report


@click.command("record-drafts")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path), help="A torch bundle.")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path), help="The target it was compiled for.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Recording directory to write.")
@click.option("--prompt", default=None, help="Prompt text (the target's tokenizer).")
@click.option("--prompt-ids", default=None, help="Or comma-separated prompt token ids.")
@click.option("--vocab", default=None, help="Vocabulary policy (full, eagle3, frspec:K, evospec:K[:sync|:VARIANT], dynaspec:K:C).")
@click.option("--frequencies", type=click.Path(path_type=Path), default=None, help="Frequency file (default: the bundle's).")
@click.option("--router", type=click.Path(path_type=Path), default=None, help="DynaSpec router file (dynaspec:K:C).")
@click.option("--max-new-tokens", type=int, default=64, show_default=True)
@click.option("--draft-tree", type=click.Choice(["chain", "tree"]), default="tree", show_default=True)
@click.option("--draft-depth", type=int, default=5, show_default=True)
@click.option("--draft-topk", type=int, default=8, show_default=True)
@click.option("--draft-tokens", type=int, default=32, show_default=True)
@click.option("--draft-siblings", type=click.IntRange(min=0), default=0, show_default=True,
              help="A chain's second choices at its first N levels, as leaves (DecodeSettings.draft_siblings).")
@click.option("--draft-sibling-ratio", type=float, default=0.0, show_default=True,
              help="Keep a level's second choice only where the first is less than this many times as likely (0: all).")
def record_drafts_cmd(bundle_dir, target_dir, out, prompt, prompt_ids, vocab, frequencies, router, max_new_tokens,
                      draft_tree, draft_depth, draft_topk, draft_tokens, draft_siblings, draft_sibling_ratio) -> None:
    """Generate greedily with the Python runtime and record each draft step's inputs and outputs."""
    from evospec.core.errors import SettingsError
    from evospec.core.settings import DecodeSettings
    from evospec.eval.record_drafts import record

    if (prompt is None) == (prompt_ids is None):
        raise SettingsError("give exactly one of --prompt and --prompt-ids")
    ids = prompt if prompt is not None else [int(x) for x in prompt_ids.split(",")]
    settings = DecodeSettings(max_new_tokens=max_new_tokens, draft_tree=draft_tree, draft_depth=draft_depth,
                              draft_topk=draft_topk, draft_tokens=draft_tokens, draft_siblings=draft_siblings,
                              draft_sibling_ratio=draft_sibling_ratio)
    recording = record(bundle_dir, target_dir, ids, out, settings, vocab=vocab, frequencies=frequencies, router=router)
    click.echo(f"recorded {len(recording['steps'])} draft steps ({len(recording['new_tokens'])} new tokens) in {out}")


@click.command("cpp")
@click.option("--bundle", "bundle_dir", required=True, type=click.Path(path_type=Path))
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path))
@click.option("--recording", required=True, type=click.Path(path_type=Path), help="From `evospec record-drafts`.")
@click.option("--binary", type=click.Path(path_type=Path), default=None,
              help="evospec-draft (default: build/cpp/evospec-draft, what `make cpp` builds).")
@click.option("--repeat", type=int, default=5, show_default=True, help="Replays per side; each step's best is kept.")
@click.option("--threads", type=int, default=None, help="Intra-op threads for both runtimes (default: each one's own).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the result as JSON here.")
def profile_cpp_cmd(bundle_dir, target_dir, recording, binary, repeat, threads, json_path) -> None:
    """The C++ drafter step against the Python one on the same recorded inputs (and whether they agree)."""
    from evospec.core.text_table import text_table
    from evospec.eval.cpp_drafter import DEFAULT_BINARY, profile_cpp

    row = profile_cpp(binary or DEFAULT_BINARY, bundle_dir, target_dir, recording, repeat, threads)
    table = text_table(
        ["runtime", "median drafter step ms", "time / C++ time", "steps", "trees + active sets equal the recording"],
        [["python", f"{row['python_step_ms_median']:.3f}", f"{row['python_over_cpp']:.2f}x", row["steps"],
          "yes" if not row["python_replay_mismatches_vs_recording"] else "NO"],
         ["c++", f"{row['cpp_step_ms_median']:.3f}", "1.00x", row["steps"],
          "yes" if not row["cpp_mismatches_vs_recording"] else "NO"]])
    emit_report(table, [row], json_path)
