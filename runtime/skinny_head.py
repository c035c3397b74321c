"""An LM head that computes a few rows of logits at close to one row's cost, with the kernel that is
fastest on this CPU.

``nn.Linear`` computes ``x @ W.T``. With a handful of rows (a verification pass over a draft of 6
tokens) and a 151k-row weight, the CPU BLAS repacks the whole weight on every call, so 6 rows cost
2-3x one row although the weight is read once either way. Which remedy wins depends on the CPU:
- ``skinny``: ``(W @ x.T).T``, the weight as the long operand (23 -> 7 ms for 6 rows at d=160 on the
  AVX2 machine this was first measured on; 7.2 -> 8.8 ms, slower, on an AVX-512 one);
- ``onednn``: the weight packed once at load into oneDNN's blocked layout, so no call repacks it
  (6 rows 7.2 -> 4.8 ms on the AVX-512 machine; float32 only; it holds a second copy of the head);
- ``linear``: ``nn.Linear`` itself.
Heads large enough to matter (``AUTOTUNE_MIN_ELEMENTS``) time the candidates on their own weight at
load, for one row (a plain step) and for ``MANY_ROWS`` rows (a verification pass), and keep the fastest
of each; the many-row kernel is then timed again on the first verification passes (``InPlaceTrial``).
``EVOSPEC_HEAD_KERNEL=linear|skinny|onednn`` fixes the choice instead (reproducible runs).
Kernels agree to float rounding (a different summation order), not bit for bit, like any change of
GEMM kernel. On a GPU the head is left as it is.
"""

from __future__ import annotations

import logging
import os
from time import perf_counter

import torch
from torch import nn

from evospec.runtime.packed_head import pack_rows, packed_linear

logger = logging.getLogger(__name__)

KERNELS = ("linear", "skinny", "onednn")
AUTOTUNE_MIN_ELEMENTS = 1 << 22  # V x d; the demo and test heads stay on linear / skinny
# A drafter's head is smaller (the medium pair's 16,384 x 160) but runs on every drafter call, up to six a step:
# there oneDNN's packed weight took 0.10 ms for one row against 0.35 for nn.Linear (warm; 0.7 against 1.6 ms
# after the target's pass evicted it), on the 2-core AMD host of stop 36.
DRAFTER_AUTOTUNE_MIN_ELEMENTS = 1 << 20
MANY_ROWS = 6  # a chain of 5 drafts plus its root


