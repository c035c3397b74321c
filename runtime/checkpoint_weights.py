"""An EAGLE-3 drafter's weights as the tools that write them lay them out.

One file (``model.safetensors``, ``pytorch_model.bin``) or shards listed by an index
(``*.index.json``, what ``save_pretrained`` writes for large checkpoints). Buffers that some
trainers save but that are not parameters (rotary ``inv_freq``) are dropped with a note; any
other unexpected key stays an error for the loader. Drafters without vocabulary maps get the
ones EAGLE and vLLM imply: identity when the draft vocabulary is the whole vocabulary (EAGLE
deletes d2t/t2d then), t2d derived from d2t (or d2t from t2d, draft ids in target-id order).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from evospec.core.errors import CheckpointError
from evospec.runtime.drafter import Eagle3Config

logger = logging.getLogger(__name__)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
IGNORED_BUFFER_SUFFIXES = ("rotary_emb.inv_freq",)  # EAGLE's training target keeps it; DeepSpeed saves it


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.name.endswith(".safetensors"):
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated file: say which one
        raise CheckpointError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from None


def _read_shards(index: Path) -> dict[str, torch.Tensor]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{index}: not a shard index with a weight_map ({type(exc).__name__}: {exc})") from None
    weights: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        path = index.parent / shard
        if not path.is_file():
            raise CheckpointError(f"{index} lists shard {shard}, which is missing")
        weights.update(_read_file(path))
    absent = sorted(set(weight_map) - set(weights))
    if absent:
        raise CheckpointError(f"{index} maps {absent[:5]} to shards that do not hold them")
    return weights


def read_weights(directory: Path) -> tuple[dict[str, torch.Tensor], Path]:
    """(every tensor of the checkpoint, the file they were read from: the weights or the shard index)."""
    for name in WEIGHT_FILES:
        if (directory / name).exists():
            return _read_file(directory / name), directory / name
    for name in INDEX_FILES:
        if (directory / name).exists():
            return _read_shards(directory / name), directory / name
    raise CheckpointError(f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES + INDEX_FILES)})")


def looks_like_eagle3(weights: dict[str, torch.Tensor]) -> bool:
    """EAGLE-3-shaped weights: an ``fc`` fusing three target states ([d, 3 * target_d]) and a ``midlayer``."""
    fc = weights.get("fc.weight")
    return fc is not None and fc.dim() == 2 and fc.shape[1] % 3 == 0 and any(k.startswith("midlayer.") for k in weights)


def drop_known_buffers(weights: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    dropped = sorted(k for k in weights if k.endswith(IGNORED_BUFFER_SUFFIXES))
    if dropped:
        logger.info("%s: ignoring %s (rotary buffers, not parameters; recomputed from the config)", path, dropped)
    return {k: v for k, v in weights.items() if k not in dropped}


def complete_vocab_maps(weights: dict[str, torch.Tensor], config: Eagle3Config, path: Path) -> dict[str, torch.Tensor]:
    """Add the d2t/t2d a checkpoint implies but does not store; a reduced vocabulary with neither is an error."""
    has_d2t, has_t2d = "d2t" in weights, "t2d" in weights
    if has_d2t and has_t2d:
        return weights
    weights = dict(weights)
    if not has_d2t and not has_t2d:
        if config.draft_vocab_size != config.vocab_size:
            raise CheckpointError(f"{path}: no d2t/t2d, but draft_vocab_size {config.draft_vocab_size} < vocab_size "
                                  f"{config.vocab_size}: the map from draft ids to target ids is missing")
        logger.info("%s: no d2t/t2d with a full draft vocabulary: identity map", path)
        weights["d2t"] = torch.zeros(config.draft_vocab_size, dtype=torch.long)
        weights["t2d"] = torch.ones(config.vocab_size, dtype=torch.bool)
    elif has_d2t:
        target_ids = torch.arange(weights["d2t"].numel()) + weights["d2t"].long()
        t2d = torch.zeros(config.vocab_size, dtype=torch.bool)
        t2d[target_ids.clamp(0, config.vocab_size - 1)] = True  # out-of-range ids are reported by check_vocab_maps
        weights["t2d"] = t2d
        logger.info("%s: t2d derived from d2t", path)
    else:
        target_ids = weights["t2d"].bool().nonzero().flatten()
        weights["d2t"] = target_ids - torch.arange(target_ids.numel())
        logger.info("%s: d2t derived from t2d (draft ids in target-id order)", path)
    return weights
