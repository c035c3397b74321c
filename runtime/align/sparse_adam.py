"""Adam over the rows of a matrix, with optimiser state only for rows it has touched.

Full online adaptation keeps two dense moments per parameter; here the moments live in a
slot table that grows with the rows actually updated (the active and retrieved tokens), so
optimiser memory follows what alignment touches, not |V| x d. Semantics are those of
``torch.optim.SparseAdam`` (lazy Adam: moments of untouched rows do not decay; one step counter).

The table grows by doubling its capacity (never past the matrix's row count), so a long session
copies each moment O(1) times on average instead of once per growth; the arithmetic reads and
writes the same slots as before, so updates are bit-identical to a table grown row by row.
"""

from __future__ import annotations

import torch

MIN_CAPACITY = 16  # slots allocated at the first growth (fewer when the matrix has fewer rows)


class SparseRowAdam:
    def __init__(self, rows: torch.Tensor, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.rows, self.lr, self.betas, self.eps = rows, lr, betas, eps
        self.slot: dict[int, int] = {}
        self._m = torch.zeros(0, rows.shape[1])  # [capacity, d]; slots [0, len(slot)) are in use
        self._v = torch.zeros(0, rows.shape[1])
        self.steps = 0

    @property
    def m(self) -> torch.Tensor:
        """First moments of the touched rows, by slot: [len(slot), d] (a view of the table)."""
        return self._m[: len(self.slot)]

    @property
    def v(self) -> torch.Tensor:
        """Second moments of the touched rows, by slot: [len(slot), d] (a view of the table)."""
        return self._v[: len(self.slot)]

    @property
    def nbytes(self) -> int:
        """Bytes held: the allocated table (at most twice the slots in use, and at most the matrix's rows)."""
        return (self._m.numel() + self._v.numel()) * self._m.element_size() + 16 * len(self.slot)

    def _reserve(self, needed: int) -> None:
        """Room for ``needed`` slots: double the capacity (at least MIN_CAPACITY, at most the row count)."""
        capacity = self._m.shape[0]
        if needed <= capacity:
            return
        grown = max(needed, min(max(2 * capacity, MIN_CAPACITY), self.rows.shape[0]))
        used = len(self.slot)
        for name in ("_m", "_v"):
            table = torch.zeros(grown, self.rows.shape[1])
            table[:used] = getattr(self, name)[:used]
            setattr(self, name, table)

    def _slots(self, ids: list[int]) -> torch.Tensor:
        new = [i for i in ids if i not in self.slot]
        if new:
            self._reserve(len(self.slot) + len(new))
            for i in new:
                self.slot[i] = len(self.slot)
        return torch.tensor([self.slot[i] for i in ids], dtype=torch.long)

    def forget(self, ids: list[int]) -> None:
        """Zero the moments of ``ids`` (after a rollback restored their rows)."""
        known = [self.slot[i] for i in ids if i in self.slot]
        if known:
            self._m[known] = 0
            self._v[known] = 0

    @torch.no_grad()
    def delta(self, ids: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Advance the moments of the distinct rows ``ids`` [n] by ``grads`` [n, d] and return the change
        to subtract from those rows, without writing them (a worker can compute while engines read)."""
        self.steps += 1
        b1, b2 = self.betas
        slots = self._slots(ids.tolist())
        m = self._m[slots].mul_(b1).add_(grads, alpha=1 - b1)
        v = self._v[slots].mul_(b2).addcmul_(grads, grads, value=1 - b2)
        self._m[slots], self._v[slots] = m, v
        step_size = self.lr * (1 - b2**self.steps) ** 0.5 / (1 - b1**self.steps)
        return step_size * m / (v.sqrt() + self.eps)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """Apply ``grads`` [n, d] to the distinct rows ``ids`` [n] in place."""
        self.rows[ids] -= self.delta(ids, grads)