def onednn_available(weight: torch.Tensor) -> bool:
    return (weight.dtype == torch.float32 and weight.device.type == "cpu" and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def fixed_kernel() -> str | None:
    """The kernel ``EVOSPEC_HEAD_KERNEL`` fixes for every head (reproducible runs), or None."""
    return os.environ.get("EVOSPEC_HEAD_KERNEL") or None


def may_pack(weight: torch.Tensor) -> bool:
    """Whether rows like ``weight`` may go through oneDNN's packed product (unless another kernel is fixed)."""
    return onednn_available(weight) and fixed_kernel() in (None, "onednn")


def many_row_kernels(weight: torch.Tensor) -> tuple[str, ...]:
    """The kernels a many-row pass may use on this weight."""
    return ("linear", "skinny", "onednn") if onednn_available(weight) else ("linear", "skinny")


class SkinnyHead(nn.Module):
    """Wraps a bias-free ``nn.Linear`` LM head; shares its weight (tied embeddings stay tied).
    ``one`` / ``many``: the kernels for a single row and for several rows."""

    def __init__(self, head: nn.Linear, one: str = "linear", many: str = "skinny") -> None:
        super().__init__()
        if one not in KERNELS or many not in KERNELS:
            raise ValueError(f"head kernels are {KERNELS}, not {one!r} / {many!r}")
        self.head, self.one, self.many = head, one, many
        self._packed: torch.Tensor | None = None
        self._packed_from: tuple[int, int] | None = None  # (storage address, version) of the weight packed
        self.trial: InPlaceTrial | None = None  # the many-row kernels still being timed where they run

    @property
    def weight(self) -> torch.Tensor:
        return self.head.weight

    def _onednn(self, rows: torch.Tensor) -> torch.Tensor:
        weight = self.head.weight
        source = (weight.data_ptr(), weight._version)
        if self._packed is None or self._packed_from != source:  # repacked if the weight was changed or replaced
            self._packed = pack_rows(weight.detach())
            self._packed_from = source
        return packed_linear(rows, self._packed, None)

    def logits(self, rows: torch.Tensor, kernel: str) -> torch.Tensor:
        """[N, d] -> [N, V] with ``kernel``."""
        if kernel == "skinny" and rows.shape[0] > 1:
            return torch.mm(self.head.weight, rows.T).T
        if kernel == "onednn":
            return self._onednn(rows)
        return self.head(rows)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1])
        if rows.shape[0] > 1 and self.trial is not None and self.trial.wants(rows.shape[0]):
            return self._timed(rows).reshape(*hidden.shape[:-1], -1)
        kernel = self.one if rows.shape[0] == 1 else self.many
        return self.logits(rows, kernel).reshape(*hidden.shape[:-1], -1)

    def _timed(self, rows: torch.Tensor) -> torch.Tensor:
        trial = self.trial
        kernel = trial.next_kernel()
        start = perf_counter()
        out = self.logits(rows, kernel)
        trial.record(kernel, perf_counter() - start)
        if trial.done:
            self.many, self.trial = trial.fastest() or self.many, None  # nothing timed: the load-time choice stays
            if "onednn" not in (self.one, self.many):
                self._packed = None
            logger.info("LM head kernel for %d rows, timed in place: %s (%s)", trial.rows, self.many,
                        {k: round(min(v) * 1e3, 2) for k, v in trial.seconds.items() if v})  # none if it gave up
        return out


class InPlaceTrial:
    """Times the many-row kernels on a head's first verification passes, where they really run.

    The load-time timing (``choose_kernels``) runs each kernel on a random input between the others. In the
    decoding loop the same kernels ranked differently: for 6 rows over the medium pair's 151k-row head, in
    place, oneDNN took 3.9 ms, ``nn.Linear`` 5.7 and the skinny product 7.5, against 4.5 / 4.7 / 5.3 at load
    (stop 32, one generation each). Load time picked the skinny product on some loads, and verification
    then cost 10.4 against 6.4 ms a pass. So the first passes of the size first seen rotate the kernels:
    one untimed call each, then ``rounds`` timed ones, interleaved. The fastest by its best call is then
    kept. Every kernel computes the same logits to float rounding, as a change of kernel at load does.
    """

    def __init__(self, kernels: tuple[str, ...], rounds: int = 3, patience: int = 200) -> None:
        self.order = [kernel for _ in range(1 + rounds) for kernel in kernels]
        self.seconds: dict[str, list[float]] = {kernel: [] for kernel in kernels}
        self.rows: int | None = None  # the pass size timed (the first many-row call's)
        self.calls = 0
        self.patience = patience  # many-row calls of other sizes before the trial gives up on them

    def wants(self, rows: int) -> bool:
        if self.rows is None:
            self.rows = rows
        self.patience -= rows != self.rows
        return rows == self.rows

    def next_kernel(self) -> str:
        return self.order[self.calls]

    def record(self, kernel: str, seconds: float) -> None:
        if self.calls >= len(self.seconds):  # the first round is the untimed one (oneDNN may repack there)
            self.seconds[kernel].append(seconds)
        self.calls += 1

    @property
    def done(self) -> bool:
        return self.calls >= len(self.order) or self.patience <= 0

    def fastest(self) -> str | None:
        """The kernel with the best timed call; None if the trial gave up before timing any."""
        timed = {kernel: min(values) for kernel, values in self.seconds.items() if values}
        return min(timed, key=timed.get) if timed else None


