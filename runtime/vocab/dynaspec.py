"""DynaSpec baseline (``dynaspec:K:C``): a frequent-token backbone plus token clusters routed per cycle.

DynaSpec (Zhang, Ullah, Schultheis, Babbar, arXiv 2510.13847) trains a light meta-classifier that
routes each context to a few coarse token clusters; the union of the top clusters is the drafter's
shortlist, next to a frequency-ranked subset, and verification keeps the full vocabulary. Here:

- clusters: spherical k-means over the rows of the target's own LM head (``cluster_rows``; the
  bundle's reservoir is 89% rows synthesised by a ridge map on the medium pair, so it is not used);
- router: a one-hidden-layer MLP (or linear, ``hidden=0``) on the drafter's head input at the
  current root, the state this cycle's trunk call has just computed (``route``, called by the
  compiled drafter between trunk and head), trained on the clusters of the tokens at depth 1..D
  after the root (``evospec vocab dynaspec``);
- shortlist of exactly K: the ``backbone`` share of K most frequent tokens, then clusters in router
  order (within a cluster, most frequent first), the last one cut where K is reached. The backbone
  share is chosen per size on a validation split at training time and stored in the router file.

One set serves every depth of a cycle (the compiled drafter sets it once, between trunk and head of
the cycle's first call), so the router is trained on all depths at once, not per depth.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from evospec.core.atomic import atomic_path
from evospec.core.errors import SettingsError
from evospec.runtime.vocab.cluster_groups import ClusterGroups

ROUTER_FORMAT = "evospec-dynaspec/2"
DEFAULT_BACKBONE = 0.5  # backbone share of K when the router file has no validated share
_TENSORS = ("labels", "w1", "b1", "w2", "b2", "counts")


def cluster_rows(rows: torch.Tensor, clusters: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """[V] group of each row: spherical k-means on the row directions (tokens a head scores alike share a group)."""
    if not 1 <= clusters <= rows.shape[0]:
        raise SettingsError(f"clusters must be in [1, {rows.shape[0]}] (got {clusters})")
    unit = torch.nn.functional.normalize(rows.float(), dim=-1)
    g = torch.Generator().manual_seed(seed)
    first = int(torch.randint(rows.shape[0], (1,), generator=g))
    centres, nearest = unit[first : first + 1], unit @ unit[first]
    for _ in range(clusters - 1):  # farthest-first seeding: every group starts from its own region
        pick = int(nearest.argmin())
        centres = torch.cat((centres, unit[pick : pick + 1]))
        nearest = torch.maximum(nearest, unit @ unit[pick])
    for _ in range(iters):
        labels = (unit @ centres.T).argmax(-1)
        sums = torch.zeros_like(centres).index_add_(0, labels, unit)
        empty = sums.norm(dim=-1) == 0
        centres = torch.where(empty[:, None], centres, torch.nn.functional.normalize(sums, dim=-1))
    return (unit @ centres.T).argmax(-1)


@dataclass
class Router:
    """Cluster labels, the router's weights and the frequency order, as one safetensors file.

    ``w1``/``b1`` are empty for a linear router. ``backbone_shares`` maps shortlist sizes to the
    backbone share validated for them; ``report`` is what training measured (held-out recall)."""

    labels: torch.Tensor  # [V] cluster of each token
    w1: torch.Tensor  # [H, d] (or [0, d]: linear router)
    b1: torch.Tensor  # [H]
    w2: torch.Tensor  # [C, H] (or [C, d])
    b2: torch.Tensor  # [C]
    counts: torch.Tensor  # [V] how often each token came in training (backbone and order within a cluster)
    backbone_shares: dict[int, float] = field(default_factory=dict)
    report: dict = field(default_factory=dict)

    @property
    def clusters(self) -> int:
        return int(self.w2.shape[0])

    @property
    def state_size(self) -> int:
        return int((self.w1 if self.w1.numel() else self.w2).shape[1])

    def scores(self, states: torch.Tensor) -> torch.Tensor:
        """[..., C] router logits for states [..., d]."""
        x = states.float()
        if self.w1.numel():
            x = torch.nn.functional.gelu(x @ self.w1.T + self.b1)
        return x @ self.w2.T + self.b2

    def backbone_share(self, k: int) -> float:
        """The validated share for the stored size nearest to ``k`` (log scale), else the default."""
        if not self.backbone_shares:
            return DEFAULT_BACKBONE
        size = min(self.backbone_shares, key=lambda s: abs(math.log(s) - math.log(k)))
        return self.backbone_shares[size]

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file


        tensors = {name: getattr(self, name).contiguous() for name in _TENSORS}
        metadata = {"format": ROUTER_FORMAT, "backbone_shares": json.dumps({str(k): v for k, v in self.backbone_shares.items()}),
                    "report": json.dumps(self.report)}
        with atomic_path(Path(path)) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | Path) -> Router:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise SettingsError(f"router file {path} does not exist (train one with `evospec vocab dynaspec`)")
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
                found = meta.get("format")
                if found != ROUTER_FORMAT:
                    old = " (an older router format: retrain it with `evospec vocab dynaspec`)" if str(found).startswith(
                        "evospec-dynaspec/") else ""
                    raise SettingsError(f"{path} is not an evospec DynaSpec router{old}")
                missing = [name for name in _TENSORS if name not in f.keys()]
                if missing:
                    raise SettingsError(f"{path}: router file lacks tensors {', '.join(missing)}")
                tensors = {name: f.get_tensor(name) for name in _TENSORS}
                shares = {int(k): float(v) for k, v in json.loads(meta.get("backbone_shares", "{}")).items()}
                report = json.loads(meta.get("report", "{}"))
        except SettingsError:
            raise
        except Exception as exc:  # safetensors' and json's own error types
            raise SettingsError(f"{path} is not a readable router file ({type(exc).__name__}: {exc})") from None
        router = cls(**tensors, backbone_shares=shares, report=report)
        router.check(path)
        return router

    def check(self, where: str | Path = "router") -> None:
        """Shapes that agree with each other, labels in range: a clear error instead of a failed matmul."""
        c, v = self.clusters, self.labels.numel()
        linear = self.w1.numel() == 0
        problems = []
        if self.labels.ndim != 1 or self.counts.shape != (v,):
            problems.append(f"labels {tuple(self.labels.shape)} and counts {tuple(self.counts.shape)} must both be [V]")
        if self.b2.shape != (c,) or (not linear and (self.b1.shape != (self.w1.shape[0],) or self.w2.shape[1] != self.w1.shape[0])):
            problems.append("layer shapes do not chain")
        if v and (int(self.labels.min()) < 0 or int(self.labels.max()) >= c):
            problems.append(f"cluster labels outside [0, {c})")
        if problems:
            raise SettingsError(f"{where}: inconsistent router file: {'; '.join(problems)}")


class RouterClusters:
    """A router seen as EvoSpec's mass fill sees its cluster index (``labels``, ``clusters``, ``scores``), so the
    fill can rank the router's clusters (``fill_source = "router"``) instead of the mass index's. The router scores
    the clusters of the *target's* next tokens; the mass index estimates the drafter's own mass."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.labels = router.labels.long()
        self.clusters = router.clusters

    def scores(self, state: torch.Tensor, rank: str = "mass") -> torch.Tensor:
        """[C] the router's logits for one head input (``rank`` is the mass index's option; a router has one)."""
        return self.router.scores(state.detach().reshape(-1).float().cpu())


