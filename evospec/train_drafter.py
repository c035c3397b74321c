"""Train an EAGLE-3 drafter for any target on a corpus: draft vocabulary from token frequencies,
EAGLE-3's training-time test (``evospec.distill``), official checkpoint layout on disk.

Useful beyond evaluation: it gives a drafter to targets that have no published one.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from evospec.distill import DistillSettings, distill_drafter
from evospec.runtime.drafter import EAGLE3_ARCHITECTURE, Eagle3Config, Eagle3Drafter, default_tap_layers
from evospec.runtime.target import TargetModel
from evospec.train_target import domain_token_ids, join_with_eos, sample_windows


@dataclass(frozen=True)
class DrafterRecipe:
    """Attributes:
    draft_vocab: Draft vocabulary size (the most frequent corpus tokens: EAGLE-3's d2t recipe).
    steps, batch_size, unroll, lr: Distillation schedule (training-time test with ``unroll`` levels).
    seq_len, windows: Training windows drawn from the corpus train split.
    seed: Seed for initialisation and sampling.
    """

    draft_vocab: int = 32768
    steps: int = 300
    batch_size: int = 16
    unroll: int = 3
    lr: float = 3e-3
    seq_len: int = 128
    windows: int = 256
    seed: int = 0


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
    """A drafter shaped like one target layer, its head initialised from the target's rows."""
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
        drafter.lm_head.weight.copy_(target.model.get_output_embeddings().weight[draft_ids])
        drafter.d2t.copy_(draft_ids - torch.arange(draft_ids.numel()))
        drafter.t2d.zero_()
        drafter.t2d[draft_ids] = True
    return drafter


def train_drafter(
    target: TargetModel, tokenizer, corpus: str, recipe: DrafterRecipe,
    progress: Callable[[int, float], None] | None = None,
) -> tuple[Eagle3Drafter, list[float]]:
    documents = domain_token_ids(tokenizer, corpus, "train")  # tokenised once: vocabulary and windows
    draft_ids = draft_vocabulary((doc for docs in documents.values() for doc in docs), recipe.draft_vocab, target.vocab_size)
    if target.tap_layers == ():
        target = TargetModel(target.model, default_tap_layers(target.num_layers), target.tokenizer)
    drafter = new_drafter(target, draft_ids, recipe.seed)
    g = torch.Generator().manual_seed(recipe.seed)
    sequences = sample_windows(join_with_eos(documents, tokenizer.eos_token_id), recipe.windows, recipe.seq_len, g)
    settings = DistillSettings(steps=recipe.steps, batch_size=recipe.batch_size, unroll=recipe.unroll, lr=recipe.lr,
                               seed=recipe.seed)
    losses = distill_drafter(target, drafter, sequences, settings, progress)
    return drafter, losses
