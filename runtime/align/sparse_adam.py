"""Adam over the rows of a matrix, with optimiser state only for rows it has touched.

Full online adaptation keeps two dense moments per parameter; here the moments live in a
slot table that grows with the rows actually updated (the active and retrieved tokens), so
optimiser memory follows what alignment touches, not |V| x d. Semantics are those of
``torch.optim.SparseAdam`` (lazy Adam: moments of untouched rows do not decay; one step counter).
"""

from __future__ import annotations

import torch


class SparseRowAdam:
    def __init__(self, rows: torch.Tensor, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        self.rows, self.lr, self.betas, self.eps = rows, lr, betas, eps
        self.slot: dict[int, int] = {}
        self.m = torch.zeros(0, rows.shape[1])
        self.v = torch.zeros(0, rows.shape[1])
        self.steps = 0

    @property
    def nbytes(self) -> int:
        return (self.m.numel() + self.v.numel()) * self.m.element_size() + 16 * len(self.slot)

    def _slots(self, ids: list[int]) -> torch.Tensor:
        new = [i for i in ids if i not in self.slot]
        if new:
            for i in new:
                self.slot[i] = len(self.slot)
            grow = torch.zeros(len(new), self.rows.shape[1])
            self.m, self.v = torch.cat((self.m, grow)), torch.cat((self.v, grow.clone()))
        return torch.tensor([self.slot[i] for i in ids], dtype=torch.long)

    def forget(self, ids: list[int]) -> None:
        """Zero the moments of ``ids`` (after a rollback restored their rows)."""
        known = [self.slot[i] for i in ids if i in self.slot]
        if known:
            self.m[known] = 0
            self.v[known] = 0

    @torch.no_grad()
    def delta(self, ids: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Advance the moments of the distinct rows ``ids`` [n] by ``grads`` [n, d] and return the change
        to subtract from those rows, without writing them (a worker can compute while engines read)."""
        self.steps += 1
        b1, b2 = self.betas
        slots = self._slots(ids.tolist())
        m = self.m[slots].mul_(b1).add_(grads, alpha=1 - b1)
        v = self.v[slots].mul_(b2).addcmul_(grads, grads, value=1 - b2)
        self.m[slots], self.v[slots] = m, v
        step_size = self.lr * (1 - b2**self.steps) ** 0.5 / (1 - b1**self.steps)
        return step_size * m / (v.sqrt() + self.eps)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, grads: torch.Tensor) -> None:
        """Apply ``grads`` [n, d] to the distinct rows ``ids`` [n] in place."""
        self.rows[ids] -= self.delta(ids, grads)