def train_router(states: torch.Tensor, next_tokens: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                 hidden: int = 256, steps: int = 600, lr: float = 3e-3, batch: int = 1024, seed: int = 0,
                 counts: torch.Tensor | None = None) -> Router:
    """Fit the router on drafter states [n, d] -> the clusters of ``next_tokens`` ([n] or [n, m];
    -1 marks no token): cross-entropy against the positions' cluster distribution (every token
    of the row weighs the same, so a state is pulled toward all the clusters its next tokens fall in).

    ``counts`` (the frequency order) defaults to the counts of ``next_tokens``."""
    torch.manual_seed(seed)
    clusters = int(labels.max()) + 1
    targets = next_tokens.reshape(next_tokens.shape[0], -1)
    valid = targets >= 0
    dist = torch.zeros(targets.shape[0], clusters)
    dist.scatter_add_(1, labels[targets.clamp_min(0)], valid.float())
    keep = dist.sum(-1) > 0
    x, dist = states.float()[keep], dist[keep] / dist[keep].sum(-1, keepdim=True)
    layers = [torch.nn.Linear(x.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, clusters)] if hidden else \
        [torch.nn.Linear(x.shape[1], clusters)]
    model = torch.nn.Sequential(*layers)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        pick = torch.randint(x.shape[0], (min(batch, x.shape[0]),), generator=g)
        optimiser.zero_grad()
        loss = -(dist[pick] * torch.log_softmax(model(x[pick]), -1)).sum(-1).mean()
        loss.backward()
        optimiser.step()
    if counts is None:
        counts = torch.bincount(targets[valid], minlength=vocab_size)
    first, last = (model[0], model[2]) if hidden else (None, model[0])
    w1 = first.weight.detach().clone() if first is not None else torch.zeros(0, x.shape[1])
    b1 = first.bias.detach().clone() if first is not None else torch.zeros(0)
    return Router(labels.clone(), w1, b1, last.weight.detach().clone(), last.bias.detach().clone(), counts.clone())


