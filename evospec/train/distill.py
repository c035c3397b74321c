"""Train an EAGLE-3 drafter on its target's own outputs (self-distillation with training-time test).

The drafter is unrolled over its own states for ``unroll`` levels with the same attention
pattern as tree drafting at inference: level s at position j sees the committed pairs up to j
and its own ancestors at levels 1..s. Each level is trained against the target's distribution
(restricted to the draft vocabulary) at the position it drafts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from evospec.runtime.drafter import DrafterKVCache, Eagle3Drafter
from evospec.runtime.target import TargetModel, cache_argument
from evospec.train.state import load_training_state, save_training_state

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillSettings:
    """Attributes:
    steps: Optimiser steps.
    batch_size: Sequences per step.
    unroll: Drafting levels trained per step (EAGLE-3's training-time test).
    lr: AdamW learning rate.
    level_decay: Loss weight of level s is level_decay**s.
    seed: Seed for batch sampling.
    """

    steps: int = 300
    batch_size: int = 16
    unroll: int = 3
    lr: float = 1e-2
    level_decay: float = 0.8
    seed: int = 0


@torch.no_grad()
def teacher_outputs(target: TargetModel, sequences: torch.Tensor, vocab_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tapped features [B, T, 3d] and the target's logits [B, T, len(vocab_ids)] on the draft vocabulary only.

    Only the LM-head rows of ``vocab_ids`` are computed: with a 151k vocabulary the full logits of a
    batch would not fit in memory, and the drafter never needs the others.
    """
    out = target.model.get_decoder()(input_ids=sequences, output_hidden_states=True)
    features = torch.cat([out.hidden_states[i] for i in target.tap_layers], dim=-1)
    head = target.model.get_output_embeddings()
    logits = out.last_hidden_state @ head.weight[vocab_ids].T
    if getattr(head, "bias", None) is not None:
        logits = logits + head.bias[vocab_ids]
    return features, logits.float()


def unroll_mask(length: int, level: int, device: torch.device) -> torch.Tensor:
    """[T, (level+1)*T] bool: causal over committed pairs, plus the diagonal of each earlier level."""
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    eye = torch.eye(length, dtype=torch.bool, device=device)
    return torch.cat([causal] + [eye] * level, dim=1)


def distill_loss(
    drafter: Eagle3Drafter, features: torch.Tensor, logits: torch.Tensor, sequences: torch.Tensor, s: DistillSettings
) -> torch.Tensor:
    """``logits``: the target's logits on the draft vocabulary, in draft-id order."""
    b, t = sequences.shape
    n = t - s.unroll  # positions usable at every level
    cache = DrafterKVCache(drafter.config, s.unroll * n, sequences.device, features.dtype, batch=b)
    hidden = features[:, :n]
    loss = features.new_zeros(())
    for level in range(s.unroll):
        tokens = sequences[:, 1 + level : 1 + level + n]
        positions = (torch.arange(n, device=sequences.device) + level).expand(b, n)
        mask = unroll_mask(n, level, sequences.device)
        hidden, draft_logits = drafter(hidden, tokens, positions, cache, level * n, mask)
        teacher = torch.softmax(logits[:, 1 + level : 1 + level + n], dim=-1)
        loss = loss + s.level_decay**level * -(teacher * torch.log_softmax(draft_logits.float(), -1)).sum(-1).mean()
    return loss


def distill_drafter(
    target: TargetModel,
    drafter: Eagle3Drafter,
    sequences: torch.Tensor,  # [N, T] token ids the target produced
    settings: DistillSettings = DistillSettings(),
    progress: Callable[[int, float], None] | None = None,
    state_path: Path | None = None,
    save_every: int = 100,
    state_key: dict[str, Any] | None = None,
) -> list[float]:
    """Train ``drafter`` in place (on its own device); returns the loss per step.

    The target is run per batch. Batch indices are drawn on the CPU from ``settings.seed``, so any
    device draws the same batches. With ``state_path``, drafter, optimiser, generator and losses are
    saved there every ``save_every`` steps (keyed by ``state_key``, default the settings) and an
    interrupted run resumes from it with the same batches.
    """
    device = drafter.d2t.device
    vocab_ids = drafter.draft_vocab_target_ids().to(device)
    params = [p for p in drafter.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(settings.seed)
    key = state_key if state_key is not None else asdict(settings)
    losses: list[float] = []
    state = load_training_state(state_path, key)
    if state is not None:
        drafter.load_state_dict(state["drafter"])
        optimiser.load_state_dict(state["optimiser"])
        g.set_state(state["generator"])
        losses = list(state["losses"])
    drafter.train()
    for step in range(len(losses), settings.steps):
        idx = torch.randint(0, sequences.shape[0], (settings.batch_size,), generator=g)
        batch = sequences[idx].to(device)
        features, logits = teacher_outputs(target, batch, vocab_ids)
        loss = distill_loss(drafter, features, logits, batch, settings)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
        if state_path is not None and (step + 1) % save_every == 0 and step + 1 < settings.steps:
            save_training_state(state_path, {"recipe": key, "drafter": drafter.state_dict(),
                                             "optimiser": optimiser.state_dict(), "generator": g.get_state(),
                                             "losses": losses})
    drafter.eval()
    return losses


@torch.no_grad()
def sample_sequences(
    target: TargetModel, count: int, length: int, seed: int = 0, temperature: float = 1.0
) -> torch.Tensor:
    """[count, length] sequences sampled from the target itself, from random one-token prompts."""
    g = torch.Generator().manual_seed(seed)
    vocab = target.vocab_size
    seqs = torch.randint(0, vocab, (count, 1), generator=g)
    cache = None
    logits_in = seqs
    model = target.model
    argument = cache_argument(model)
    for _ in range(length - 1):
        out = model(input_ids=logits_in, use_cache=True, **{argument: cache})
        cache = getattr(out, argument)
        probs = torch.softmax(out.logits[:, -1].float() / temperature, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=g)
        seqs = torch.cat((seqs, nxt), dim=1)
        logits_in = nxt
    return seqs
