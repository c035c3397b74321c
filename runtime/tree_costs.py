"""The online cost model behind ``--draft-budget auto``: what a draft step costs and what its edges earn.

:func:`evospec.runtime.tree.draft_tree` keeps nodes by value under a :class:`StepCosts`; this module
measures one from the decoding thread's own timings (:class:`StepTiming` per step) and the edges
verification tried (:func:`tried_edges`). Kept apart from the tree builder: one builds trees, the other
learns prices.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from evospec.runtime.tree import EDGE_BINS, EDGE_PRIOR, DraftTree, StepCosts


def tried_edges(tree: DraftTree, accepted_nodes: list[int]) -> tuple[tuple[float, bool, bool], ...]:
    """(drafter log-probability, accepted, first choice) of every node verification tried: those whose
    parent (or the root) was accepted. With greedy verification each is accepted iff it is the target's
    token there. A node is its parent's first choice when it is the parent's first child in the tree:
    trees keep children in the drafter's order, so that is its first choice unless the value rule dropped
    the first choice and kept a sibling (it ranks siblings by their own tables; rare)."""
    if tree.scores is None or tree.size == 0:
        return ()
    accepted = set(accepted_nodes)
    scores, parents = tree.scores.tolist(), tree.parents.tolist()
    seen: set[int] = set()
    edges = []
    for i, p in enumerate(parents):
        first = p not in seen
        seen.add(p)
        if p == -1 or p in accepted:
            edges.append((scores[i] - (scores[p] if p >= 0 else 0.0), i in accepted, first))
    return tuple(edges)


@dataclass(frozen=True)
class StepTiming:
    """One drafted step as :class:`StepCostModel` sees it.

    Attributes:
        rows: Rows of the target pass (1 + draft nodes).
        verify_ms: Verification: the target pass, the verdict and cache upkeep (all grow with rows).
        root_ms: The drafter's root call (newly committed positions; it proposes the first level).
        tree_ms: Drafting past the root call: expansion levels and selection.
        level_rows: Frontier rows of each drafter call past the root call.
        width: The tree width drafted with.
        edges: (drafter log-probability, accepted, first choice) of each node verification tried
            (:func:`tried_edges`).
    """

    rows: int
    verify_ms: float
    root_ms: float
    tree_ms: float
    level_rows: tuple[int, ...]
    width: int
    edges: tuple[tuple[float, bool, bool], ...] = ()


SEED_FRACTIONS = (1.0, 0.25, 0.5, 1.0)  # fixed budgets (of the maximum) of the first steps: rows to fit against
DEFAULT_COST_WINDOW = 64  # steps the fits look back over
DEFAULT_EXPLORE_EVERY = 16  # every so many steps, a fixed budget of the seeds' sizes (keeps rows varied)
MIN_ROW_MS = 1e-3
REFIT_EVERY = 4  # steps between fits of the target line (a fit is O(window^2))


class StepCostModel:
    """Online :class:`StepCosts` from the decoding thread's own timings, for ``--draft-budget auto``.

    Verification is a robust (Theil-Sen) line of ms against rows over the last ``window`` steps; the
    drafter's root call is a mean over them, and its levels (per tree width) a least-squares fit of
    ``tree_ms`` = levels * level_ms + frontier rows * level_row_ms (with one row per level, as in a
    chain, the two cannot be told apart and a level is a mean); an edge's acceptance
    rate per bin of the drafter's probability (for a parent's first choice and for its other children
    apart) is accepted over tried edges there, with ``EDGE_PRIOR``
    pseudo-trials at the drafter's own probability (a small drafter is often much less sure than it
    is right: 0.3 on tokens the target takes nine times in ten). The first steps draft fixed
    budgets of different sizes (``SEED_FRACTIONS``: a line needs different row counts), and every
    ``explore_every``-th step the next of them, so the fit keeps seeing different row counts when the
    value rule has settled on one. It lives as long as its generator: the costs are the machine's and the
    model's, not one prompt's.
    """

    def __init__(self, window: int = DEFAULT_COST_WINDOW, explore_every: int = DEFAULT_EXPLORE_EVERY) -> None:
        self.explore_every = explore_every
        self._steps: deque[StepTiming] = deque(maxlen=window)
        # accepted and tried edges per bin over the window, kept as steps come and go: summing every step's edges
        # at each plan was most of the model's 0.6-0.75 ms a step (measured, stop 38)
        self._accepted = [0] * (2 * (len(EDGE_BINS) + 1))
        self._tried = [0] * (2 * (len(EDGE_BINS) + 1))
        self._seen = 0
        self._line: tuple[float, float] | None = None  # (ms at 0 rows, ms per row): the last well-posed fit
        self._fitted_at = 0  # steps seen when it was fitted

    def plan(self, max_budget: int, width: int) -> tuple[int, StepCosts | None]:
        """The next step's node budget and costs (None: a fixed-budget step that seeds or explores)."""
        if self._seen < len(SEED_FRACTIONS):
            return max(1, round(max_budget * SEED_FRACTIONS[self._seen])), None
        costs = self.costs(width)
        if costs is None:
            return max_budget, None
        if self.explore_every and self._seen % self.explore_every == 0:
            turn = self._seen // self.explore_every
            return max(1, round(max_budget * SEED_FRACTIONS[turn % len(SEED_FRACTIONS)])), None
        return max_budget, costs

    def observe(self, timing: StepTiming) -> None:
        if len(self._steps) == self._steps.maxlen:
            self._count(self._steps[0].edges, -1)  # leaves the window
        self._steps.append(timing)
        self._count(timing.edges, 1)
        self._seen += 1

    def _count(self, edges: tuple[tuple[float, bool, bool], ...], sign: int) -> None:
        for logp, accepted, first in edges:
            b = bisect.bisect_right(EDGE_BINS, math.exp(logp)) + (0 if first else len(EDGE_BINS) + 1)
            self._accepted[b] += sign * accepted
            self._tried[b] += sign

    def costs(self, width: int) -> StepCosts | None:
        """The costs fitted to the steps observed so far (None before a line can be fitted)."""
        steps = list(self._steps)
        if not steps:
            return None
        line = self._fit([s.rows for s in steps], [s.verify_ms for s in steps])
        if line is None:
            return None
        base, row = line
        root = sum(s.root_ms for s in steps) / len(steps)
        drafted = [s for s in steps if s.level_rows and s.width == width]
        level, level_row = _level_line(drafted) if drafted else (root, 0.0)  # no level seen: one more drafter call
        return StepCosts(fixed_ms=root + base + row, level_ms=level, row_ms=row, rates=self._rates(),
                         level_row_ms=level_row)

    def _rates(self) -> tuple[float, ...]:
        bounds = (0.0, *EDGE_BINS, 1.0)
        prior = [EDGE_PRIOR * (low + high) / 2 for low, high in zip(bounds, bounds[1:])] * 2
        return tuple((p + a) / (EDGE_PRIOR + t) for p, a, t in zip(prior, self._accepted, self._tried, strict=True))

    def _fit(self, rows: list[int], ms: list[float]) -> tuple[float, float] | None:
        """Theil-Sen: the median of pairwise slopes and of the residual intercepts, so a pass slowed by a
        neighbour on a shared host moves the line little (least squares let one spike tilt it);
        refitted every ``REFIT_EVERY`` steps."""
        if self._line is not None and self._seen - self._fitted_at < REFIT_EVERY:
            return self._line
        x, y = np.asarray(rows, dtype=np.int64), np.asarray(ms, dtype=np.float64)
        i, j = np.triu_indices(x.size, k=1)  # every pair once
        apart = x[i] != x[j]
        slopes = (y[j][apart] - y[i][apart]) / (x[j][apart] - x[i][apart])
        if slopes.size:
            slope = max(float(np.median(slopes)), MIN_ROW_MS)
            self._line = (max(0.0, float(np.median(y - slope * x))), slope)
            self._fitted_at = self._seen
        return self._line


def _level_line(steps: list[StepTiming]) -> tuple[float, float]:
    """(ms per drafter level, ms per frontier row in it): least squares of tree_ms against (levels, rows)
    through the origin, both kept >= 0; when every level had the same rows the split is not identified,
    and a level costs its mean."""
    a = [(len(s.level_rows), sum(s.level_rows), s.tree_ms) for s in steps]
    sll = sum(l * l for l, _, _ in a)
    srr = sum(r * r for _, r, _ in a)
    slr = sum(l * r for l, r, _ in a)
    sly = sum(l * y for l, _, y in a)
    sry = sum(r * y for _, r, y in a)
    det = sll * srr - slr * slr
    mean = sly / sll
    if det <= 1e-9 * sll * srr:
        return mean, 0.0
    level = (sly * srr - sry * slr) / det
    row = (sll * sry - slr * sly) / det
    if row < 0:
        return mean, 0.0
    if level < 0:
        return 0.0, sry / srr
    return level, row
