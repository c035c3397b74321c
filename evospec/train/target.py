"""Train a Llama-architecture reference target with the full Qwen vocabulary on the corpus, on a CPU.

A 151k-row output layer makes a full softmax the whole cost of a CPU training step, so training
uses a *sampled softmax*: each step scores the batch's own target tokens plus ``negatives`` tokens
drawn from the corpus unigram distribution (power 0.75), never the whole vocabulary. Validation
loss is the exact full-vocabulary cross-entropy, computed in vocabulary chunks, per domain: every
domain folder the corpus has (``corpus_domains``; no list of names here) except ``switch``, whose
streams are spliced from the other domains' test documents.

Every random draw (initialisation, batches, negatives, validation windows) comes from the recipe's
seed through explicit generators that live on the CPU, so a run draws the same numbers on any
device; ``evospec.core.determinism.reproducible`` pins the rest.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from evospec.core.atomic import atomic_directory
from evospec.data.corpus import corpus_domains, read_documents
from evospec.train.state import load_training_state, save_training_state


@dataclass(frozen=True)
class TargetRecipe:
    """Shape and schedule of a reference target (``configs/reference-*.toml`` load into this)."""

    hidden_size: int = 64
    layers: int = 8
    heads: int = 4
    kv_heads: int = 2
    intermediate_size: int = 176
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 1000
    lr: float = 3e-3
    negatives: int = 4096
    valid_windows: int = 8
    seed: int = 0


def domain_token_ids(tokenizer, corpus: str, split: str) -> dict[str, list[list[int]]]:
    """Each domain's documents of ``split``, tokenised (switch streams excluded)."""
    return {
        domain: tokenizer(read_documents(corpus, domain, split), add_special_tokens=False)["input_ids"]
        for domain in corpus_domains(corpus)
        if domain != "switch"
    }


def join_with_eos(documents: dict[str, list[list[int]]], eos: int) -> dict[str, torch.Tensor]:
    """One stream per domain: its documents back to back, each followed by EOS."""
    return {domain: torch.tensor([t for doc in docs for t in (*doc, eos)], dtype=torch.long)
            for domain, docs in documents.items()}


def domain_token_streams(tokenizer, corpus: str, split: str) -> dict[str, torch.Tensor]:
    return join_with_eos(domain_token_ids(tokenizer, corpus, split), tokenizer.eos_token_id)


def sample_windows(streams: dict[str, torch.Tensor], count: int, length: int, g: torch.Generator) -> torch.Tensor:
    """[count, length] windows; each row from a domain drawn uniformly (domains weigh equally)."""
    names = sorted(streams)
    rows = []
    for _ in range(count):
        ids = streams[names[int(torch.randint(len(names), (1,), generator=g))]]
        start = int(torch.randint(max(1, ids.numel() - length), (1,), generator=g))
        window = ids[start : start + length]
        rows.append(F.pad(window, (0, length - window.numel()), value=int(ids[-1])))
    return torch.stack(rows)


def new_target(vocab_size: int, recipe: TargetRecipe, eos: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe.seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=recipe.hidden_size, num_hidden_layers=recipe.layers,
        num_attention_heads=recipe.heads, num_key_value_heads=recipe.kv_heads, head_dim=recipe.hidden_size // recipe.heads,
        intermediate_size=recipe.intermediate_size, max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=eos, pad_token_id=eos,
    )
    return LlamaForCausalLM(config)


def sampled_softmax_loss(model, batch: torch.Tensor, sampler: torch.Tensor, negatives: int, g: torch.Generator) -> torch.Tensor:
    """Cross-entropy over the batch's targets plus unigram-sampled negatives, not the whole vocabulary."""
    inputs, targets = batch[:, :-1], batch[:, 1:].reshape(-1)
    hidden = model.model(input_ids=inputs).last_hidden_state.reshape(-1, model.config.hidden_size)
    drawn = torch.multinomial(sampler, negatives, replacement=True, generator=g).to(targets.device)
    candidates, inverse = torch.unique(torch.cat((targets, drawn)), return_inverse=True)
    logits = hidden @ model.lm_head.weight[candidates].T  # [N, C]
    return F.cross_entropy(logits, inverse[: targets.numel()])


