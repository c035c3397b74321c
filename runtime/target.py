"""The target model: any HF causal LM, run with an explicit tree mask and a rollback-able cache.

The target verifies a whole draft tree in one forward pass: the tree's tokens are appended
to the KV cache with a 4D additive mask (each node sees the committed prefix and its own
ancestors), and afterwards only the accepted path is kept in the cache.
"""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from evospec.core.errors import CheckpointError, CompatibilityError
from evospec.runtime.lean_target import LeanCache, LeanDecoder, lean_support
from evospec.runtime.skinny_head import use_skinny_head

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass
class TargetOutput:
    logits: torch.Tensor  # [T, V] float32
    features: torch.Tensor  # [T, 3*d] tapped hidden states, concatenated low/middle/high


class TargetModel:
    """A loaded HF causal LM plus the layers EAGLE-3 taps from it.

    Args:
        model: The causal LM (eval mode).
        tap_layers: Indices into HF ``hidden_states`` (0 = embeddings, i = output of layer i-1);
            empty when no drafter is attached.
        tokenizer: Optional tokenizer for text prompts and output.
        lean: Run the Llama-family forward of :mod:`evospec.runtime.lean_target` (the same arithmetic
            without the framework's per-call work) where the model is covered; False always runs the
            transformers forward.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tap_layers: tuple[int, ...],
        tokenizer: PreTrainedTokenizerBase | None = None,
        lean: bool = True,
    ) -> None:
        self.model = model.eval()
        self.tap_layers = tap_layers
        self._cache_argument = cache_argument(model)  # once: inspecting forward's signature each step is waste
        self.tokenizer = tokenizer
        self.window = attention_window(model.config)
        self.lean = LeanDecoder(model) if lean and lean_support(model) is None else None

    def with_taps(self, tap_layers: tuple[int, ...]) -> TargetModel:
        """The same model (and forward) tapping other layers."""
        return TargetModel(self.model, tuple(tap_layers), self.tokenizer, lean=self.lean is not None)

    @property
    def config(self):
        return self.model.config

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def eos_token_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.model.config.eos_token_id
        if eos is None:
            return set()
        return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}

    def new_cache(self) -> DynamicCache | LeanCache:
        """A full (never truncated) cache: sliding windows are applied by the mask instead, so that
        rejected tree branches can always be rolled back. The lean forward's cache is allocated up
        front and grows by doubling."""
        return DynamicCache() if self.lean is None else self.lean.new_cache()

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,  # [1, T]
        positions: torch.Tensor,  # [1, T]
        cache: DynamicCache | LeanCache,
        tree_mask: torch.Tensor | None = None,  # [T, T] bool among the new tokens; None = causal
    ) -> TargetOutput:
        past = cache.get_seq_length()
        t = input_ids.shape[1]
        if self.lean is not None and t == 1 and self.window is None:  # one token sees every slot: no mask
            return self._lean_forward(input_ids, positions, cache, None)
        if tree_mask is None:
            tree_mask = torch.ones(t, t, dtype=torch.bool, device=input_ids.device).tril()
        visible = torch.cat(
            (torch.ones(t, past, dtype=torch.bool, device=input_ids.device), tree_mask.to(input_ids.device)), dim=1
        )
        if self.window is not None:  # cache slot k holds position k, then the new tokens' positions
            key_pos = torch.cat((torch.arange(past, device=input_ids.device), positions[0]))
            visible &= (positions[0][:, None] - key_pos[None, :]) < self.window
        if self.lean is not None:
            return self._lean_forward(input_ids, positions, cache, visible)
        dtype = self.model.dtype
        additive = torch.zeros(visible.shape, dtype=dtype, device=input_ids.device)
        additive.masked_fill_(~visible, torch.finfo(dtype).min)
        layers = self._tap_modules()
        captured: dict[int, torch.Tensor] = {}
        # only the tapped layers' inputs are kept (hooks), not all L+1 hidden states
        hooks = [layers[i].register_forward_pre_hook(_capture_input(captured, i), with_kwargs=True)
                 for i in set(self.tap_layers)] if layers is not None else []
        try:
            out = self.model(
                input_ids=input_ids,
                position_ids=positions,
                attention_mask=additive[None, None],
                **{self._cache_argument: cache},
                cache_position=torch.arange(past, past + t, device=input_ids.device),
                use_cache=True,
                output_hidden_states=bool(self.tap_layers) and layers is None,
            )
        finally:
            for hook in hooks:
                hook.remove()
        if self.tap_layers:
            states = captured if layers is not None else out.hidden_states
            features = torch.cat([states[i][0] for i in self.tap_layers], dim=-1)
        else:
            features = out.logits.new_zeros(t, 0)
        return TargetOutput(logits=out.logits[0].float(), features=features)

    def _lean_forward(self, input_ids, positions, cache, visible) -> TargetOutput:
        logits, states = self.lean.forward(input_ids, positions, cache, visible, self.tap_layers)
        if self.tap_layers:
            features = torch.cat([states[i] for i in self.tap_layers], dim=-1)
        else:
            features = logits.new_zeros(input_ids.shape[1], 0)
        return TargetOutput(logits=logits.float(), features=features)

    def _tap_modules(self) -> torch.nn.ModuleList | None:
        """The decoder layers whose inputs are the taps (HF ``hidden_states[i]`` is layer i's input), or
        None where a tap is the final normed output or the model keeps its layers elsewhere."""
        layers = getattr(getattr(self.model, "model", None), "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or any(not 0 <= i < len(layers) for i in self.tap_layers):
            return None
        return layers


def _capture_input(store: dict[int, torch.Tensor], index: int):
    def hook(module, args, kwargs):
        store[index] = args[0] if args else kwargs["hidden_states"]

    return hook


def cache_argument(model: PreTrainedModel) -> str:
    """The name ``forward`` takes the KV cache by, and the output returns it under: transformers 5.2x
    renamed ``past_key_values`` to ``cache`` (the old name warns and goes in 5.40); older releases,
    which pyproject still admits, know only ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def attention_window(config) -> int | None:
    """The target's sliding attention window, None for full attention.

    Raises:
        CompatibilityError: when layers mix full and sliding-window attention (one tree mask
            cannot serve both yet).
    """
    window = getattr(config, "sliding_window", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    kinds = set(getattr(config, "layer_types", None) or ["sliding_attention"])
    if kinds == {"full_attention"}:
        return None
    if kinds == {"sliding_attention"}:
        return int(window)
    raise CompatibilityError(
        f"target mixes attention kinds {sorted(kinds)} across layers; tree verification supports "
        "all-full or all-sliding-window targets"
    )


def keep_cache_prefix(cache: DynamicCache | LeanCache, n: int) -> None:
    """Keep the first ``n`` cache slots: a chain's accepted path, or a tree's whose path is its first nodes. The
    cache is cut to that length, a view with no copy (and no index tensor to build: this runs every step)."""
    if isinstance(cache, LeanCache):
        cache.length = n
        return
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys[..., :n, :], layer.values[..., :n, :]


def keep_cache_slots(cache: DynamicCache | LeanCache, keep: torch.Tensor) -> None:
    """Keep only the cache slots ``keep`` (ascending), in that order: rolls back rejected branches.

    When the kept slots are a prefix (a chain, or a tree whose accepted path is its first branch) the
    cache is cut to that length, a view with no copy; otherwise each layer's slots are gathered.
    """
    if isinstance(cache, LeanCache):
        cache.keep(keep)
        return
    n = int(keep.numel())
    if n and int(keep[-1]) == n - 1:  # ascending and ending at n-1: exactly 0..n-1
        keep_cache_prefix(cache, n)
        return
    for layer in cache.layers:
        idx = keep.to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, idx)
        layer.values = layer.values.index_select(-2, idx)


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """An HF tokenizer from a local directory, or a CheckpointError naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"tokenizer directory {directory} does not exist")
    try:
        return AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as exc:  # transformers raises many types; name the directory
        raise CheckpointError(f"{directory}: not a loadable tokenizer ({type(exc).__name__}: {exc})") from None


def _dtype(name: str) -> torch.dtype | str:
    table = {"auto": "auto", "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
             "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
    if name not in table:
        raise CheckpointError(f"unknown dtype {name!r}; expected one of {sorted(table)}")
    return table[name]


def load_target(
    directory: str | Path,
    *,
    tap_layers: tuple[int, ...] = (),
    device: str = "cpu",
    dtype: str = "float32",
) -> TargetModel:
    """Load an HF causal LM (and its tokenizer when present) from a local directory.

    Args:
        directory: A directory that ``AutoModelForCausalLM.from_pretrained`` loads.
        tap_layers: Hidden-state indices the drafter fuses (checked against the layer count).
        device: ``cpu`` or ``cuda``.
        dtype: ``float32``, ``float16``, ``bfloat16``, ``float64`` or ``auto`` (the checkpoint's).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"target directory {directory} does not exist")
    config_path = directory / "config.json"
    if not config_path.exists():
        raise CheckpointError(f"{config_path} is missing: the target must be an HF model directory")
    try:
        arch = json.loads(config_path.read_text()).get("architectures")
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path} is not valid JSON: {exc}") from None
    if arch and any("Eagle" in a for a in arch):
        raise CheckpointError(f"{directory} is a drafter checkpoint ({arch}), not a target model")
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            directory, dtype=_dtype(dtype), local_files_only=True, attn_implementation="sdpa", output_loading_info=True
        )
    except Exception as exc:  # transformers raises many types for unreadable checkpoints; name the directory
        raise CheckpointError(f"{directory}: transformers cannot load this causal LM ({type(exc).__name__}: {exc})") from None
    problems = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(problems.values()):
        detail = "; ".join(f"{k.replace('_', ' ')}: {v[:5]}" for k, v in problems.items() if v)
        raise CheckpointError(f"{directory}: weights do not match the config ({detail})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CheckpointError("--device cuda was asked for but torch sees no CUDA device")
    model.to(device)
    use_skinny_head(model)  # CPU: a verification pass's few rows of logits at about one row's cost
    tokenizer = None
    if any((directory / f).exists() for f in TOKENIZER_FILES):
        tokenizer = load_tokenizer(directory)
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:  # ids past the embedding would fail deep inside a forward pass
            raise CheckpointError(
                f"{directory}: the tokenizer has {len(tokenizer)} tokens but the model's embedding has {rows} rows; "
                "the tokenizer does not belong to this model"
            )
    logger.info("target %s: %d layers, dtype %s", directory, model.config.num_hidden_layers, model.dtype)
    return TargetModel(model, tuple(tap_layers), tokenizer)
