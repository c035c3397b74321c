"""``evospec vocab dynaspec``: train the DynaSpec baseline's clusters and router for a compiled bundle.

What routing sees at run time decides what training reads: the router is called with the
drafter's head input at the current root (the fresh state of the cycle's first trunk call) and
its set serves the whole draft, so each training example is that state paired with the tokens at
depth 1..D after the root. Target and drafter run teacher-forced over the corpus's train split
(every domain but topic-switch streams); ``states[j]`` is the root state when position j + 1 holds
the root, and the tokens to draft are the target's own greedy choices at positions j + 2 .. j + 1 + D
and the text's tokens there (what sampled decoding follows); the router is trained on both.

Positions are split in blocks of 64 (neighbours share context, so single positions would leak):
train (8 of 10 blocks), validation (1: picks the backbone share per size) and held-out (1: the
recall reported and stored in the router file).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from evospec.core.errors import SettingsError
from evospec.data.corpus import corpus_domains
from evospec.data.teacher_forced import replay_streams, teacher_forced
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.vocab.dynaspec import Shortlister, cluster_rows, train_router

BACKBONE_SHARES = (0.0, 0.125, 0.25, 0.5, 0.75, 0.875)  # candidates tried on the validation split
CLUSTER_SOURCES = ("lm-head", "embeddings", "reservoir")
BLOCK = 64  # positions per split block


@dataclass(frozen=True)
class DynaSpecTraining:
    """Settings of ``evospec vocab dynaspec``."""

    clusters: int = 64
    tokens: int = 16384  # training tokens read per domain
    depth: int = 5  # draft depths whose tokens the router is trained on (the chain depth decoding drafts)
    hidden: int = 256  # router hidden width (0: linear)
    steps: int = 600  # Adam minibatch steps
    cluster_on: str = "lm-head"  # rows clustered: the target's LM head, its input embeddings, or the bundle's reservoir
    sizes: tuple[int, ...] = (1024, 4096, 16384)  # shortlist sizes K validated and reported
    seed: int = 0


def depth_targets(ids: list[int], greedy: torch.Tensor, depth: int) -> torch.Tensor:
    """[n - depth, 2 * depth] tokens to draft from the root state ``states[j]``: the target's greedy
    choices at positions j + 2 .. j + 1 + depth (``greedy[j + d]``), then the text's tokens there."""
    n = greedy.shape[0]
    rows = n - depth
    if rows <= 0:
        return torch.zeros(0, 2 * depth, dtype=torch.long)
    text = torch.tensor(ids, dtype=torch.long)
    j = torch.arange(rows)[:, None]
    d = torch.arange(1, depth + 1)[None]
    return torch.cat((greedy[j + d], text[j + 1 + d]), dim=1)


