"""Speculate or take a plain step, chosen online by what each kind of step actually delivered.

Speculation pays when the tokens a step emits outgrow what drafting and the extra verified rows cost. Where
the drafter is rarely accepted it does not: at T = 1 with top-p 0.9 on the medium pair's code text a chain of
five emitted 1.8-2.1 tokens a step in 17-19 ms, against one token in 7 ms for a plain step (README, stop 39), so
speculative decoding ran at 0.73-0.84x plain. No draft shape fixes that: the root call alone (the drafter's trunk,
the living vocabulary's routing and plan update, its head) costs more than the accepted tokens bring.

:class:`SpeculationGate` measures both kinds of step as the user gets them, tokens emitted over the step's wall
time on the decoding thread, over a window of recent steps of each kind, and speculates while speculation is
ahead. Each request starts with ``warmup`` speculative steps after its first (its text decides how often the
drafter is accepted); the first request then takes ``plain_probes`` plain steps (a plain step's cost carries
over). The caller decides step t + 1 before it observes step t, so the rates lag by a step. While
plain steps are ahead, every ``explore_every``-th step speculates, so that a stretch of text where the drafter
is accepted again (a topic switch, a quoted passage) is seen; while speculation is ahead, every
``recheck_every``-th step is plain, so plain's cost stays measured. A plain step drafts nothing: the drafter
takes its positions at the next speculative step, as it takes a prompt. Either kind decodes exactly (a plain
step is verification of the root alone), so the gate changes speed only.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class GateSettings:
    """Attributes:
    window: Recent steps of each kind their rate is measured over.
    warmup: Speculative steps before the first plain ones.
    plain_probes: Plain steps that measure a plain step before the rates decide.
    explore_every: While plain steps are ahead, every so many steps speculate.
    recheck_every: While speculation is ahead, every so many steps are plain.
    confidence: Standard errors of speculation's tokens a step its rate is taken high by (0: its mean).
    """

    window: int = 16
    warmup: int = 4
    plain_probes: int = 2
    explore_every: int = 12
    recheck_every: int = 48
    confidence: float = 1.0

    def __post_init__(self) -> None:
        if min(self.window, self.warmup, self.plain_probes, self.explore_every, self.recheck_every) < 1:
            raise ValueError(f"every speculation gate setting but confidence must be >= 1 (got {self})")
        if self.confidence < 0:
            raise ValueError(f"confidence must be >= 0 (got {self.confidence})")


class SpeculationGate:
    """Tokens per ms of speculative and of plain steps, and whether the next step speculates. It lives as long
    as its generator, like the cost model: rates carry from one request to the next."""

    def __init__(self, settings: GateSettings = GateSettings()) -> None:
        self.settings = settings
        self._steps = {kind: deque(maxlen=settings.window) for kind in (True, False)}
        self._warm = 0  # speculative steps of warm-up taken in this request
        self._probes = 0  # plain probes taken (once per gate)
        self._since = 0  # steps since the kind that is not ahead was last taken

    def rate(self, speculative: bool) -> float | None:
        """Tokens emitted per ms over the window (None before any step of the kind)."""
        steps = self._steps[speculative]
        ms = sum(m for _, m in steps)
        return sum(t for t, _ in steps) / ms if steps and ms > 0 else None

    def speculation_ahead(self) -> bool:
        """Whether speculative steps may deliver more tokens per ms than plain ones: their rate with the tokens a
        step emits taken one standard error high (``confidence`` of them), so a few unlucky steps at the start of
        a request do not settle it; on a tie, or before plain is measured, yes."""
        plain = self.rate(False)
        steps = self._steps[True]
        if plain is None or not steps:
            return True
        tokens = [t for t, _ in steps]
        mean = sum(tokens) / len(tokens)
        spread = (sum((t - mean) ** 2 for t in tokens) / max(len(tokens) - 1, 1)) ** 0.5
        ms = sum(m for _, m in steps) / len(steps)
        return (mean + self.settings.confidence * spread / len(tokens) ** 0.5) / ms >= plain

    def speculate(self, first: bool = False) -> bool:
        """Whether the next step speculates. ``first``: the first step of a sequence. It always speculates (the
        drafter takes the prompt at its first call; its time is not a step's, so the caller does not observe it),
        and speculation's window starts again: how often a drafter is accepted is a property of the text, which
        a new request changes (a plain step's cost is not)."""
        s = self.settings
        if first:
            self._steps[True].clear()
            self._warm = self._since = 0
            choice = True
        elif self._warm < s.warmup:
            self._warm += 1
            choice = True
        elif self._probes < s.plain_probes:
            self._probes += 1
            choice = False
        else:
            ahead = self.speculation_ahead()
            self._since += 1
            every = s.recheck_every if ahead else s.explore_every
            choice = ahead
            if self._since >= every:
                choice, self._since = not ahead, 0
        return choice

    def observe(self, speculative: bool, tokens: int, ms: float) -> None:
        """A finished step: whether it speculated, the tokens it emitted and its wall time."""
        self._steps[speculative].append((tokens, ms))