class Shortlister:
    """Exactly-K shortlists from router scores, for one size and backbone share.

    Tokens are placed in one order per cycle: the backbone (the B most frequent), then clusters in
    router order, each cluster's non-backbone tokens most frequent first; the first K are the set.
    ``positions`` computes where given tokens land in that order for many states at once (training's
    recall), ``ids`` builds the set for one state (decoding)."""

    def __init__(self, router: Router, k: int, share: float) -> None:
        v, c = router.labels.numel(), router.clusters
        self.k, self.backbone_size = k, min(k, round(share * k))
        by_freq = torch.sort(-router.counts.float(), stable=True).indices  # most frequent first, ties by id
        self.freq_rank = torch.empty(v, dtype=torch.long)
        self.freq_rank[by_freq] = torch.arange(v)
        self.backbone = by_freq[: self.backbone_size]
        self.in_backbone = self.freq_rank < self.backbone_size
        rest = by_freq[self.backbone_size :]
        self.groups = ClusterGroups(rest, router.labels[rest], c)  # grouped by cluster, frequency order kept
        rest, self.sizes, self.offsets = self.groups.members, self.groups.sizes, self.groups.offsets
        self.within = torch.zeros(v, dtype=torch.long)  # a token's place inside its cluster's list
        self.within[rest] = torch.arange(rest.numel()) - self.offsets[router.labels[rest]]
        self.labels = router.labels

    def ids(self, scores: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
        """(the K ids, the clusters used) for router scores [C]: the backbone, then whole clusters in router
        order, the last one cut at K."""
        need = self.k - self.backbone_size
        if need <= 0:
            return self.backbone, ()
        chosen = self.groups.enough(torch.argsort(scores, descending=True, stable=True).numpy(), need)
        rows = torch.from_numpy(self.groups.rows_of(chosen)[:need])
        used = chosen[self.groups.sizes.numpy()[chosen] > 0]
        return torch.cat((self.backbone, rows)), tuple(used.tolist())

    def positions(self, scores: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(in the shortlist, cluster selected) for tokens [n, m] under scores [n, C]: whether each
        token is among the first K, and whether its cluster contributed to the set at all."""
        order = torch.argsort(scores, dim=-1, descending=True, stable=True)  # [n, C]
        before = torch.zeros_like(order)  # tokens placed ahead of cluster c: backbone + earlier clusters
        before.scatter_(1, order, self.sizes[order].cumsum(-1) - self.sizes[order])
        t = tokens.clamp_min(0)
        start = self.backbone_size + before.gather(1, self.labels[t])  # [n, m]
        cluster_selected = (start < self.k) & (self.sizes[self.labels[t]] > 0)
        place = start + self.within[t]
        inside = torch.where(self.in_backbone[t], torch.ones_like(place, dtype=torch.bool), place < self.k)
        cluster_selected = cluster_selected | self.in_backbone[t]
        return inside, cluster_selected


class DynaSpecPolicy:
    """Routed per cycle (``route``, with the fresh root state); ``active_ids`` is the last routed set,
    or before any routing the K most frequent tokens."""

    def __init__(self, k: int, clusters: int, router: Router, vocab_size: int) -> None:
        if router.clusters != clusters:
            raise SettingsError(f"dynaspec:{k}:{clusters}: the router file has {router.clusters} clusters")
        if router.labels.numel() != vocab_size:
            raise SettingsError(f"the router covers {router.labels.numel()} tokens but the model has {vocab_size}")
        if not 1 <= k <= vocab_size:
            raise SettingsError(f"dynaspec:K needs 1 <= K <= {vocab_size} (got {k})")
        self.name, self.k, self.router = f"dynaspec:{k}:{clusters}", k, router
        self.shortlister = Shortlister(router, k, router.backbone_share(k))
        self._prior = torch.sort(-router.counts.float(), stable=True).indices[:k].clone()
        self.reset([])

    def reset(self, prompt_ids: list[int]) -> None:
        self._active, self._used = self._prior, None

    def route(self, state: torch.Tensor) -> torch.Tensor:
        """This cycle's set from the drafter's head input at the current root ([hidden]). The same
        clusters as last cycle hand back the same tensor, so an unchanged set costs the drafter nothing."""
        if state.shape[-1] != self.router.state_size:
            raise SettingsError(f"{self.name}: the router reads states of {self.router.state_size} values, "
                                f"the drafter gives {state.shape[-1]} (a router trained for another drafter)")
        ids, used = self.shortlister.ids(self.router.scores(state.detach().reshape(-1).cpu()))
        if used != self._used:
            self._active, self._used = ids, used
        return self._active

    def observe(self, committed: list[int], state: torch.Tensor | None = None,
                target_top: torch.Tensor | None = None) -> None:
        """Nothing to learn online: the set follows the fresh state through ``route``."""

    def active_ids(self) -> torch.Tensor:
        return self._active

    def close(self) -> None:  # no worker threads: nothing to release
        pass
