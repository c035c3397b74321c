"""``evospec vocab dynaspec``: train the DynaSpec baseline's router for a compiled bundle.

Clusters the bundle's reservoir rows, runs target and drafter teacher-forced over the corpus's
train split (every domain but topic-switch streams) and fits the router from the drafter's head
input at each position to the cluster of the target's own greedy choice two tokens on, the token
the head at that position proposes. Reports the router's held-out top-1 and top-8 cluster accuracy.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from evospec.corpus import corpus_domains
from evospec.errors import SettingsError


def train_dynaspec(bundle: Path, target: Path, corpus: Path, clusters: int, tokens: int, out: Path,
                   progress: Callable[[str], None] = lambda what: None) -> dict:
    from evospec.teacher_forced import replay_streams
    from evospec.runtime.generator import SpeculativeGenerator
    from evospec.runtime.vocab.dynaspec import cluster_rows, train_router
    from evospec.teacher_forced import teacher_forced

    start = time.perf_counter()
    generator = SpeculativeGenerator.from_bundle(bundle, target)
    resident = generator.drafter.active_rows
    if resident is None:
        raise SettingsError(f"{bundle}: DynaSpec training reads the reservoir on the host (ort or torch bundles)")
    progress(f"clustering {resident.reservoir.shape[0]} rows into {clusters} groups")
    labels = cluster_rows(resident.reservoir, clusters)
    states, targets = [], []
    for domain in [d for d in corpus_domains(corpus) if d != "switch"]:
        progress(f"teacher-forced pass over {domain}")
        for ids in replay_streams(generator, str(corpus), domain, tokens, split="train"):
            if len(ids) < 4:
                continue
            s, greedy = teacher_forced(generator, ids)
            states.append(s[:-1])  # state j proposes token j + 2: the target's choice after position j + 1
            targets.append(greedy[1:])
    if not states:
        raise SettingsError(f"{corpus}: no train documents of at least 4 tokens")
    x, y = torch.cat(states), torch.cat(targets)
    held = torch.arange(x.shape[0]) % 10 == 0
    progress(f"fitting the router on {int((~held).sum())} positions")
    router = train_router(x[~held], y[~held], labels, resident.reservoir.shape[0])
    scores = x[held] @ router.weight.T + router.bias
    truth = labels[y[held]]
    top8 = scores.topk(min(8, clusters), dim=-1).indices
    report = {"clusters": clusters, "positions": int(x.shape[0]),
              "heldout_top1": float((top8[:, 0] == truth).float().mean()),
              "heldout_top8": float((top8 == truth[:, None]).any(-1).float().mean()),
              "seconds": round(time.perf_counter() - start, 1), "out": str(out)}
    router.save(Path(out))
    return report
