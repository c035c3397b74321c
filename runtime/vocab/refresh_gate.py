"""Route a greedy request's set again only when it has failed: the refresh gate (``refresh_gap``).

Why: a routed policy (EvoSpec's fill, chosen from each cycle's root state) costs the decoding thread its
routing and a plan update every cycle: 0.7-0.8 ms a step at ``evospec:16384`` on the reference pair, about 5%
of a step, where FR-Spec's fixed list costs nothing (README, issue 15: EvoSpec 0.92-0.95x FR-Spec's tokens/s at
T = 0, with the same tau). Greedy drafting needs one thing of the set: that it holds the target's next token.
While every token the target commits is in the set the drafter drafted over, the set is not what limits
acceptance, and choosing it again buys nothing. A committed token outside the set (a *miss*) says the set has
fallen behind the text, so the next cycle routes again; so does every ``gap``-th cycle, which brings in the
evidence (context tokens, successors) the worker gathered meanwhile.

Sampled requests route every cycle: at T > 0 acceptance depends on how much of the drafter's mass the set
holds, which one committed token does not tell. The gate never touches exactness: any set gives the target's
output; it changes only which set the drafter uses, and so tau (judged on the valid split: README, issue 15).

A skipped cycle hands back the very tensor the last route returned, so the drafter's plan update costs
nothing (``CompiledDrafter.set_active``). The wrapped policy still observes every cycle, so its evidence and
drift detection stay current.
"""

from __future__ import annotations

import torch

from evospec.runtime.vocab.pipelined import membership


class RefreshGate:
    """A routed policy that greedy requests route only after a miss or every ``gap`` cycles (``gap`` 1: always),
    keeping a set only once ``hold`` cycles in a row had no miss."""

    def __init__(self, inner, gap: int, hold: int = 0) -> None:
        """``hold``: a set is kept only once the last ``hold`` cycles committed no token outside their sets (after
        a miss the next ``hold`` cycles route)."""
        if gap < 1 or hold < 0:
            raise ValueError(f"the refresh gap must be >= 1 cycle and the hold >= 0 (got {gap}, {hold})")
        self.inner, self.gap, self.hold = inner, gap, hold
        self.name = inner.name
        self._greedy = False
        self._last: torch.Tensor | None = None  # the set the last route returned
        self._members: torch.Tensor | None = None  # membership(self._last), for the miss test
        self._since = 0  # cycles since the last route
        self._missed = True
        self._held = 0  # cycles in a row that committed no token outside their set
        self.routes = self.skips = 0  # cycles routed and cycles that kept the last set (tests and diagnostics)

    def decoding(self, greedy: bool) -> None:
        self._greedy = bool(greedy)
        if hasattr(self.inner, "decoding"):
            self.inner.decoding(greedy)

    def reset(self, prompt_ids: list[int]) -> None:
        self.inner.reset(prompt_ids)
        self._last = self._members = None
        self._since, self._missed, self._held = 0, True, 0

    def observe(self, committed: list[int], state: torch.Tensor | None = None,
                target_top: torch.Tensor | None = None) -> None:
        if self._members is not None and committed:
            ids = torch.as_tensor(committed, dtype=torch.long)
            inside = ids < self._members.numel()
            miss = not bool(inside.all()) or not bool(self._members[ids].all())
            self._missed |= miss
            self._held = 0 if miss else self._held + 1
        if target_top is None:
            self.inner.observe(committed, state)
        else:
            self.inner.observe(committed, state, target_top)

    def route(self, state: torch.Tensor) -> torch.Tensor:
        self._since += 1
        if (self._greedy and self.gap > 1 and self._last is not None and not self._missed and self._since < self.gap
                and self._held >= self.hold):
            self.skips += 1
            return self._last
        active = self.inner.route(state)
        if active is not self._last:
            self._members = membership(active)
        self._last, self._since, self._missed = active, 0, False
        self.routes += 1
        return active

    def __getattr__(self, name: str):  # active_ids, start_pending, close, kept_ids, ... of the wrapped policy
        return getattr(self.inner, name)
