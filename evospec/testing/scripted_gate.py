"""A speculation gate that follows a fixed pattern, for tests of what plain steps do to decoding.

:class:`evospec.runtime.speculation_gate.SpeculationGate` decides by measured time, so the steps it makes
plain differ from run to run; tests that compare runs step by step (exactness, the C++ library against
Python, the drafter's trees with and without plain steps) need the same steps every time.
"""

from __future__ import annotations


class ScriptedGate:
    """The first step of a sequence speculates (the drafter takes the prompt there), then ``pattern`` repeats
    (True: speculate)."""

    def __init__(self, pattern: tuple[bool, ...]) -> None:
        if not pattern:
            raise ValueError("a scripted gate needs a non-empty pattern")
        self.pattern = pattern
        self._next = 0

    def speculate(self, first: bool = False) -> bool:
        if first:
            self._next = 0
            return True
        choice = self.pattern[self._next % len(self.pattern)]
        self._next += 1
        return choice

    def observe(self, speculative: bool, tokens: int, ms: float) -> None:
        """Ignored: the pattern decides."""
