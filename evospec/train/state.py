"""Resumable training: one file with model, optimiser, schedule and generator state, written atomically.

A state file is keyed by the recipe that wrote it: resuming with another recipe is an error, not a
silent mix. Loaded onto the CPU, so a run started on one device can finish on another.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from evospec.core.errors import SettingsError


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_training_state(path: Path | None, key: dict[str, Any]) -> dict[str, Any] | None:
    """The state saved at ``path`` (None when there is none), checked against ``key``."""
    if path is None or not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: say which
        raise SettingsError(f"training state {path} is unreadable ({type(exc).__name__}: {exc}); delete it to restart") from None
    if not isinstance(state, dict) or state.get("recipe") != key:
        raise SettingsError(f"training state {path} was written by a different recipe; delete it to restart")
    return state
