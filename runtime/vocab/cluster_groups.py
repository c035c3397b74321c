"""Ids grouped by cluster, and the ids of chosen clusters gathered in one pass.

Two routed policies fill a set with whole clusters in a per-cycle rank order: EvoSpec's mass fill
(``mass_fill.py``) and DynaSpec's shortlist (``dynaspec.py``). Both run that on the decoding thread
every cycle, so the gather is one index built with ``np.repeat`` over the chosen clusters, not a slice
per cluster and a concatenation (~110 clusters at K = 16384).
"""

from __future__ import annotations

import numpy as np
import torch


class ClusterGroups:
    """``ids`` grouped by ``groups`` (their order kept inside each group); ``members``, ``sizes`` and
    ``offsets`` are torch tensors sharing memory with the numpy arrays the gather reads."""

    def __init__(self, ids: torch.Tensor, groups: torch.Tensor, count: int) -> None:
        self.members = ids[torch.sort(groups, stable=True).indices].contiguous()
        self.sizes = torch.bincount(groups, minlength=count)
        self.offsets = torch.cat((torch.zeros(1, dtype=torch.long), self.sizes.cumsum(0)))
        self._members, self._sizes, self._offsets = self.members.numpy(), self.sizes.numpy(), self.offsets.numpy()

    def enough(self, order: np.ndarray, need: int) -> np.ndarray:
        """The shortest prefix of ``order`` whose groups hold at least ``need`` ids (all of it if none does)."""
        return order[: int(np.searchsorted(np.cumsum(self._sizes[order]), need)) + 1]

    def rows_of(self, groups: np.ndarray) -> np.ndarray:
        """The members of ``groups``, group after group in the order given."""
        sizes = self._sizes[groups]
        ends = np.cumsum(sizes)
        shift = np.repeat(self._offsets[groups] - (ends - sizes), sizes)  # member index minus output position
        return self._members[np.arange(int(ends[-1]) if ends.size else 0) + shift]

    def owners(self, groups: np.ndarray) -> np.ndarray:
        """The group of each id ``rows_of(groups)`` returns, in the same order."""
        return np.repeat(groups, self._sizes[groups])
