"""EvoSpec's tail fill by mass: the budget its evidence leaves unused goes to the clusters that hold the
most of the drafter's own estimated mass at this cycle's root, not to the next most frequent tokens.

The living vocabulary's evidence (context, successors, semantic rows) fills part of the tail; the
rest used to be the next most frequent corpus tokens, the same in every context. ``MassRouted`` keeps
the core and the evidence (``kept_ids`` of the wrapped policy: the pipelined set with its fresh patch,
or the synchronous one) and fills the remaining rows, between the drafter's trunk and head (``route``,
as DynaSpec's router is called), with the rows of the clusters the mass index ranks first for the
state the drafter is about to draft from (``mass_index.py`` says why the drafter's own mass is the
quantity to hold). Within a cluster, rows go most frequent first, so a cut cluster keeps its
frequent rows. Cost on the decoding thread: C dot products, a sort of C scores, one gather.
"""

from __future__ import annotations

import numpy as np
import torch

from evospec.runtime.vocab.cluster_groups import ClusterGroups
from evospec.runtime.vocab.mass_index import MassIndex


def frequency_prior(labels: torch.Tensor, counts: torch.Tensor, clusters: int, weight: float) -> torch.Tensor:
    """[C] ``weight`` x the log of the mean corpus count (plus one) of each cluster's rows (``labels`` and
    ``counts``: those rows' clusters and corpus counts).

    Why: the score estimates the drafter's mass, and a row the drafter gives mass the target rarely spends
    it on costs acceptance twice at T = 1 (the token is rejected, and the set's other tokens are drawn less).
    The drafter's mass is least reliable on rare rows (most were synthesised by the ridge map); the corpus
    count is the target's marginal, so the prior shrinks the estimate towards clusters of tokens text uses."""
    totals = torch.zeros(clusters, dtype=torch.float64).index_add_(0, labels, counts.double())
    sizes = torch.bincount(labels, minlength=clusters).clamp_min(1)
    return (weight * torch.log1p(totals / sizes)).float()


class MassFill:
    """For one core: the other rows grouped by cluster (most frequent first inside each), and the fill.

    The fill runs on the decoding thread each cycle: a sort of C scores and a few numpy passes over the
    chosen clusters' rows (``ClusterGroups``)."""

    def __init__(self, index: MassIndex, core: torch.Tensor, by_frequency: torch.Tensor,
                 last: torch.Tensor | None = None, sticky: float = 0.0, counts: torch.Tensor | None = None,
                 prior: float = 0.0, rank: str = "mass") -> None:
        """``last``: a [V] mask of rows to take only after every other row (each cluster's such rows form a
        second group, ranked as the cluster is, after all the first groups). ``sticky``: a cluster the last
        fill chose goes first again while it ranks within the clusters holding ``(1 + sticky)`` times the rows
        needed; the set then moves fewer rows from cycle to cycle (0: rank order alone). ``prior``: the weight of
        ``frequency_prior`` over the rows outside the core, from their corpus ``counts`` [V], added to every
        cluster's score (0: none). ``rank``: what the clusters are ranked by (``MassIndex.scores``): ``mass``
        or ``max``. ``index``: the mass index, or a DynaSpec router's clusters (``RouterClusters``: the same
        ``labels``, ``clusters`` and ``scores``)."""
        if rank not in ("mass", "max"):
            raise ValueError(f"rank must be 'mass' or 'max' (got {rank!r})")
        self.rank = rank
        if sticky < 0:
            raise ValueError(f"sticky must be >= 0 (got {sticky})")
        if prior and counts is None:
            raise ValueError("a frequency prior needs the corpus counts")
        self.index = index
        vocab = index.labels.numel()
        in_core = torch.zeros(vocab, dtype=torch.bool)
        in_core[core] = True
        rest = by_frequency[~in_core[by_frequency]]
        self.prior = None if not prior else frequency_prior(index.labels[rest], counts[rest], index.clusters, prior)
        self.by_frequency = rest.numpy()  # the fill when no root state is at hand (``MassRouted.active_ids``)
        self.tiers = 1 if last is None else 2
        group = index.labels[rest] + (0 if last is None else index.clusters * last[rest].long())
        self.groups = ClusterGroups(rest, group, index.clusters * self.tiers)  # frequency order kept in each
        self._kept = np.zeros(vocab, dtype=bool)
        self.sticky = sticky
        self._chosen = np.zeros(index.clusters * self.tiers, dtype=bool)  # the groups the last fill took rows from

    def forget(self) -> None:
        """A new sequence: no cluster is sticky."""
        self._chosen[:] = False

    def ids(self, state: torch.Tensor, kept: torch.Tensor, room: int) -> torch.Tensor:
        """Up to ``room`` ids outside ``kept``, from the clusters ranked first for ``state`` in rank order."""
        if room <= 0:
            return kept[:0]
        scores = self.index.scores(state, self.rank)
        need = room + kept.numel()  # enough clusters to hold ``room`` ids even if every kept id is among them
        band_rows = int(need * (1 + self.sticky))  # the rows the sticky band spans; the fill reads no further
        order = self._ranked((scores if self.prior is None else scores + self.prior).numpy(), band_rows)
        if self.tiers == 2:  # every cluster's first group in rank order, then their second groups
            order = np.concatenate((order, order + self.index.clusters))
        if self.sticky:
            band = self.groups.enough(order, band_rows)
            stay = band[self._chosen[band]]  # last cycle's clusters still ranked within the band, in rank order
            first = np.zeros_like(self._chosen)
            first[stay] = True
            order = np.concatenate((stay, order[~first[order]]))
        chosen = self.groups.enough(order, need)
        candidates = self.groups.rows_of(chosen)
        picked = self._outside(kept, candidates, room)
        if self.sticky:  # the groups that gave rows (``enough`` may reach past them when kept ids are among them)
            self._chosen[:] = False
            self._chosen[self.groups.owners(chosen)[picked]] = True  # not a lookup per id in a vocabulary-wide table
        return torch.from_numpy(candidates[picked]).to(kept.dtype)

    def _ranked(self, scores: np.ndarray, band: int) -> np.ndarray:
        """The clusters by descending score (ties in index order), sorted only as far as the fill reads: the fill
        and the sticky band take clusters from the shortest prefix holding ``band`` rows, so once the best few hold
        that many (``argpartition``), the rest need no order (a full argsort of C scores: ~0.15 ms a step in the
        decoding loop). With two tiers every first group comes before any second one: the whole order."""
        c = scores.size
        head = min(c, 256) if self.tiers == 1 else c
        first = self.groups.sizes.numpy()
        while head < c:
            top = np.argpartition(-scores, head - 1)[:head]
            if int(first[top].sum()) >= band:
                return top[np.lexsort((top, -scores[top]))]
            head *= 4
        return np.lexsort((np.arange(c), -scores))

    def by_frequency_ids(self, kept: torch.Tensor, room: int) -> torch.Tensor:
        """Up to ``room`` ids outside ``kept``, most frequent first."""
        if room <= 0:
            return kept[:0]
        candidates = self.by_frequency[: room + kept.numel()]
        return torch.from_numpy(candidates[self._outside(kept, candidates, room)]).to(kept.dtype)

    def _outside(self, kept: torch.Tensor, candidates: np.ndarray, room: int) -> np.ndarray:
        """Positions in ``candidates`` of the first ``room`` ids outside ``kept``."""
        kept_np = kept.numpy()
        self._kept[kept_np] = True
        picked = np.flatnonzero(~self._kept[candidates])[:room]
        self._kept[kept_np] = False
        return picked


