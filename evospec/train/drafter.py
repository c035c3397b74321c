"""Train an EAGLE-3 drafter for any target on a corpus: draft vocabulary from token frequencies,
EAGLE-3's training-time test (``evospec.train.distill``), official checkpoint layout on disk.

Useful beyond evaluation: it gives a drafter to targets that have no published one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from evospec.core.errors import SettingsError
from evospec.runtime.drafter import EAGLE3_ARCHITECTURE, Eagle3Config, Eagle3Drafter, default_tap_layers, tap_problem
from evospec.runtime.target import TargetModel
from evospec.train.distill import DistillSettings, distill_drafter
from evospec.train.target import domain_token_ids, join_with_eos, sample_windows


@dataclass(frozen=True)
class DrafterRecipe:
    """Attributes:
    draft_vocab: Draft vocabulary size (the most frequent corpus tokens: EAGLE-3's d2t recipe).
    steps, batch_size, unroll, lr: Distillation schedule (training-time test with ``unroll`` levels).
    seq_len, windows: Training windows drawn from the corpus train split.
    seed: Seed for initialisation and sampling.
    taps: Tapped target layers (HF ``hidden_states`` indices), written into the drafter config;
        None: EAGLE-3's default (2, L//2, L-3), refused where it repeats or reverses a layer
        (targets of fewer than 7 layers), which vLLM and upstream EAGLE cannot serve.
    """

    draft_vocab: int = 32768
    steps: int = 300
    batch_size: int = 16
    unroll: int = 3
    lr: float = 3e-3
    seq_len: int = 128
    windows: int = 256
    seed: int = 0
    taps: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.taps is not None:
            object.__setattr__(self, "taps", tuple(int(t) for t in self.taps))  # TOML gives a list


def checked_taps(taps: tuple[int, ...] | None, num_layers: int) -> tuple[int, ...]:
    """The taps a new drafter gets (``taps``, else EAGLE-3's default), or a one-line SettingsError
    when vLLM or upstream EAGLE could not serve them (see ``tap_problem``)."""
    chosen = tuple(taps) if taps is not None else default_tap_layers(num_layers)
    where = "" if taps is not None else f" (EAGLE-3's default for a {num_layers}-layer target)"
    if len(chosen) != 3:
        raise SettingsError(f"taps {chosen}: an EAGLE-3 drafter fuses exactly three target hidden states")
    problem = tap_problem(chosen, num_layers)
    if problem is not None:
        hint = f"--taps {1},{num_layers // 2},{num_layers - 1}" if num_layers >= 4 else "a target of at least 4 layers"
        raise SettingsError(f"{problem}{where}: vLLM and upstream EAGLE cannot serve such a drafter; give three "
                            f"distinct ascending taps in 1..{num_layers - 1} (for example {hint}, or the recipe's "
                            "taps) or use a target of at least 8 layers")
    return chosen


def draft_vocabulary(documents: Iterable[list[int]], size: int, vocab_size: int) -> torch.Tensor:
    """The ``size`` most frequent ids of tokenised documents, sorted (EAGLE-3's d2t recipe)."""
    counts: Counter = Counter()
    for doc in documents:
        counts.update(doc)
    chosen = [t for t, _ in counts.most_common(size)]
    if len(chosen) < size:  # fewer distinct tokens than asked: fill with the lowest unused ids
        used = set(chosen)
        chosen += [t for t in range(vocab_size) if t not in used][: size - len(chosen)]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def new_drafter(target: TargetModel, draft_ids: torch.Tensor, seed: int = 0) -> Eagle3Drafter:
    """A drafter shaped like one target layer, its head initialised from the target's rows.

    Initialised on the CPU (the same weights whatever the device), then moved to the target's.
    """
    cfg = target.config
    heads = cfg.num_attention_heads
    config = Eagle3Config(
        hidden_size=cfg.hidden_size, target_hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_attention_heads=heads, num_key_value_heads=getattr(cfg, "num_key_value_heads", None) or heads,
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads, rms_norm_eps=cfg.rms_norm_eps,
        vocab_size=target.vocab_size, draft_vocab_size=int(draft_ids.numel()),
        tap_layers=tuple(target.tap_layers) or default_tap_layers(target.num_layers),
        raw={"architectures": [EAGLE3_ARCHITECTURE], "rope_theta": getattr(cfg, "rope_theta", None) or 10000.0,
             "max_position_embeddings": cfg.max_position_embeddings},
    )
    torch.manual_seed(seed)
    drafter = Eagle3Drafter(config, has_embeddings=False, shared_embeddings=target.model.get_input_embeddings())
    with torch.no_grad():
        for name, p in drafter.named_parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.02)
        drafter.lm_head.weight.copy_(target.model.get_output_embeddings().weight[draft_ids.to(target.device)].cpu())
        drafter.d2t.copy_(draft_ids - torch.arange(draft_ids.numel()))
        drafter.t2d.zero_()
        drafter.t2d[draft_ids] = True
    return drafter.to(target.device)


def train_drafter(
    target: TargetModel, tokenizer, corpus: str, recipe: DrafterRecipe,
    progress: Callable[[int, float], None] | None = None,
    state_path: Path | None = None, save_every: int = 100,
) -> tuple[Eagle3Drafter, list[float]]:
    """A drafter for ``target`` (on the target's device) and its loss per step.

    Refuses taps other engines could not serve before any work. With ``state_path`` the
    distillation saves its state every ``save_every`` steps and resumes from it.
    """
    taps = checked_taps(recipe.taps, target.num_layers)
    documents = domain_token_ids(tokenizer, corpus, "train")  # tokenised once: vocabulary and windows
    draft_ids = draft_vocabulary((doc for docs in documents.values() for doc in docs), recipe.draft_vocab, target.vocab_size)
    target = target.with_taps(taps)
    drafter = new_drafter(target, draft_ids, recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    sequences = sample_windows(join_with_eos(documents, tokenizer.eos_token_id), recipe.windows, recipe.seq_len, g)
    settings = DistillSettings(steps=recipe.steps, batch_size=recipe.batch_size, unroll=recipe.unroll, lr=recipe.lr,
                               seed=recipe.seed)
    losses = distill_drafter(target, drafter, sequences, settings, progress, state_path=state_path,
                             save_every=save_every, state_key=asdict(recipe))
    return drafter, losses
