"""EvoSpec: exact speculative decoding with EAGLE-3 drafters and a living draft vocabulary.

Public API::

    from evospec import SpeculativeGenerator, DecodeSettings
    gen = SpeculativeGenerator.from_paths("target_dir", "eagle3_dir")
    result = gen.generate(gen.encode("def fib(n):"), DecodeSettings(max_new_tokens=64))
"""

from __future__ import annotations

from evospec.errors import CheckpointError, CompatibilityError, EvoSpecError, SettingsError
from evospec.runtime.generator import SpeculativeGenerator, TokenStream
from evospec.runtime.stats import DecodeStats, GenerationResult
from evospec.settings import DecodeSettings

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
