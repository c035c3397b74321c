"""``evospec reference build``: corpora, tokenizer, target and drafter for one recipe, resumably.

Each stage writes its folder atomically, so a folder that exists is complete and is skipped on
the next run; the long target stage also saves its training state every ``save_every`` steps and
resumes from it. ``recipe.json`` pins the recipe a folder was built with: reusing a folder with
another recipe is an error, not a silent mix.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from evospec.core.atomic import write_text_atomic
from evospec.core.determinism import DEFAULT_THREADS, build_environment, reproducible
from evospec.core.errors import SettingsError
from evospec.data.build import build_corpus
from evospec.data.qwen_tokenizer import write_qwen_tokenizer
from evospec.runtime.checkpoint import save_drafter
from evospec.runtime.target import load_target, load_tokenizer
from evospec.train.drafter import train_drafter
from evospec.train.recipes import ReferenceRecipe
from evospec.train.target import save_target, train_target

Progress = Callable[[str, int, int, float | None], None]  # (stage, done, total, loss)


@dataclass(frozen=True)
class ReferencePaths:
    root: Path

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def drafter(self) -> Path:
        return self.root / "drafter"

    @property
    def target_state(self) -> Path:
        return self.root / "target.train-state.pt"

    @property
    def drafter_state(self) -> Path:
        return self.root / "drafter.train-state.pt"

    @property
    def build_record(self) -> Path:
        return self.root / "build.json"

    def as_json(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in ("corpus", "tokenizer", "target", "drafter")}


def default_root(size: str) -> Path:
    return Path.home() / ".cache" / "evospec" / "reference" / size


def _pin_recipe(paths: ReferencePaths, recipe: ReferenceRecipe) -> None:
    pinned = paths.root / "recipe.json"
    wanted = json.loads(json.dumps(asdict(recipe)))  # as read back: tuples become lists
    if pinned.exists():
        try:
            found = json.loads(pinned.read_text())
        except json.JSONDecodeError:
            raise SettingsError(f"{pinned} is not valid JSON; delete {paths.root} to rebuild") from None
        if found != wanted:
            raise SettingsError(f"{paths.root} was built with another recipe ({pinned}); use another --out or delete it")
        return
    write_text_atomic(pinned, json.dumps(wanted, indent=2))


def _record(paths: ReferencePaths, **changes: object) -> dict:
    """Update ``build.json`` (kept across resumed runs: a stage built earlier keeps its entry)."""
    record = json.loads(paths.build_record.read_text()) if paths.build_record.exists() else {}
    for key, value in changes.items():
        record[key] = {**record.get(key, {}), **value} if isinstance(value, dict) else value
    write_text_atomic(paths.build_record, json.dumps(record, indent=2))
    return record


def build_reference(
    root: Path, recipe: ReferenceRecipe, source_cache: Path, progress: Progress | None = None, save_every: int = 100,
    device: str = "cpu", threads: int = DEFAULT_THREADS,
) -> ReferencePaths:
    """Build (or finish building) the reference pair under ``root``; returns its paths.

    Args:
        root: The pair's folder.
        recipe: Target and drafter recipes (pinned in ``recipe.json``).
        source_cache: Where downloaded source archives are kept.
        progress: Called as (stage, done, total, loss).
        save_every: Steps between training-state saves (both training stages resume from them).
        device: Where the target and drafter train (``cpu`` or ``cuda``).
        threads: Torch intra-op threads, pinned for reproducibility (recorded in ``build.json``).
    """

    report = progress or (lambda stage, done, total, loss: None)
    paths = ReferencePaths(root)
    root.mkdir(parents=True, exist_ok=True)
    _pin_recipe(paths, recipe)
    if not paths.tokenizer.exists():
        write_qwen_tokenizer(paths.tokenizer, None, lambda done: report("tokenizer", done, 151_643, None))
    tokenizer = load_tokenizer(paths.tokenizer)
    if not paths.corpus.exists():
        report("corpus", 0, 1, None)
        build_corpus(paths.corpus, source_cache, tokenizer=tokenizer)
        report("corpus", 1, 1, None)
    with reproducible(threads, device):
        if not paths.target.exists():
            steps, started = recipe.target.steps, time.perf_counter()
            model, valid = train_target(tokenizer, str(paths.corpus), recipe.target,
                                        lambda step, loss: report("target", step + 1, steps, loss),
                                        state_path=paths.target_state, save_every=save_every, device=device)
            save_target(model, tokenizer, paths.target, recipe.target, valid)
            paths.target_state.unlink(missing_ok=True)
            _record(paths, target={"valid_loss": valid, "seconds": round(time.perf_counter() - started, 1),
                                   "environment": build_environment(threads, device)})
        if not paths.drafter.exists():
            target = load_target(paths.target, device=device)
            steps, started = recipe.drafter.steps, time.perf_counter()
            drafter, losses = train_drafter(target, tokenizer, str(paths.corpus), recipe.drafter,
                                            lambda step, loss: report("drafter", step + 1, steps, loss),
                                            state_path=paths.drafter_state, save_every=save_every)
            save_drafter(drafter, paths.drafter)
            paths.drafter_state.unlink(missing_ok=True)
            _record(paths, drafter={"first_loss": losses[0], "final_loss": losses[-1],
                                    "taps": list(drafter.config.tap_layers),
                                    "seconds": round(time.perf_counter() - started, 1),
                                    "environment": build_environment(threads, device)})
    return paths


def valid_loss(root: Path) -> dict[str, float]:
    """The target's full-vocabulary validation loss per domain, as the build recorded it."""
    training = ReferencePaths(root).target / "training.json"
    return json.loads(training.read_text())["valid_loss"] if training.exists() else {}
