"""The host head over resident rows (runtime/packed_head.py) packs the leading columns that stay put once and
the rest after each change: its logits are always those of the current rows, and its prefix is what the rule
says, no more."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from evospec.runtime.active_rows import ActiveRows
from evospec.runtime.gather import update_plan
from evospec.runtime.packed_head import MIN_PACKED_ROWS, PACK_AFTER_CALLS, STABLE_WINDOWS

BUCKETS = (2048, 3072)
VOCAB, DIM = 4000, 8


def _resident(seed: int) -> tuple[torch.Tensor, ActiveRows, object]:
    reservoir = torch.randn(VOCAB, DIM, generator=torch.Generator().manual_seed(seed))
    plan, _ = update_plan(None, torch.arange(2000), BUCKETS)
    return reservoir, ActiveRows(reservoir, plan), plan


def _check(resident: ActiveRows, reservoir: torch.Tensor, plan, seed: int) -> None:
    normed = torch.randn(3, DIM, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(resident.logits(normed, plan.bias), normed @ reservoir[plan.ids].T + plan.bias,
                               rtol=1e-5, atol=1e-5)


# ops: a run of head calls; ("tail", n, first): n ids past column ``first`` replaced (a living vocabulary's
# tail); ("grow",): a set in the larger bucket; ("align", col): the row in that column changed in place
ops = st.lists(st.one_of(st.integers(1, 20), st.tuples(st.just("tail"), st.integers(1, 50), st.integers(0, 1990)),
                         st.tuples(st.just("grow")), st.tuples(st.just("align"), st.integers(0, 1999))),
               min_size=1, max_size=10)


@settings(max_examples=40, deadline=None)
@given(ops, st.integers(0, 1000))
@example([12, ("tail", 5, 1500), 2], 0).via("a packed set, then moved columns inside it")
@example([12, ("align", 10), 12, ("align", 1800), 2], 1).via("packed rows, then aligned ones inside the packed part")
@example([12, ("grow",), 2], 2).via("a packed set, then a larger bucket")
@example([9, ("tail", 3, 1500), 9, ("tail", 3, 1700), 9, ("tail", 3, 1200), 2], 3).via("a packed prefix cut back")
@example([2, ("tail", 3, 1500), 2], 4).via("a packed tail, then moved columns in it")
@example([12, ("tail", 3, 1500), 3, ("tail", 3, 1700), 2], 5).via("a prefix and a packed tail, then a tail move")
def test_logits_are_always_the_current_rows(ops, seed):
    reservoir, resident, plan = _resident(seed)
    ids = plan.ids[: plan.size].clone()
    for i, op in enumerate(ops):
        if isinstance(op, int):
            for j in range(op):
                _check(resident, reservoir, plan, seed + 100 * i + j)
        elif op[0] == "tail":
            _, n, first = op
            ids = ids.clone()
            ids[first : first + n] = torch.arange(2000 + 50 * i, 2000 + 50 * i + len(ids[first : first + n]))
            plan, _ = update_plan(plan, ids, BUCKETS)
            resident.follow(plan)
        elif op[0] == "grow":
            if ids.numel() > BUCKETS[0]:
                continue
            ids = torch.cat((ids, torch.arange(3500, 3500 + 100)))
            plan, _ = update_plan(plan, ids, BUCKETS)
            resident.follow(plan)
        else:
            target = plan.ids[op[1] : op[1] + 1]
            reservoir[target] += 1.0  # what online alignment does, then tells the rows which ids changed
            resident.refresh(target)


def test_static_rows_are_packed_whole_and_a_tail_that_moves_leaves_its_prefix_packed():
    reservoir, resident, plan = _resident(0)
    head = resident.head
    for call in range(PACK_AFTER_CALLS):
        _check(resident, reservoir, plan, call)
    assert head.packed_rows == 0  # a full window first
    _check(resident, reservoir, plan, 99)
    assert head.packed_rows == plan.bucket  # static: packed whole
    ids = plan.ids[: plan.size].clone()
    for step in range(4):  # a living vocabulary: its tail (columns 1500 on) moves every step, twice a window
        ids[1500 + step] = 3000 + step
        plan, _ = update_plan(plan, ids, BUCKETS)
        resident.follow(plan)
        for call in range(5):
            _check(resident, reservoir, plan, 10 * step + call)
    assert 1500 <= head.packed_rows <= 1503  # the columns that stayed put through a window
    ids[100] = 3999  # a change inside the packed columns drops them
    plan, _ = update_plan(plan, ids, BUCKETS)
    resident.follow(plan)
    assert head.packed_rows == 0
    _check(resident, reservoir, plan, 1000)


def test_a_change_inside_the_prefix_cuts_it_back_and_the_prefix_grows_only_by_whole_steps():
    """A living vocabulary's evidence starts at varying columns just past its core. A change inside the prefix
    keeps the columns before it packed (the next call packs them as the prefix), and a window whose changes
    start a few columns further in does not grow the prefix into the evidence, where the next change would cut
    it again: it grows by MIN_PACKED_ROWS columns or to the whole set."""
    reservoir, resident, plan = _resident(0)
    head = resident.head
    ids = plan.ids[: plan.size].clone()
    core = MIN_PACKED_ROWS + 100  # the columns before it never change
    for step in range(2 * PACK_AFTER_CALLS):  # the evidence moves every step, from varying columns
        ids[core + (7 * step) % 40] = 3000 + step
        plan, _ = update_plan(plan, ids, BUCKETS)
        resident.follow(plan)
        _check(resident, reservoir, plan, step)
        for call in range(2):
            _check(resident, reservoir, plan, 100 * step + call)
    assert head.packed_rows == core  # the lowest column the evidence ever took, not one a later window started at
    _check(resident, reservoir, plan, 4000)  # so the call after the change below does not end a window
    assert head._calls == 1
    ids[core - 50] = 3999  # a change inside the prefix
    plan, _ = update_plan(plan, ids, BUCKETS)
    resident.follow(plan)
    assert head.packed_rows == 0 and head.prefix is None  # dropped at once: it no longer matches the rows
    _check(resident, reservoir, plan, 5000)
    assert head.packed_rows == core - 50  # cut back to the columns before the change, packed on the next call
    for step in range((STABLE_WINDOWS + 1) * PACK_AFTER_CALLS):  # unchanged from here: it grows back to the whole set
        _check(resident, reservoir, plan, 6000 + step)
    assert head.packed_rows == plan.bucket


def test_short_prefixes_and_fixed_kernels_are_not_packed_but_small_static_sets_are(monkeypatch):
    reservoir, resident, plan = _resident(1)
    ids = plan.ids[: plan.size].clone()
    for step in range(6):  # columns from MIN_PACKED_ROWS - 1 on move: too short a prefix
        ids[MIN_PACKED_ROWS - 1] = 3000 + step
        plan, _ = update_plan(plan, ids, BUCKETS)
        resident.follow(plan)
        for call in range(5):
            _check(resident, reservoir, plan, call)
    assert resident.head.packed_rows == 0
    monkeypatch.setenv("EVOSPEC_HEAD_KERNEL", "linear")
    reservoir, resident, plan = _resident(2)
    for call in range(2 * PACK_AFTER_CALLS):
        _check(resident, reservoir, plan, call)
    assert not resident.head.packable and resident.head.packed_rows == 0
    monkeypatch.delenv("EVOSPEC_HEAD_KERNEL")
    plan, _ = update_plan(None, torch.arange(100), (128,))  # a small static set is packed whole
    small = ActiveRows(reservoir, plan)
    for call in range(PACK_AFTER_CALLS + 1):
        _check(small, reservoir, plan, call)
    assert small.head.packed_rows == 128


PREFIX_CASES = [[12, ("tail", 5, 1500), 2], [12, ("align", 10), 2], [12, ("grow",), 2],
                [9, ("tail", 3, 1500), 9, ("tail", 3, 1700), 2]]
TAIL_CASES = [[2, ("tail", 3, 1500), 2], [2, ("align", 1800), 2], [2, ("grow",), 2],
              [12, ("tail", 3, 1500), 3, ("tail", 3, 1700), 2]]


@pytest.mark.parametrize("kept,case", [("both copies", c) for c in PREFIX_CASES + TAIL_CASES] +
                         [("the tail's copy", c) for c in TAIL_CASES])
def test_the_checks_catch_a_stale_copy(monkeypatch, kept, case):
    """With changes that leave a packed copy in place, the property's explicit cases fail (so it can fail)."""
    from evospec.runtime import packed_head

    def changed(self, low, bucket):  # the breakage: the window's record is kept, a packed copy is not dropped
        if bucket != self.bucket:
            self.bucket, low = bucket, 0
        self._low = min(self._low, low)
        if kept == "the tail's copy" and low < self.packed_rows:
            self.prefix, self.packed_rows = None, 0

    monkeypatch.setattr(packed_head.PackedHead, "changed", changed)
    with pytest.raises((AssertionError, RuntimeError)):  # wrong logits, or a stale copy of the old bucket's size
        test_logits_are_always_the_current_rows.hypothesis.inner_test(case, 0)
