"""DynaSpec baseline (``dynaspec:K:C``): token clusters routed by a light classifier.

The reservoir rows are clustered into C groups (spherical k-means: tokens a head scores alike
share a group). A linear router on the drafter's head input predicts which group the target's
next token falls in; each step the shortlist is the union of the best-ranked groups, filled in
router order up to K (within a group, tokens the target produced most often come first). The
router is trained by ``evospec vocab dynaspec`` from the target's own greedy outputs on a corpus
and saved as one safetensors file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from evospec.errors import SettingsError

ROUTER_FORMAT = "evospec-dynaspec/1"


def cluster_rows(rows: torch.Tensor, clusters: int, iters: int = 15, seed: int = 0) -> torch.Tensor:
    """[V] group of each row: spherical k-means on the row directions."""
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
    labels: torch.Tensor  # [V] group of each token
    weight: torch.Tensor  # [C, d]
    bias: torch.Tensor  # [C]
    counts: torch.Tensor  # [V] how often the target produced each token in training (order within a group)

    @property
    def clusters(self) -> int:
        return int(self.weight.shape[0])

    def save(self, path: Path) -> None:
        from safetensors.torch import save_file

        from evospec.atomic import atomic_path

        with atomic_path(Path(path)) as tmp:
            save_file({"labels": self.labels, "weight": self.weight, "bias": self.bias, "counts": self.counts},
                      str(tmp), metadata={"format": ROUTER_FORMAT})

    @classmethod
    def load(cls, path: str | Path) -> Router:
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise SettingsError(f"router file {path} does not exist (train one with `evospec vocab dynaspec`)")
        try:
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("format") != ROUTER_FORMAT:
                    raise SettingsError(f"{path} is not an evospec DynaSpec router")
                t = {k: f.get_tensor(k) for k in ("labels", "weight", "bias", "counts")}
        except SettingsError:
            raise
        except Exception as exc:  # safetensors' own error types
            raise SettingsError(f"{path} is not a readable router file ({type(exc).__name__}: {exc})") from None
        return cls(**t)


def train_router(states: torch.Tensor, next_tokens: torch.Tensor, labels: torch.Tensor, vocab_size: int,
                 steps: int = 300, lr: float = 1e-2, seed: int = 0) -> Router:
    """Fit the router (softmax regression, full batch Adam) on drafter states -> group of the target's token."""
    torch.manual_seed(seed)
    clusters = int(labels.max()) + 1
    linear = torch.nn.Linear(states.shape[1], clusters)
    optimiser = torch.optim.Adam(linear.parameters(), lr=lr)
    x, y = states.float(), labels[next_tokens]
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(linear(x), y).backward()
        optimiser.step()
    counts = torch.bincount(next_tokens, minlength=vocab_size)
    return Router(labels.clone(), linear.weight.detach().clone(), linear.bias.detach().clone(), counts)


class DynaSpecPolicy:
    def __init__(self, k: int, clusters: int, router: Router, vocab_size: int) -> None:
        if router.clusters != clusters:
            raise SettingsError(f"dynaspec:{k}:{clusters}: the router file has {router.clusters} clusters")
        if router.labels.numel() != vocab_size:
            raise SettingsError(f"the router covers {router.labels.numel()} tokens but the model has {vocab_size}")
        if not 1 <= k <= vocab_size:
            raise SettingsError(f"dynaspec:K needs 1 <= K <= {vocab_size} (got {k})")
        self.name, self.k, self.router = f"dynaspec:{k}:{clusters}", k, router
        # tokens grouped by cluster, most produced first; offsets[c] .. offsets[c+1] is cluster c
        order = torch.sort(-router.counts.float(), stable=True).indices
        order = order[torch.sort(router.labels[order], stable=True).indices]
        self.members = order
        self.offsets = torch.cat((torch.zeros(1, dtype=torch.long), torch.bincount(router.labels, minlength=clusters).cumsum(0)))
        self.reset([])

    def reset(self, prompt_ids: list[int]) -> None:
        self._ranking = torch.argsort(self.router.bias, descending=True)  # the prior until a state arrives

    def observe(self, committed: list[int], state: torch.Tensor | None = None) -> None:
        if state is not None:
            scores = self.router.weight @ state.detach().float().cpu() + self.router.bias
            self._ranking = torch.argsort(scores, descending=True)

    def active_ids(self) -> torch.Tensor:
        parts, size = [], 0
        for c in self._ranking.tolist():
            part = self.members[self.offsets[c] : self.offsets[c + 1]][: self.k - size]
            parts.append(part)
            size += part.numel()
            if size >= self.k:
                break
        return torch.cat(parts)