def _best(head: SkinnyHead, rows: int, default: str, kernels: tuple[str, ...], repeats: int,
          margin: float = 0.9) -> tuple[str, dict[str, float]]:
    """The fastest kernel for ``rows`` rows: best of ``repeats`` rounds, the kernels interleaved within
    each round so that a change of load hits them alike; another kernel replaces ``default`` only if it
    takes under ``margin`` of its time (noise does not flip the choice)."""
    x = torch.randn(rows, head.weight.shape[1], dtype=head.weight.dtype)
    cost = dict.fromkeys(kernels, float("inf"))
    with torch.no_grad():
        for kernel in kernels:
            head.logits(x, kernel)  # warm-up (and oneDNN's one packing)
        for _ in range(repeats):
            for kernel in kernels:
                start = perf_counter()
                head.logits(x, kernel)
                cost[kernel] = min(cost[kernel], perf_counter() - start)
    fastest = min(cost, key=cost.get)
    return (fastest if cost[fastest] < margin * cost[default] else default), cost


def choose_kernels(head: SkinnyHead, repeats: int = 7) -> dict[str, dict[str, float]]:
    """Set ``head.one`` / ``head.many`` to the fastest kernels on this machine; returns the seconds
    measured per row count and kernel. A packed copy that lost is freed."""
    packed = ("onednn",) if onednn_available(head.weight) else ()
    head.one, one = _best(head, 1, "linear", ("linear", *packed), repeats)  # skinny is linear for one row
    head.many, many = _best(head, MANY_ROWS, "skinny", many_row_kernels(head.weight), repeats)
    if "onednn" not in (head.one, head.many):
        head._packed = None
    return {"1": one, str(MANY_ROWS): many}


def make_skinny_head(head: nn.Module | None, min_elements: int | None = None) -> SkinnyHead | None:
    """A :class:`SkinnyHead` over a CPU bias-free linear head; None where it does not apply. Heads of at
    least ``min_elements`` weights (default ``AUTOTUNE_MIN_ELEMENTS``) time their kernels on this machine;
    smaller ones keep ``nn.Linear`` for one row and the skinny product for several (unless
    ``EVOSPEC_HEAD_KERNEL`` fixes one)."""
    min_elements = AUTOTUNE_MIN_ELEMENTS if min_elements is None else min_elements
    if not isinstance(head, nn.Linear) or head.bias is not None or head.weight.device.type != "cpu":
        return None
    skinny = SkinnyHead(head)
    forced = fixed_kernel()
    if forced:
        if forced not in KERNELS or (forced == "onednn" and not onednn_available(head.weight)):
            raise ValueError(f"EVOSPEC_HEAD_KERNEL={forced!r}: choose one of {KERNELS} (onednn needs float32 "
                             "weights and torch built with oneDNN)")
        skinny.one = skinny.many = forced
    elif head.weight.numel() >= min_elements:
        timings = choose_kernels(skinny)
        skinny.trial = InPlaceTrial((skinny.many, *(k for k in many_row_kernels(head.weight) if k != skinny.many)))
        logger.info("LM head kernels: %s for one row, %s for %d rows (%s)", skinny.one, skinny.many, MANY_ROWS,
                    {rows: {k: round(s * 1e3, 2) for k, s in t.items()} for rows, t in timings.items()})
    return skinny


def use_skinny_head(model: nn.Module) -> bool:
    """Swap a CPU model's bias-free linear LM head for a :class:`SkinnyHead`; False where it does not apply."""
    skinny = make_skinny_head(getattr(model, "lm_head", None))
    if skinny is None:
        return False
    model.lm_head = skinny
    return True


def timed_drafter_head(head: nn.Module) -> SkinnyHead | None:
    """A drafter head's kernels timed on this machine (``DRAFTER_AUTOTUNE_MIN_ELEMENTS`` weights or more, or
    fixed by ``EVOSPEC_HEAD_KERNEL``); None where ``nn.Linear`` stays (small heads: the demo and test pairs)."""
    weight = getattr(head, "weight", None)
    if weight is None or (weight.numel() < DRAFTER_AUTOTUNE_MIN_ELEMENTS and fixed_kernel() is None):
        return None
    return make_skinny_head(head, DRAFTER_AUTOTUNE_MIN_ELEMENTS)
