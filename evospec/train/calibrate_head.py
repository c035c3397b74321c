"""Calibrate a sampled-softmax target's output layer with the full softmax, on the rows it never trained.

A target trained with a sampled softmax (``evospec.train.target``) never scores the tokens that do
not occur in its training text: they are neither targets nor unigram-sampled negatives, so their
output rows keep their initial values and their logits sit near zero while trained tokens are
pushed below. At T = 1 such a target spreads most of its mass over tokens it has never seen (the
medium pair: 73% of its mass outside the drafter's 16k vocabulary, entropy 10.6 nats of a possible
11.9), and any temperature-1 measurement of a drafter measures how well it reproduces that noise.

This stage fixes the cause, not the symptom: the full-vocabulary cross-entropy on training text,
minimised over the *unseen* rows only, with the trunk and every seen row frozen. The target's
distribution over seen tokens, renormalised, is therefore unchanged (the drafter distilled from it
stays valid, and greedy decoding changes only where an unseen token was the argmax); only the
mass the untrained rows stole goes back. The output layer is untied from the input embeddings
first, so the trunk reads the same inputs as before. Steps are chosen on the valid split: the
exact full-vocabulary validation loss is tracked and the best rows are kept.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from evospec.train.target import domain_token_streams, full_vocab_loss, sample_windows


@dataclass(frozen=True)
class HeadCalibration:
    """How the unseen rows are fitted (defaults: 9 minutes on 2 shared CPU cores for the medium pair)."""

    steps: int = 100  # Adam steps over minibatches of cached hidden states (medium pair: converged by 50)
    windows: int = 64  # training windows whose final hidden states are cached
    seq_len: int = 256
    positions: int = 512  # hidden states per step
    lr: float = 1e-2
    valid_windows: int = 16  # per domain, for the exact full-vocabulary validation loss
    valid_every: int = 25
    seed: int = 0


@torch.no_grad()
def _hidden_states(model, windows: torch.Tensor, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, d] final (normed) hidden states and their next-token targets [N]."""
    states, targets = [], []
    for batch in windows.split(chunk):
        states.append(model.model(input_ids=batch[:, :-1]).last_hidden_state.reshape(-1, model.config.hidden_size))
        targets.append(batch[:, 1:].reshape(-1))
    return torch.cat(states), torch.cat(targets)


def untie_output_layer(model) -> None:
    """Give ``lm_head`` its own copy of the weights, so changing it leaves the input embeddings alone."""
    if model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = {} if isinstance(model._tied_weights_keys, dict) else []


def _valid_loss(model, valid: dict[str, torch.Tensor], count: int, seq_len: int, seed: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    return {domain: full_vocab_loss(model, sample_windows({domain: ids}, count, seq_len + 1, g))
            for domain, ids in sorted(valid.items())}


def calibrate_head(
    model, tokenizer, corpus: str, settings: HeadCalibration = HeadCalibration(),
    progress: Callable[[int, float], None] | None = None,
) -> dict[str, object]:
    """Fit the unseen output rows of ``model`` in place; returns a report (losses before/after, rows fitted)."""
    train = domain_token_streams(tokenizer, corpus, "train")
    valid = domain_token_streams(tokenizer, corpus, "valid")
    counts = Counter()
    for ids in train.values():
        counts.update(ids.tolist())
    vocab = model.lm_head.weight.shape[0]
    seen = torch.zeros(vocab, dtype=torch.bool)
    seen[torch.tensor(sorted(counts))] = True
    unseen_ids = (~seen).nonzero().squeeze(1)
    seen_ids = seen.nonzero().squeeze(1)

    model.eval()
    untie_output_layer(model)
    before = _valid_loss(model, valid, settings.valid_windows, settings.seq_len, settings.seed + 1)
    g = torch.Generator().manual_seed(settings.seed)
    hidden, targets = _hidden_states(model, sample_windows(train, settings.windows, settings.seq_len + 1, g))
    weight = model.lm_head.weight
    seen_rows = weight.detach()[seen_ids]
    rows = torch.nn.Parameter(weight.detach()[unseen_ids].clone())
    # targets are seen tokens by construction (they come from the training text): index them among seen rows
    seen_index = torch.full((vocab,), -1, dtype=torch.long)
    seen_index[seen_ids] = torch.arange(seen_ids.numel())
    target_cols = seen_index[targets]
    optimiser = torch.optim.Adam([rows], lr=settings.lr)
    best_rows, best_loss, best_step, history = rows.detach().clone(), sum(before.values()), 0, []
    for step in range(settings.steps):
        pick = torch.randint(hidden.shape[0], (settings.positions,), generator=g)
        h = hidden[pick]
        with torch.no_grad():
            seen_logits = h @ seen_rows.T
        logits = torch.cat((seen_logits, h @ rows.T), dim=1)
        loss = F.cross_entropy(logits, target_cols[pick])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if progress is not None:
            progress(step, float(loss.detach()))
        if (step + 1) % settings.valid_every == 0 or step + 1 == settings.steps:
            with torch.no_grad():
                weight[unseen_ids] = rows.detach()
            current = _valid_loss(model, valid, settings.valid_windows, settings.seq_len, settings.seed + 1)
            history.append({"step": step + 1, "valid_loss": current})
            if sum(current.values()) < best_loss:
                best_rows, best_loss, best_step = rows.detach().clone(), sum(current.values()), step + 1
    with torch.no_grad():
        weight[unseen_ids] = best_rows
    # the rows kept are the ones a validation pass already scored: no second pass
    after = next((h["valid_loss"] for h in history if h["step"] == best_step), before)
    return {
        "rows_fitted": int(unseen_ids.numel()), "rows_frozen": int(seen_ids.numel()),
        "hidden_states": int(hidden.shape[0]), "best_step": best_step,
        "valid_loss_before": before, "valid_loss_after": after, "history": history,
        "chance": math.log(vocab),
    }


def save_calibrated(model, tokenizer, out, settings: HeadCalibration, report: dict[str, object]):
    """``save_pretrained`` model + tokenizer + ``calibration.json``, atomically (a new folder, never in place)."""
    import json
    from dataclasses import asdict
    from pathlib import Path

    from evospec.core.atomic import atomic_directory

    with atomic_directory(Path(out)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "calibration.json").write_text(json.dumps({"settings": asdict(settings), **report}, indent=2))
    return Path(out)
