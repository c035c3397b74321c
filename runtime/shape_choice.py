"""Chain or tree, chosen online by what each step actually delivered: tokens emitted per millisecond.

``--draft-budget auto`` on a tree prices nodes with :class:`~evospec.runtime.tree_costs.StepCostModel`,
whose verification line is a function of rows only. On a CPU the tree pays more than that: its wider
drafter levels leave the target's weights colder, and a 6-row verification after tree drafting took
8.8 ms against 7.6 ms after a chain's (README, stop 36). No rows term sees that, so the tree kept
nodes that did not pay and ran slower than the chain wherever its tau was higher.

:class:`ShapeChooser` compares whole steps instead: for each shape (the chain of ``draft_depth``, the
tree under the value rule) the tokens emitted and the wall time of the step, drafting, verification and
bookkeeping together, over a window of recent steps; each step drafts the shape with the most tokens per
ms. Until both shapes have ``warmup`` steps it alternates, and every ``explore_every``-th step drafts the
other one, so a shape that starts paying (a domain where the tree's tau pulls ahead) is seen. Like the
cost model it lives as long as its generator. Either shape decodes exactly: the choice changes speed only.

Tokens per step vary from 0 to the depth with the text, so two shapes measured on different steps are
compared on different text: over a 64-token reply the chain's few steps can look far worse than its run-long
rate. When a greedy tree holds the chain (``DecodeSettings.draft_spine``), every tree step also tells what the
chain would have emitted on the same text (:func:`chain_tokens`): the chain's rate is then those tokens over
the chain's own ms per step, a paired comparison. Its steps' time varies far less than their tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from evospec.runtime.tree import DraftTree

CHAIN, TREE = "chain", "tree"


@dataclass(frozen=True)
class ShapeChoiceSettings:
    """Attributes:
    window: Recent steps of each shape its rate is measured over.
    warmup: Steps of each shape before the rates decide (the shapes alternate until then).
    explore_every: Every so many steps, the shape that is not ahead (0: never, after warm-up).
    shapes: The shapes to choose from (one shape: always that one; tests of the value rule pin the tree).
    """

    window: int = 48
    warmup: int = 6
    explore_every: int = 12
    shapes: tuple[str, ...] = (CHAIN, TREE)

    def __post_init__(self) -> None:
        if self.window < 1 or self.warmup < 1 or self.explore_every < 0:
            raise ValueError(f"shape choice needs window >= 1, warmup >= 1, explore_every >= 0 (got {self})")
        if not self.shapes or set(self.shapes) - {CHAIN, TREE}:
            raise ValueError(f"shapes are {CHAIN!r} and {TREE!r} (got {self.shapes})")


class ShapeChooser:
    """Tokens per ms of each shape over its last ``window`` steps, and the shape to draft next."""

    def __init__(self, settings: ShapeChoiceSettings = ShapeChoiceSettings()) -> None:
        self.settings = settings
        self._steps = {shape: deque(maxlen=settings.window) for shape in (CHAIN, TREE)}
        self._seen = 0
        self.chosen = {CHAIN: 0, TREE: 0}  # steps drafted with each shape (reports read it)

    def rate(self, shape: str) -> float | None:
        """Tokens emitted per ms over the window (None before any step of the shape). The chain's, once
        ``warmup`` tree steps said what it would have emitted on their text: those tokens over its own ms a step."""
        steps = self._steps[shape]
        ms = sum(m for _, m, _ in steps)
        if shape == CHAIN and steps:
            paired = [c for _, _, c in self._steps[TREE] if c is not None]
            if len(paired) >= self.settings.warmup:
                return sum(paired) / (len(paired) * ms / len(steps)) if ms > 0 else None
        return sum(t for t, _, _ in steps) / ms if steps and ms > 0 else None

    def ahead(self) -> str:
        """The shape with the higher rate; the tree on a tie (it verifies more candidates)."""
        chain, tree = self.rate(CHAIN), self.rate(TREE)
        return CHAIN if chain is not None and (tree is None or chain > tree) else TREE

    def next(self) -> str:
        """The shape to draft this step."""
        s = self.settings
        if len(s.shapes) == 1:
            self.chosen[s.shapes[0]] += 1
            return s.shapes[0]
        behind = [shape for shape in (TREE, CHAIN) if len(self._steps[shape]) < s.warmup]
        if behind:
            shape = behind[0] if len(behind) == 1 else (TREE, CHAIN)[self._seen % 2]
        else:
            shape = self.ahead()
            if s.explore_every and self._seen % s.explore_every == s.explore_every - 1:
                shape = CHAIN if shape == TREE else TREE
        self.chosen[shape] += 1
        return shape

    def observe(self, shape: str, tokens: int, ms: float, chain_would_emit: int | None = None) -> None:
        """A finished step of ``shape``: the tokens it emitted, its wall time, and for a tree that holds the
        chain, what the chain would have emitted (:func:`chain_tokens`)."""
        self._steps[shape].append((tokens, ms, chain_would_emit if shape == TREE else None))
        self._seen += 1


def chain_tokens(tree: DraftTree, accepted_nodes: list[int], emitted: int) -> int:
    """What the chain of first choices in ``tree`` would have emitted under greedy verification: its nodes
    accepted before the first that is not, and the target's token after them (at most ``emitted``, as the step
    was cut at EOS or the token limit). A tree keeps each parent's children in the drafter's order, so the
    first child is the first choice; with the spine the path is whole to the chain's depth."""
    children = tree.children()
    row, accepted = 0, 0
    for node in accepted_nodes:
        if not children[row] or children[row][0] != node:
            break
        accepted, row = accepted + 1, node + 1
    return min(accepted + 1, emitted)
