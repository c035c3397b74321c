"""Reference-pair recipes: the target's and the drafter's training shape and schedule.

A recipe file is TOML with a ``[target]`` table (fields of ``TargetRecipe``) and a ``[drafter]``
table (fields of ``DrafterRecipe``); missing keys take the tiny defaults, unknown keys are
errors. The named presets live here, in code, so an installed package can build them without
the repository's ``configs/`` folder; ``configs/reference-*.toml`` mirror them (a test checks).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from evospec.core.errors import SettingsError
from evospec.train.drafter import DrafterRecipe
from evospec.train.target import TargetRecipe


@dataclass(frozen=True)
class ReferenceRecipe:
    target: TargetRecipe = field(default_factory=TargetRecipe)
    drafter: DrafterRecipe = field(default_factory=DrafterRecipe)


# Every preset's target has at least 8 layers, so EAGLE-3's default taps (2, L//2, L-3) are distinct
# and ascending and the pair serves on vLLM and upstream EAGLE too (a 6-layer target gives (2, 3, 3)).
# The drafter writes its taps into its config either way.
PRESETS: dict[str, ReferenceRecipe] = {
    # Minutes on 2 CPU cores: tests and smoke runs. Taps (2, 4, 5).
    "tiny": ReferenceRecipe(TargetRecipe(), DrafterRecipe(draft_vocab=8192, steps=100, batch_size=8)),
    # 78 min measured on 2 shared CPU cores (2026-12-02). Deep and thin: 8 layers of d=160 hold 2.33M non-embedding
    # weights per token against the earlier 6 layers of d=192's 2.36M, so a step costs about the same
    # FLOPs (MobileLLM's finding: at this scale depth beats width). Taps (2, 4, 5).
    "medium": ReferenceRecipe(
        TargetRecipe(hidden_size=160, layers=8, heads=4, kv_heads=2, intermediate_size=448, seq_len=256,
                     batch_size=8, steps=1500, lr=2e-3, negatives=8192, valid_windows=16),
        DrafterRecipe(draft_vocab=16384, steps=600, batch_size=8, unroll=3, lr=3e-3, seq_len=128, windows=4096),
    ),
    # Hours on 2 CPU cores (resumable: both training stages save their state every 100 steps),
    # minutes with `--device cuda`. 8x medium's training tokens on a model of 4x its weights per
    # token: estimated from FLOP counts at roughly 8-12 hours on 2 cores, not yet timed. Taps (2, 6, 9).
    "large": ReferenceRecipe(
        TargetRecipe(hidden_size=256, layers=12, heads=8, kv_heads=4, intermediate_size=704, seq_len=512,
                     batch_size=8, steps=6000, lr=1.5e-3, negatives=16384, valid_windows=32),
        DrafterRecipe(draft_vocab=32768, steps=2000, batch_size=16, unroll=3, lr=3e-3, seq_len=256, windows=16384),
    ),
}


def _table(cls: type, values: dict[str, Any], where: str) -> Any:
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise SettingsError(f"{where}: unknown keys {unknown}")
    return cls(**values)


def load_recipe(path: str | Path) -> ReferenceRecipe:
    """A recipe file, or a SettingsError naming it and what is wrong."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"recipe {path}: {exc}") from None
    extra = sorted(set(data) - {"target", "drafter"})
    if extra:
        raise SettingsError(f"recipe {path}: unknown tables {extra}; expected [target] and [drafter]")
    return ReferenceRecipe(_table(TargetRecipe, data.get("target", {}), f"recipe {path} [target]"),
                           _table(DrafterRecipe, data.get("drafter", {}), f"recipe {path} [drafter]"))


def recipe_named(name_or_path: str) -> ReferenceRecipe:
    """A preset name (``tiny``, ``medium``, ``large``) or a recipe file path."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if not Path(name_or_path).exists():
        raise SettingsError(f"no recipe {name_or_path!r}: expected one of {sorted(PRESETS)} or a TOML file")
    return load_recipe(name_or_path)