@torch.no_grad()
def full_vocab_loss(model, batch: torch.Tensor, chunk: int = 16384) -> float:
    """Exact cross-entropy over the whole vocabulary, logits computed chunk by chunk."""
    inputs, targets = batch[:, :-1], batch[:, 1:].reshape(-1)
    hidden = model.model(input_ids=inputs).last_hidden_state.reshape(-1, model.config.hidden_size)
    weight = model.lm_head.weight
    lse = torch.full((hidden.shape[0],), -math.inf, device=hidden.device)
    for start in range(0, weight.shape[0], chunk):
        lse = torch.logaddexp(lse, torch.logsumexp(hidden @ weight[start : start + chunk].T, dim=-1))
    target_logit = (hidden * weight[targets]).sum(-1)
    return float((lse - target_logit).mean())


def train_target(
    tokenizer, corpus: str, recipe: TargetRecipe, progress: Callable[[int, float], None] | None = None,
    state_path: Path | None = None, save_every: int = 100, device: str = "cpu",
) -> tuple[object, dict[str, float]]:
    """Returns (model in eval mode, on the CPU; validation loss per domain).

    With ``state_path``, model, optimiser, schedule and random state are saved there every
    ``save_every`` steps and training resumes from it: an interrupted run loses minutes, not all.
    The resumed run draws the same batches as an uninterrupted one. ``device`` is where the model
    trains (``cuda`` where a GPU exists); batches and negatives are drawn on the CPU either way.
    """
    train = domain_token_streams(tokenizer, corpus, "train")
    valid = domain_token_streams(tokenizer, corpus, "valid")
    vocab = len(tokenizer)
    model = new_target(vocab, recipe, tokenizer.eos_token_id).to(device)
    counts = Counter()
    for ids in train.values():
        counts.update(ids.tolist())
    sampler = torch.zeros(vocab)
    for token, c in counts.items():
        sampler[token] = c**0.75
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.01)
    # 5% warm-up; OneCycleLR divides by (warm-up steps - 1), zero at exactly 20 steps: short runs warm up longer
    warmup = min(0.5, max(0.05, 2 / recipe.steps))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.lr, total_steps=recipe.steps, pct_start=warmup)
    g = torch.Generator().manual_seed(recipe.seed)
    first = 0
    state = load_training_state(state_path, asdict(recipe))
    if state is not None:
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        g.set_state(state["generator"])
        first = state["step"]
    model.train()
    for step in range(first, recipe.steps):
        batch = sample_windows(train, recipe.batch_size, recipe.seq_len + 1, g).to(device)
        loss = sampled_softmax_loss(model, batch, sampler, recipe.negatives, g)
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        if progress is not None:
            progress(step, float(loss.detach()))
        if state_path is not None and (step + 1) % save_every == 0 and step + 1 < recipe.steps:
            save_training_state(state_path, {"recipe": asdict(recipe), "step": step + 1, "model": model.state_dict(),
                                             "optimiser": optimiser.state_dict(), "schedule": schedule.state_dict(),
                                             "generator": g.get_state()})
    model.eval()
    vg = torch.Generator().manual_seed(recipe.seed + 1)
    per_domain = {}
    for domain, ids in valid.items():
        windows = sample_windows({domain: ids}, recipe.valid_windows, recipe.seq_len + 1, vg).to(device)
        per_domain[domain] = full_vocab_loss(model, windows)
    return model.cpu(), per_domain


def save_target(model, tokenizer, out: Path, recipe: TargetRecipe, valid_loss: dict[str, float]) -> Path:
    """``save_pretrained`` model + tokenizer + ``training.json`` (recipe, validation loss), atomically."""
    import json


    with atomic_directory(Path(out)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps({"recipe": asdict(recipe), "valid_loss": valid_loss}, indent=2))
    return Path(out)
