"""CLI commands that train the reference pair: ``train target|drafter`` and ``reference build``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from evospec.core.errors import SettingsError
from evospec.core.settings import DEFAULT_THREADS

_device = click.option("--device", default="cpu", show_default=True, help="Where to train: cpu or cuda.")
_threads = click.option("--threads", type=click.IntRange(min=1), default=DEFAULT_THREADS, show_default=True,
                        help="Torch intra-op threads, pinned so a rebuild gives the same weights.")


def _parse_taps(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        return tuple(int(t) for t in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer indices such as 1,3,5, got {value!r}") from None


@click.group()
def train() -> None:
    """Train reference targets and EAGLE-3 drafters on a corpus (CPU recipes)."""


@train.command("target")
@click.option("--corpus", required=True, type=click.Path(path_type=Path))
@click.option("--tokenizer", "tokenizer_dir", required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--recipe", "recipe_name", default="tiny", show_default=True,
              help="tiny, medium, or a TOML file with a [target] table (see configs/reference-*.toml).")
@click.option("--steps", type=int, default=None, help="Override the recipe's step count.")
@_device
@_threads
def train_target_cmd(corpus, tokenizer_dir, out, recipe_name, steps, device, threads):
    """A Llama-architecture target with the tokenizer's full vocabulary (sampled-softmax training)."""
    from evospec.core.determinism import reproducible
    from evospec.core.progress import loss_progress
    from evospec.data.corpus import corpus_domains
    from evospec.runtime.target import load_tokenizer
    from evospec.train.recipes import recipe_named
    from evospec.train.target import save_target, train_target

    recipe = recipe_named(recipe_name).target
    if steps:
        recipe = dataclasses.replace(recipe, steps=steps)
    corpus_domains(corpus)  # a missing or empty corpus fails here, before the tokenizer loads
    tokenizer = load_tokenizer(tokenizer_dir)
    with loss_progress("training target", transient=True) as bar, reproducible(threads, device):
        task = bar.add_task("t", total=recipe.steps, loss=float("nan"))
        model, valid = train_target(tokenizer, str(corpus), recipe,
                                    lambda step, loss: bar.update(task, completed=step + 1, loss=loss), device=device)
    save_target(model, tokenizer, out, recipe, valid)
    for domain, loss in sorted(valid.items()):
        click.echo(f"valid loss {domain}: {loss:.3f}")
    click.echo(f"wrote {out}")


@train.command("drafter")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path))
@click.option("--corpus", required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--recipe", "recipe_name", default="tiny", show_default=True,
              help="tiny, medium, or a TOML file with a [drafter] table; the options below override it.")
@click.option("--draft-vocab", type=int, default=None, help="Draft vocabulary size (most frequent corpus tokens).")
@click.option("--steps", type=int, default=None)
@click.option("--unroll", type=int, default=None, help="Training-time-test levels.")
@click.option("--seq-len", type=int, default=None)
@click.option("--windows", type=int, default=None, help="Training windows drawn from the corpus.")
@click.option("--taps", callback=_parse_taps, default=None,
              help="Target hidden states to fuse, e.g. 1,3,5 (distinct, ascending; default EAGLE-3's 2,L//2,L-3).")
@_device
@_threads
def train_drafter_cmd(target_dir, corpus, out, recipe_name, device, threads, **overrides):
    """An EAGLE-3 drafter for TARGET, written in the official checkpoint layout."""
    from evospec.core.determinism import reproducible
    from evospec.core.progress import loss_progress
    from evospec.data.corpus import corpus_domains
    from evospec.runtime.checkpoint import save_drafter
    from evospec.runtime.target import load_target
    from evospec.train.drafter import checked_taps, train_drafter
    from evospec.train.recipes import recipe_named

    recipe = dataclasses.replace(recipe_named(recipe_name).drafter, **{k: v for k, v in overrides.items() if v is not None})
    corpus_domains(corpus)
    target = load_target(target_dir, device=device)
    if target.tokenizer is None:
        raise click.UsageError(f"{target_dir} has no tokenizer; the corpus must be tokenised with the target's own")
    checked_taps(recipe.taps, target.num_layers)  # refuse before the corpus is tokenised
    with loss_progress("training drafter", transient=True) as bar, reproducible(threads, device):
        task = bar.add_task("d", total=recipe.steps, loss=float("nan"))
        drafter, losses = train_drafter(target, target.tokenizer, str(corpus), recipe,
                                        lambda step, loss: bar.update(task, completed=step + 1, loss=loss))
    save_drafter(drafter, out)
    click.echo(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; taps {drafter.config.tap_layers}; wrote {out}")


@train.command("calibrate-head")
@click.option("--target", "target_dir", required=True, type=click.Path(path_type=Path))
@click.option("--corpus", required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), default=None, help="Adam steps (default: HeadCalibration).")
@_threads
def calibrate_head_cmd(target_dir, corpus, out, steps, threads):
    """Fit a sampled-softmax target's never-trained output rows with the full softmax (trunk and seen rows frozen).

    Writes a new target folder (untied output layer) with ``calibration.json``: rows fitted, exact
    full-vocabulary validation loss per domain before and after, and the step chosen on the valid split.
    """
    from evospec.core.determinism import reproducible
    from evospec.core.progress import loss_progress
    from evospec.data.corpus import corpus_domains
    from evospec.train.calibrate_head import HeadCalibration, calibrate_head, save_calibrated

    settings = HeadCalibration() if steps is None else dataclasses.replace(HeadCalibration(), steps=steps)
    corpus_domains(corpus)
    with loss_progress("calibrating head", transient=True) as bar, reproducible(threads, "cpu"):
        model, tokenizer = _load_hf_target(target_dir)
        task = bar.add_task("c", total=settings.steps, loss=float("nan"))
        report = calibrate_head(model, tokenizer, str(corpus), settings,
                                lambda step, loss: bar.update(task, completed=step + 1, loss=loss))
    save_calibrated(model, tokenizer, out, settings, report)
    for domain in sorted(report["valid_loss_before"]):
        click.echo(f"valid loss {domain}: {report['valid_loss_before'][domain]:.3f} -> {report['valid_loss_after'][domain]:.3f}")
    click.echo(f"fitted {report['rows_fitted']} unseen rows (best step {report['best_step']}); wrote {out}")


