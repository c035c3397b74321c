"""EvoSpec's tail fill by mass: the budget its evidence leaves unused goes to the clusters that hold the
most of the drafter's own estimated mass at this cycle's root, not to the next most frequent tokens.

The living vocabulary's evidence (context, successors, semantic rows) fills part of the tail; the
rest used to be the next most frequent corpus tokens, the same in every context. ``MassRouted`` keeps
the core and the evidence (``kept_ids`` of the wrapped policy: the pipelined set with its fresh patch,
or the synchronous one) and fills the remaining rows, between the drafter's trunk and head (``route``,
as DynaSpec's router is called), with the rows of the clusters the mass index ranks first for the
state the drafter is about to draft from (``mass_index.py`` says why the drafter's own mass is the
quantity to hold). Within a cluster, rows go most frequent first, so a cut cluster keeps its
frequent rows. Cost on the decoding thread: C dot products, a sort of C scores, a few slices.
"""

from __future__ import annotations

import torch

from evospec.runtime.vocab.mass_index import MassIndex


class MassFill:
    """For one core: the other rows grouped by cluster (most frequent first inside each), and the fill."""

    def __init__(self, index: MassIndex, core: torch.Tensor, by_frequency: torch.Tensor) -> None:
        self.index = index
        vocab = index.labels.numel()
        in_core = torch.zeros(vocab, dtype=torch.bool)
        in_core[core] = True
        rest = by_frequency[~in_core[by_frequency]]
        self.members = rest[torch.sort(index.labels[rest], stable=True).indices]  # grouped, frequency order kept
        self.sizes = torch.bincount(index.labels[rest], minlength=index.clusters)
        self.offsets = torch.cat((torch.zeros(1, dtype=torch.long), self.sizes.cumsum(0))).tolist()
        self._kept = torch.zeros(vocab, dtype=torch.bool)

    def ids(self, state: torch.Tensor, kept: torch.Tensor, room: int) -> torch.Tensor:
        """Up to ``room`` ids outside ``kept``, from the clusters ranked first for ``state`` in rank order."""
        if room <= 0:
            return kept[:0]
        order = torch.argsort(self.index.scores(state), descending=True)
        # enough clusters to hold ``room`` ids even if every kept id is among them
        enough = int(torch.searchsorted(self.sizes[order].cumsum(0), room + kept.numel())) + 1
        offsets = self.offsets
        candidates = torch.cat([self.members[offsets[c] : offsets[c + 1]] for c in order[:enough].tolist()])
        self._kept[kept] = True
        fill = candidates[~self._kept[candidates]][:room]
        self._kept[kept] = False
        return fill


class MassRouted:
    """A policy whose set is its evidence plus a mass fill, chosen each cycle from the root state (``route``)."""

    def __init__(self, inner, fill: MassFill, k: int) -> None:
        self.inner, self.fill, self.k = inner, fill, k
        self.name = inner.name
        self._last: torch.Tensor | None = None

    def route(self, state: torch.Tensor) -> torch.Tensor:
        self.inner.active_ids()  # collects the worker's newest set (pipelined) and patches it
        kept = self.inner.kept_ids()
        active = torch.cat((kept, self.fill.ids(state, kept, self.k - kept.numel())))
        if self._last is not None and torch.equal(active, self._last):
            active = self._last  # the same tensor: the drafter's plan update then costs nothing
        self._last = active
        self.inner.served(active)
        return active

    def __getattr__(self, name: str):  # reset, observe, active_ids, close, ... of the wrapped policy
        return getattr(self.inner, name)