def split_blocks(lengths: list[int]) -> torch.Tensor:
    """[sum(lengths)] 0 train, 1 validation, 2 held-out, by blocks of ``BLOCK`` positions of each stream."""
    parts, counter = [], 0
    for n in lengths:  # blocks numbered on from stream to stream: block b goes to split by b mod 10
        block = (counter + torch.arange(n) // BLOCK) % 10
        counter += -(-n // BLOCK)
        parts.append(torch.where(block == 1, 2, torch.where(block == 3, 1, 0)))
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)


def cluster_source(generator, source: str) -> torch.Tensor:
    """[V, width] rows to cluster: the target's own LM-head rows (default), its input embeddings, or
    the bundle's reservoir (mostly synthesised rows on our pairs)."""
    vocab = generator.drafter.config.vocab_size
    if source == "lm-head":
        return generator.target.model.get_output_embeddings().weight.detach().float().cpu()[:vocab]
    if source == "embeddings":
        return generator.target.model.get_input_embeddings().weight.detach().float().cpu()[:vocab]
    if source == "reservoir":
        resident = generator.drafter.active_rows
        if resident is None:
            raise SettingsError("--cluster-on reservoir reads the reservoir on the host (ort or torch bundles)")
        return resident.reservoir.float().cpu()
    raise SettingsError(f"--cluster-on must be one of {', '.join(CLUSTER_SOURCES)} (got {source!r})")


def recall(router, scores: torch.Tensor, tokens: torch.Tensor, k: int, share: float) -> dict:
    """Held-out shares of the next tokens (depth 1 and all depths) in the K-shortlist, and whose
    cluster is among those the shortlist used; ``tokens``: [n, 2D] as ``depth_targets``."""

    shortlister = Shortlister(router, k, share)
    inside, selected = shortlister.positions(scores, tokens)
    valid = tokens >= 0
    half = tokens.shape[1] // 2  # greedy choices first, text tokens after

    def share_of(mask: torch.Tensor, cols: slice) -> float:
        m, v = mask[:, cols], valid[:, cols]
        return float(m[v].float().mean()) if v.any() else float("nan")

    return {"k": k, "backbone_share": share,
            "shortlist_depth1": share_of(inside, slice(0, 1)), "shortlist_all_depths": share_of(inside, slice(0, half)),
            "shortlist_text": share_of(inside, slice(half, None)),
            "cluster_depth1": share_of(selected, slice(0, 1)), "cluster_all_depths": share_of(selected, slice(0, half)),
            "clusters_used": _clusters_used(shortlister, scores)}


def _objective(row: dict) -> float:
    """What the backbone share is chosen for: greedy choices (T=0) and text tokens (what T=1 follows) alike."""
    return row["shortlist_all_depths"] + row["shortlist_text"]


def _clusters_used(shortlister, scores: torch.Tensor) -> float:
    """Mean number of clusters a shortlist draws from (a cluster counts if any of its tokens is in)."""
    order = torch.argsort(scores, dim=-1, descending=True, stable=True)
    starts = shortlister.backbone_size + shortlister.sizes[order].cumsum(-1) - shortlister.sizes[order]
    return float(((starts < shortlister.k) & (shortlister.sizes[order] > 0)).sum(-1).float().mean())


def frequency_recall(counts: torch.Tensor, tokens: torch.Tensor, k: int) -> dict:
    """The same shares for the fixed list of the K most frequent training tokens (FR-Spec on the same data)."""
    top = torch.zeros(counts.numel(), dtype=torch.bool)
    top[torch.sort(-counts.float(), stable=True).indices[:k]] = True
    valid, half = tokens >= 0, tokens.shape[1] // 2
    inside = top[tokens.clamp_min(0)]

    def share_of(cols: slice) -> float:
        return float(inside[:, cols][valid[:, cols]].float().mean())

    return {"k": k, "depth1": share_of(slice(0, 1)), "all_depths": share_of(slice(0, half)), "text": share_of(slice(half, None))}


def train_dynaspec(bundle: Path, target: Path, corpus: Path, out: Path, settings: DynaSpecTraining = DynaSpecTraining(),
                   progress: Callable[[str], None] = lambda what: None) -> dict:

    if settings.depth < 1:
        raise SettingsError(f"--depth must be at least 1 (got {settings.depth})")
    if settings.hidden < 0 or settings.steps < 1:
        raise SettingsError("--hidden must be >= 0 and --steps >= 1")
    start = time.perf_counter()
    generator = SpeculativeGenerator.from_bundle(bundle, target)
    vocab = generator.drafter.config.vocab_size
    sizes = sorted({min(k, vocab) for k in settings.sizes})
    if not sizes or sizes[0] < 1:
        raise SettingsError(f"--sizes must be positive integers (got {settings.sizes})")
    rows = cluster_source(generator, settings.cluster_on)
    progress(f"clustering {rows.shape[0]} {settings.cluster_on} rows into {settings.clusters} groups")
    labels = cluster_rows(rows, settings.clusters, seed=settings.seed)
    states, targets, lengths = [], [], []
    for domain in [d for d in corpus_domains(corpus) if d != "switch"]:
        progress(f"teacher-forced pass over {domain}")
        for ids in replay_streams(generator, str(corpus), domain, settings.tokens, split="train"):
            if len(ids) < settings.depth + 3:
                continue
            s, greedy = teacher_forced(generator, ids)
            y = depth_targets(ids, greedy, settings.depth)
            states.append(s[: y.shape[0]])
            targets.append(y)
            lengths.append(y.shape[0])
    if not states:
        raise SettingsError(f"{corpus}: no train documents of at least {settings.depth + 3} tokens")
    x, y, split = torch.cat(states), torch.cat(targets), split_blocks(lengths)
    if not (split == 2).any() or not (split == 1).any():
        raise SettingsError(f"{corpus}: {x.shape[0]} train positions are too few for a held-out split "
                            f"(blocks of {BLOCK}; raise --tokens or add documents)")
    train, valid, held = split == 0, split == 1, split == 2
    counts = torch.bincount(y[train].flatten(), minlength=vocab)
    progress(f"fitting the router on {int(train.sum())} positions ({int(valid.sum())} validation, {int(held.sum())} held out)")
    router = train_router(x[train], y[train], labels, vocab, hidden=settings.hidden,
                          steps=settings.steps, seed=settings.seed, counts=counts)
    with torch.no_grad():
        valid_scores, held_scores = router.scores(x[valid]), router.scores(x[held])
    for k in sizes:  # the backbone share that keeps the most validation tokens of depth 1..D in the set
        router.backbone_shares[k] = max(BACKBONE_SHARES, key=lambda share: _objective(
            recall(router, valid_scores, y[valid], k, share)))
    with torch.no_grad():
        top = held_scores.topk(min(8, settings.clusters), dim=-1).indices
    truth = labels[y[held, 0]]
    report = {
        "clusters": settings.clusters, "cluster_on": settings.cluster_on, "depth": settings.depth,
        "router_hidden": settings.hidden, "positions": int(x.shape[0]), "train_positions": int(train.sum()),
        "heldout_positions": int(held.sum()), "vocab_size": vocab,
        "heldout_cluster_top1": float((top[:, 0] == truth).float().mean()),
        "heldout_cluster_top8": float((top == truth[:, None]).any(-1).float().mean()),
        "heldout": [recall(router, held_scores, y[held], k, router.backbone_shares[k]) for k in sizes],
        "heldout_frequency_list": [frequency_recall(counts, y[held], k) for k in sizes],
    }
    router.report = report
    router.save(Path(out))
    return {**report, "seconds": round(time.perf_counter() - start, 1), "out": str(out)}
