"""Load and save EAGLE-3 drafter checkpoints in the official layout (EAGLE authors, SpecForge).

A checkpoint directory holds ``config.json`` (architectures ``LlamaForCausalLMEagle3``, or
EAGLE's own ``LlamaForCausalLM`` with EAGLE-3-shaped weights; ``draft_vocab_size``, optional tapped
target layers) and weights (``checkpoint_weights``: one file or shards). Every way a checkpoint can be wrong raises :class:`CheckpointError`
or :class:`CompatibilityError` naming the file and what was expected; nothing is loaded
with ``strict=False``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from evospec.core.atomic import atomic_directory
from evospec.core.errors import CheckpointError, CompatibilityError
from evospec.runtime.checkpoint_weights import complete_vocab_maps, drop_known_buffers, looks_like_eagle3, read_weights
from evospec.runtime.drafter import (
    EAGLE3_ARCHITECTURE,
    TAP_NUMBERINGS,
    Eagle3Config,
    Eagle3Drafter,
    default_tap_layers,
    tap_problem,
)
from evospec.runtime.files import read_model_config

logger = logging.getLogger(__name__)

_REQUIRED = object()


def _number(cfg: dict[str, Any], key: str, path: Path, cast: type = int, default: Any = _REQUIRED) -> Any:
    """``cfg[key]`` as ``cast`` (int: a whole number, not a bool); a missing optional key or null takes ``default``."""
    value = cfg.get(key)
    if value is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{path}: EAGLE-3 config is missing '{key}'")
        return default
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not isinstance(value, int | float) or (cast is int and not whole):
        raise CheckpointError(f"{path}: '{key}' must be {'an integer' if cast is int else 'a number'}, got {value!r}")
    return cast(value)


# Config switches of EAGLE-3 variants (SpecForge, vLLM's speculators) and the value of the plain
# architecture evospec implements; any other value would change the logits, so it is refused.
PLAIN_VARIANT = {"fc_norm": False, "norm_before_fc": False, "norm_output": True, "logit_scale": 1.0,
                 "use_aux_hidden_state": True}


def check_variants(cfg: dict[str, Any], path: Path) -> None:
    for key, plain in PLAIN_VARIANT.items():
        for table in (cfg, cfg.get("eagle_config") or {}):
            if key in table and table[key] is not None and table[key] != plain:
                raise CheckpointError(f"{path}: {key} = {table[key]!r} is an EAGLE-3 variant evospec does not implement "
                                      f"(only {key} = {plain!r}); its drafts would differ from the trained model's")


def _tap_layers(cfg: dict[str, Any], numbering: str, path: Path) -> tuple[int, ...] | None:
    """Tapped layers as listed by SpecForge/vLLM (top level or under ``eagle_config``), in HF indexing."""
    if numbering not in TAP_NUMBERINGS:
        raise CheckpointError(f"tap numbering must be one of {', '.join(TAP_NUMBERINGS)} (got {numbering!r})")
    for table in (cfg, cfg.get("eagle_config") or {}):
        ids = table.get("eagle_aux_hidden_state_layer_ids")
        if ids:
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise CheckpointError(f"{path}: eagle_aux_hidden_state_layer_ids must be a list of integers, got {ids!r}")
            return tuple(i + 1 if numbering == "output" else i for i in ids)
    return None


def warn_unservable_taps(config: Eagle3Config, path: Path, target_num_layers: int | None = None) -> None:
    """Log a warning when vLLM or upstream EAGLE could not serve this drafter's taps.

    EvoSpec decodes with any three in-range taps, so this is no error: the checkpoint is fine here
    and only fails elsewhere. Without explicit taps the warning needs the target's layer count.
    """
    taps, where = config.tap_layers, ""
    if taps is None:
        if target_num_layers is None:
            return
        taps, where = default_tap_layers(target_num_layers), f" (EAGLE-3's default for {target_num_layers} layers)"
    problem = tap_problem(taps, target_num_layers)
    if problem is not None:
        logger.warning("%s: %s%s; EvoSpec decodes with them, but vLLM and upstream EAGLE cannot serve this drafter "
                       "(vLLM collects one state per distinct layer, in layer order: a shape error at the first "
                       "draft; upstream EAGLE always uses the default). Retrain with distinct ascending taps (vLLM reads "
                       "them from config.json) or, for upstream EAGLE too, a target of at least 8 layers",
                       path, problem, where)


def read_config(directory: str | Path, tap_numbering: str = "input") -> Eagle3Config:
    """Parse and check an EAGLE-3 ``config.json``; its taps are read in ``tap_numbering`` (``TAP_NUMBERINGS``)."""
    directory = Path(directory)
    path = directory / "config.json"
    cfg = read_model_config(directory, "drafter", "an EAGLE-3 drafter directory")
    archs = cfg.get("architectures") or []
    if EAGLE3_ARCHITECTURE not in archs:
        # EAGLE's own training config says LlamaForCausalLM: accepted when the weights are EAGLE-3-shaped
        if not ("LlamaForCausalLM" in archs and looks_like_eagle3(read_weights(directory)[0])):
            raise CheckpointError(
                f"{path}: architectures {archs} is not an EAGLE-3 drafter (expected '{EAGLE3_ARCHITECTURE}')"
            )
        logger.info("%s: architectures %s with EAGLE-3-shaped weights (fc, midlayer): read as an EAGLE-3 drafter",
                    path, archs)
    check_variants(cfg, path)
    d = _number(cfg, "hidden_size", path)
    heads = _number(cfg, "num_attention_heads", path)
    vocab = _number(cfg, "vocab_size", path)
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(f"{path}: hidden_act {cfg['hidden_act']!r} is not supported (expected 'silu')")
    layers = _number(cfg, "num_hidden_layers", path, default=1)
    if layers != 1:
        raise CheckpointError(f"{path}: num_hidden_layers={layers}; EAGLE-3 drafters have exactly 1 layer")
    return Eagle3Config(
        hidden_size=d,
        target_hidden_size=_number(cfg, "target_hidden_size", path, default=d),
        intermediate_size=_number(cfg, "intermediate_size", path),
        num_attention_heads=heads,
        num_key_value_heads=_number(cfg, "num_key_value_heads", path, default=heads),
        head_dim=_number(cfg, "head_dim", path, default=d // heads),
        rms_norm_eps=_number(cfg, "rms_norm_eps", path, float, default=1e-6),
        vocab_size=vocab,
        draft_vocab_size=_number(cfg, "draft_vocab_size", path, default=vocab),
        tap_layers=_tap_layers(cfg, tap_numbering, path),
        tap_numbering=tap_numbering,
        norm_before_residual=bool(cfg.get("norm_before_residual", False)),
        raw=cfg,
    )


def check_vocab_maps(d2t: torch.Tensor, t2d: torch.Tensor, config: Eagle3Config, path: Path) -> None:
    """d2t must map draft ids to distinct in-range target ids, exactly the ids t2d marks."""
    if d2t.shape != (config.draft_vocab_size,):
        raise CheckpointError(f"{path}: d2t has shape {tuple(d2t.shape)}, expected ({config.draft_vocab_size},)")
    if t2d.shape != (config.vocab_size,):
        raise CheckpointError(f"{path}: t2d has shape {tuple(t2d.shape)}, expected ({config.vocab_size},)")
    target_ids = torch.arange(config.draft_vocab_size) + d2t.long()
    bad = (target_ids < 0) | (target_ids >= config.vocab_size)
    if bad.any():
        first = int(bad.nonzero()[0])
        raise CheckpointError(
            f"{path}: d2t maps draft id {first} to target id {int(target_ids[first])}, "
            f"outside [0, {config.vocab_size})"
        )
    if target_ids.unique().numel() != target_ids.numel():
        raise CheckpointError(f"{path}: d2t maps two draft ids to the same target id")
    marked = t2d.bool().nonzero().flatten()
    if not torch.equal(marked, target_ids.sort().values):
        raise CheckpointError(
            f"{path}: t2d marks {marked.numel()} target ids but d2t maps to {target_ids.numel()} "
            "ids; they must be the same set"
        )


def load_drafter(
    directory: str | Path,
    *,
    target_embeddings: torch.nn.Module,
    target_hidden_size: int,
    target_vocab_size: int,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    target_num_layers: int | None = None,
    tap_numbering: str = "input",
) -> Eagle3Drafter:
    """Load an EAGLE-3 drafter and check it against the target it will draft for.

    Args:
        directory: Checkpoint directory in the official layout.
        target_embeddings: The target's input embedding, shared when the checkpoint has none.
        target_hidden_size: Width of the target's hidden states.
        target_vocab_size: Rows of the target's LM head.
        device: Where to put the drafter.
        dtype: Floating-point type of the drafter's weights.
        target_num_layers: The target's decoder layers; with it, default taps that other engines
            cannot serve are warned about too (explicit ones always are).
        tap_numbering: How the config counts its taps: ``input`` (EAGLE, vLLM) or ``output`` (SGLang,
            SpecForge).
    """
    directory = Path(directory)
    config = read_config(directory, tap_numbering)
    cfg_path = directory / "config.json"
    warn_unservable_taps(config, cfg_path, target_num_layers)
    if config.target_hidden_size != target_hidden_size:
        raise CompatibilityError(
            f"{cfg_path}: drafter expects target hidden size {config.target_hidden_size}, "
            f"the target has {target_hidden_size}"
        )
    if config.vocab_size != target_vocab_size:
        raise CompatibilityError(
            f"{cfg_path}: drafter vocab_size {config.vocab_size} differs from the target's {target_vocab_size}"
        )
    weights, weights_path = read_weights(directory)
    weights = complete_vocab_maps(drop_known_buffers(weights, weights_path), config, weights_path)
    has_embeddings = "embed_tokens.weight" in weights
    if not has_embeddings and target_embeddings.weight.shape[1] != config.hidden_size:
        raise CompatibilityError(
            f"{weights_path}: no embed_tokens and the target's embedding width "
            f"{target_embeddings.weight.shape[1]} differs from the drafter's hidden size {config.hidden_size}"
        )
    drafter = Eagle3Drafter(config, has_embeddings, shared_embeddings=target_embeddings)
    expected = drafter.state_dict()
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{weights_path}: missing weights {missing}, unexpected weights {extra}")
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{weights_path}: '{name}' has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    check_vocab_maps(weights["d2t"], weights["t2d"], config, weights_path)
    weights["d2t"] = weights["d2t"].long()
    weights["t2d"] = weights["t2d"].bool()
    drafter.load_state_dict(weights, strict=True)
    return drafter.to(device=device, dtype=dtype).eval()


def save_drafter(drafter: Eagle3Drafter, directory: str | Path, *, safetensors: bool = True) -> Path:
    """Write a drafter in the official layout, atomically (temp directory, then rename)."""
    state = {k: v.detach().cpu().contiguous() for k, v in drafter.state_dict().items()}
    return write_checkpoint(directory, drafter.config, state, safetensors=safetensors)


def checkpoint_config(c: Eagle3Config, tap_numbering: str = "input") -> dict[str, Any]:
    """``config.json`` of a drafter in the official layout, taps listed in ``tap_numbering``."""
    cfg = dict(c.raw)
    cfg.update(
        architectures=[EAGLE3_ARCHITECTURE],
        model_type="llama",
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        head_dim=c.head_dim,
        num_hidden_layers=1,
        rms_norm_eps=c.rms_norm_eps,
        vocab_size=c.vocab_size,
        draft_vocab_size=c.draft_vocab_size,
        hidden_act="silu",
    )
    # Upstream EAGLE reads the target's embeddings only when target_hidden_size is absent (and loads
    # with strict=False): write it only for a drafter narrower or wider than its target.
    cfg.pop("target_hidden_size", None)
    if c.target_hidden_size != c.hidden_size:
        cfg["target_hidden_size"] = c.target_hidden_size
    if c.tap_layers is not None:  # both places vLLM reads (some versions look only at the top level)
        if tap_numbering == "output" and min(c.tap_layers) < 1:
            raise CheckpointError(f"taps {c.tap_layers} include the embeddings (0), which SGLang's numbering cannot name")
        ids = [t - 1 if tap_numbering == "output" else t for t in c.tap_layers]
        cfg["eagle_aux_hidden_state_layer_ids"] = ids
        cfg["eagle_config"] = {**(cfg.get("eagle_config") or {}), "eagle_aux_hidden_state_layer_ids": ids}
    return cfg


def write_checkpoint(directory: str | Path, config: Eagle3Config, weights: dict[str, torch.Tensor], *,
                     safetensors: bool = True, tap_numbering: str = "input") -> Path:
    """Write config and weights in the official layout, atomically (temp directory, then rename)."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        write_checkpoint_files(tmp, config, weights, safetensors=safetensors, tap_numbering=tap_numbering)
    return directory


def write_checkpoint_files(folder: Path, config: Eagle3Config, weights: dict[str, torch.Tensor], *,
                           safetensors: bool = True, tap_numbering: str = "input") -> None:
    """config.json and the weights into ``folder`` (a temporary directory the caller renames into place)."""
    (folder / "config.json").write_text(json.dumps(checkpoint_config(config, tap_numbering), indent=2))
    if safetensors:
        save_file(weights, str(folder / "model.safetensors"))
    else:
        torch.save(weights, folder / "pytorch_model.bin")
