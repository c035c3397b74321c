"""``evospec reference build``: corpora, tokenizer, target and drafter for one recipe, resumably.

Each stage writes its folder atomically, so a folder that exists is complete and is skipped on
the next run; the long target stage also saves its training state every ``save_every`` steps and
resumes from it. ``recipe.json`` pins the recipe a folder was built with: reusing a folder with
another recipe is an error, not a silent mix.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from evospec.atomic import write_text_atomic
from evospec.errors import SettingsError
from evospec.recipes import ReferenceRecipe

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

    def as_json(self) -> dict[str, str]:
        return {name: str(getattr(self, name)) for name in ("corpus", "tokenizer", "target", "drafter")}


def default_root(size: str) -> Path:
    return Path.home() / ".cache" / "evospec" / "reference" / size


def _pin_recipe(paths: ReferencePaths, recipe: ReferenceRecipe) -> None:
    pinned = paths.root / "recipe.json"
    wanted = asdict(recipe)
    if pinned.exists():
        try:
            found = json.loads(pinned.read_text())
        except json.JSONDecodeError:
            raise SettingsError(f"{pinned} is not valid JSON; delete {paths.root} to rebuild") from None
        if found != wanted:
            raise SettingsError(f"{paths.root} was built with another recipe ({pinned}); use another --out or delete it")
        return
    write_text_atomic(pinned, json.dumps(wanted, indent=2))


def build_reference(
    root: Path, recipe: ReferenceRecipe, source_cache: Path, progress: Progress | None = None, save_every: int = 100,
) -> ReferencePaths:
    """Build (or finish building) the reference pair under ``root``; returns its paths."""
    from evospec.data_build import build_corpus
    from evospec.qwen_vocab import write_qwen_tokenizer
    from evospec.runtime.checkpoint import save_drafter
    from evospec.runtime.target import load_target, load_tokenizer
    from evospec.train_drafter import train_drafter
    from evospec.train_target import save_target, train_target

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
    if not paths.target.exists():
        steps = recipe.target.steps
        model, valid = train_target(tokenizer, str(paths.corpus), recipe.target,
                                    lambda step, loss: report("target", step + 1, steps, loss),
                                    state_path=paths.target_state, save_every=save_every)
        save_target(model, tokenizer, paths.target, recipe.target, valid)
        paths.target_state.unlink(missing_ok=True)
    if not paths.drafter.exists():
        target = load_target(paths.target)
        steps = recipe.drafter.steps
        drafter, _ = train_drafter(target, tokenizer, str(paths.corpus), recipe.drafter,
                                   lambda step, loss: report("drafter", step + 1, steps, loss))
        save_drafter(drafter, paths.drafter)
    return paths