def _load_hf_target(directory: Path):
    """The target as a plain HF model (no lean decoder: its fused weights are views) and its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from evospec.runtime.target import load_tokenizer

    tokenizer = load_tokenizer(directory)  # a missing folder or tokenizer fails here with the folder's name
    try:
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, local_files_only=True)
    except Exception as exc:  # transformers raises many types; name the folder
        raise click.UsageError(f"{directory}: not a loadable causal LM ({type(exc).__name__}: {exc})") from None
    if not hasattr(model, "lm_head"):
        raise click.UsageError(f"{directory}: {type(model).__name__} has no lm_head to calibrate")
    return model, tokenizer


@click.group()
def reference() -> None:
    """The reference pair: real corpora, Qwen's vocabulary, a target and drafter trained here."""


@reference.command("build")
@click.option("--size", default="medium", show_default=True,
              help="Recipe: tiny (minutes), medium (about 35 min on 2 cores), large (hours on 2 cores, minutes "
                   "with --device cuda), or a TOML recipe file.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Folder to build into (default: ~/.cache/evospec/reference/<size>).")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Where downloaded source archives are kept (default: ~/.cache/evospec/sources).")
@_device
@_threads
def reference_build(size, out, cache, device, threads):
    """Build (or resume) corpora, tokenizer, target and drafter; the last line printed is JSON with their paths."""
    from rich.console import Console

    from evospec.core.progress import loss_progress
    from evospec.train.recipes import recipe_named
    from evospec.train.reference import build_reference, default_root, valid_loss

    recipe = recipe_named(size)
    root = out or default_root(Path(size).stem if Path(size).suffix == ".toml" else size)
    cache = cache or Path.home() / ".cache" / "evospec" / "sources"
    tasks: dict[str, object] = {}
    console = Console(stderr=True)
    with loss_progress("{task.description}", transient=False, console=console) as bar:
        def report(stage: str, done: int, total: int, loss: float | None) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, loss=float("nan"))
            bar.update(tasks[stage], completed=done, loss=float("nan") if loss is None else loss)
            if not console.is_terminal and (done == total or done % max(1, total // 20) == 0):
                # no live bar in logs: a plain line every 5% instead
                click.echo(f"{stage} {done}/{total}" + ("" if loss is None else f" loss {loss:.3f}"), err=True)

        paths = build_reference(root, recipe, cache, report, device=device, threads=threads)
    for domain, loss in sorted(valid_loss(paths.root).items()):
        click.echo(f"valid loss {domain}: {loss:.3f}", err=True)
    click.echo(json.dumps(paths.as_json()))


@click.command("build-demo")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to write the pair into.")
@click.option("--target-steps", type=int, default=None, help="Training steps of the target (recipe default).")
@click.option("--drafter-steps", type=int, default=None, help="Distillation steps of the drafter (recipe default).")
@click.option("--reuse-target", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A pair folder whose target/ is kept unchanged: only a new drafter is distilled.")
@click.option("--layers", type=click.IntRange(min=6), default=None,
              help="Target layers (recipe default 6, taps 1,3,5); 8 or more tap EAGLE-3's default (2, L//2, L-3), "
                   "which vLLM serves without a tap list.")
def build_demo(out, target_steps, drafter_steps, reuse_target, layers):
    """Train the demo pair from the Python standard library's sources (minutes on a CPU)."""
    from evospec.train.demo_pair import DemoRecipe, build_demo_pair

    recipe = DemoRecipe()
    if layers is not None and layers != recipe.shape.layers:
        if layers < 8:
            raise SettingsError(f"--layers {layers}: EAGLE-3's default taps (2, L//2, L-3) repeat a layer below 8 "
                                "layers; use 6 (the recipe's own taps 1,3,5) or at least 8")
        recipe = dataclasses.replace(recipe, shape=dataclasses.replace(recipe.shape, layers=layers),
                                     taps=(2, layers // 2, layers - 3))
    if target_steps:
        recipe = dataclasses.replace(recipe, target_steps=target_steps)
    if drafter_steps:
        recipe = dataclasses.replace(recipe, distill=dataclasses.replace(recipe.distill, steps=drafter_steps))
    build_demo_pair(out, recipe, reuse_target=reuse_target)
    click.echo(f"wrote {out}")
