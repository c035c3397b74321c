"""``SparseRowAdam`` grows its moment table by doubling; its updates are bit for bit those of the
earlier table grown by concatenation (``ConcatRowAdam``, a copy of it kept here as the reference)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.runtime.align.sparse_adam import MIN_CAPACITY, SparseRowAdam


class ConcatRowAdam:
    """``SparseRowAdam`` before the change: one ``torch.cat`` per growth."""

    def __init__(self, rows: torch.Tensor, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8) -> None:
        self.rows, self.lr, self.betas, self.eps = rows, lr, betas, eps
        self.slot: dict[int, int] = {}
        self.m = torch.zeros(0, rows.shape[1])
        self.v = torch.zeros(0, rows.shape[1])
        self.steps = 0

    def _slots(self, ids: list[int]) -> torch.Tensor:
        new = [i for i in ids if i not in self.slot]
        if new:
            for i in new:
                self.slot[i] = len(self.slot)
            grow = torch.zeros(len(new), self.rows.shape[1])
            self.m, self.v = torch.cat((self.m, grow)), torch.cat((self.v, grow.clone()))
        return torch.tensor([self.slot[i] for i in ids], dtype=torch.long)

    def forget(self, ids: list[int]) -> None:
        known = [self.slot[i] for i in ids if i in self.slot]
        if known:
            self.m[known] = 0
            self.v[known] = 0

    @torch.no_grad()
    def delta(self, ids: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
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
        self.rows[ids] -= self.delta(ids, grads)


@st.composite
def row_sequences(draw):
    """A matrix size and calls: steps over distinct rows (new rows arrive in bursts), deltas, forgets."""
    rows = draw(st.integers(1, 90))
    dim = draw(st.integers(1, 5))
    row_sets = st.lists(st.integers(0, rows - 1), min_size=1, max_size=min(rows, 40), unique=True)
    call = st.tuples(st.sampled_from(["step", "step", "delta", "forget"]), row_sets)
    return rows, dim, draw(st.lists(call, min_size=1, max_size=40)), draw(st.integers(0, 2**16))


@settings(max_examples=200, deadline=None)
@given(row_sequences())
def test_updates_are_bit_identical_to_the_concatenating_table(case):
    rows, dim, calls, seed = case
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(rows, dim, generator=g)
    ours, reference = SparseRowAdam(start.clone(), lr=0.05), ConcatRowAdam(start.clone(), lr=0.05)
    for kind, ids in calls:
        grads = torch.randn(len(ids), dim, generator=g)
        index = torch.tensor(ids)
        if kind == "step":
            ours.step(index, grads)
            reference.step(index, grads)
        elif kind == "delta":
            assert torch.equal(ours.delta(index, grads), reference.delta(index, grads))
        else:
            ours.forget(ids)
            reference.forget(ids)
        assert torch.equal(ours.rows, reference.rows)
        assert torch.equal(ours.m, reference.m) and torch.equal(ours.v, reference.v)
        assert ours.slot == reference.slot
        capacity = ours._m.shape[0]  # at most twice what is used (or the first allocation), never past the rows
        assert len(ours.slot) <= capacity <= min(max(2 * len(ours.slot), MIN_CAPACITY), rows)
        assert ours.nbytes == 2 * capacity * dim * 4 + 16 * len(ours.slot)


def test_growth_doubles_and_stops_at_the_row_count():
    optimiser = SparseRowAdam(torch.zeros(100, 3))
    capacities = []
    for i in range(100):
        optimiser.step(torch.tensor([i]), torch.ones(1, 3))
        capacities.append(optimiser._m.shape[0])
    assert sorted(set(capacities)) == [16, 32, 64, 100]  # four allocations for 100 rows, not 100
    assert optimiser.m.shape == (100, 3) and optimiser.nbytes == 2 * 100 * 3 * 4 + 16 * 100
