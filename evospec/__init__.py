"""EvoSpec: exact speculative decoding with EAGLE-3 drafters and a living draft vocabulary.

Public API::

    from evospec import SpeculativeGenerator, DecodeSettings
    gen = SpeculativeGenerator.from_paths("target_dir", "eagle3_dir")
    result = gen.generate(gen.encode("def fib(n):"), DecodeSettings(max_new_tokens=64))

Names that need torch and transformers load on first use, so ``evospec --help`` and error
messages about bad arguments come back without importing them.
"""

from __future__ import annotations

import importlib
from typing import Any

from evospec.core.errors import CheckpointError, CompatibilityError, EvoSpecError, SettingsError
from evospec.core.settings import DecodeSettings

_LAZY = {
    "SpeculativeGenerator": "evospec.runtime.generator",
    "TokenStream": "evospec.runtime.generator",
    "DecodeStats": "evospec.runtime.stats",
    "GenerationResult": "evospec.runtime.stats",
}

__all__ = [
    "CheckpointError",
    "CompatibilityError",
    "DecodeSettings",
    "DecodeStats",
    "EvoSpecError",
    "GenerationResult",
    "SettingsError",
    "SpeculativeGenerator",
    "TokenStream",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evospec' has no attribute {name!r}")