class MassRouted:
    """A policy whose set is its evidence plus a mass fill, chosen each cycle from the root state (``route``).
    The wrapped policy should be built without a frequency fill (``frequency_fill=False``), which would only
    be thrown away here."""

    def __init__(self, inner, fill: MassFill, k: int, greedy_fill: MassFill | None = None) -> None:
        """``greedy_fill``: the fill for greedy requests, where it differs (``fill_source = "auto"`` with a router);
        the caller says which kind of request comes next (``decoding``)."""
        self.inner, self.fill, self.k = inner, fill, k
        self.name = inner.name
        self._last: torch.Tensor | None = None
        self._fills = {False: fill, True: greedy_fill or fill}

    def decoding(self, greedy: bool) -> None:
        """The next request decodes greedily or samples: its fill (the generator calls this before ``reset``)."""
        self.fill = self._fills[greedy]
        if hasattr(self.inner, "decoding"):
            self.inner.decoding(greedy)

    def reset(self, prompt_ids: list[int]) -> None:
        self.fill.forget()
        self.inner.reset(prompt_ids)

    def route(self, state: torch.Tensor) -> torch.Tensor:
        self.inner.active_ids()  # collects the worker's newest set (pipelined) and patches it
        kept = self.inner.kept_ids()
        return self._serve(torch.cat((kept, self.fill.ids(state, kept, self.k - kept.numel()))))

    def active_ids(self) -> torch.Tensor:
        """Without a root state (a caller that does not route): the evidence, filled by frequency."""
        self.inner.active_ids()
        kept = self.inner.kept_ids()
        return self._serve(torch.cat((kept, self.fill.by_frequency_ids(kept, self.k - kept.numel()))))

    def _serve(self, active: torch.Tensor) -> torch.Tensor:
        if self._last is not None and torch.equal(active, self._last):
            active = self._last  # the same tensor: the drafter's plan update then costs nothing
        self._last = active
        self.inner.served(active)
        return active

    def __getattr__(self, name: str):  # observe, close, kept_ids, ... of the wrapped policy
        return getattr(self.inner, name)
