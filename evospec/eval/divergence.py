"""Where a greedy speculative output first parts from plain decoding, and whether the target was at a near tie there.

Greedy verification keeps the target's argmax at every position, so the two outputs can only part where the
target's top logits are so close that float rounding decides: the verification pass over several rows sums in a
different order from a one-row step (any GEMM kernel does). Anything else is a bug. A row that says only "not
identical" cannot tell the two apart; this finds the first differing token and measures the target's logit gap
there with one forward over the prefix both outputs share.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEAR_TIE = 1e-4  # relative gap (to the larger logit's magnitude, at least 1) below which float32 rounding can decide


@dataclass(frozen=True)
class Divergence:
    prompt: int  # index of the prompt
    token: int  # index of the first differing new token
    plain_id: int
    speculative_id: int
    logit_gap: float  # target logit of plain's token minus speculative's, one float32 forward over the shared prefix
    scale: float  # the larger of the two logits' magnitudes (at least 1)

    @property
    def near_tie(self) -> bool:
        return abs(self.logit_gap) <= NEAR_TIE * self.scale

    def describe(self) -> str:
        if self.logit_gap != self.logit_gap:  # NaN: no token to weigh
            return f"prompt {self.prompt}: one output ends after {self.token} new tokens, the other goes on"
        verdict = ("a float32 near tie (rounding decides)" if self.near_tie
                   else "NOT a near tie: the acceptance rule or the cache is wrong; please report it")
        return (f"prompt {self.prompt}, new token {self.token}: plain {self.plain_id}, speculative {self.speculative_id}; "
                f"the target's logits there differ by {self.logit_gap:.2e}, {verdict}")


def first_divergence(model: torch.nn.Module, prompts: list[list[int]], speculative: list[list[int]],
                     plain: list[list[int]]) -> Divergence | None:
    """The first token where ``speculative`` parts from ``plain`` (prompt by prompt), with the logit gap of
    ``model`` (the target's causal LM) over the prompt and the new tokens both share; None if they never part.
    An output that is a prefix of the other (one stopped early) parts at the shorter one's end."""
    for i, (prompt, ours, theirs) in enumerate(zip(prompts, speculative, plain)):
        if ours == theirs:
            continue
        shared = next((j for j, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
        if shared == min(len(ours), len(theirs)):  # one output ended early: no token to weigh
            return Divergence(i, shared, theirs[shared] if shared < len(theirs) else -1,
                              ours[shared] if shared < len(ours) else -1, float("nan"), 1.0)
        device = next(model.parameters()).device
        ids = torch.tensor([prompt + theirs[:shared]], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1].float()
        a, b = float(logits[theirs[shared]]), float(logits[ours[shared]])
        return Divergence(i, shared, theirs[shared], ours[shared], a - b, max(1.0, abs(a), abs(b)))
    return None


def parted_report(parted: list[tuple[str, str]]) -> str:
    """The lines a report adds under its table for the rows whose greedy output parted ((row label, where)):
    empty when none did."""
    if not parted:
        return ""
    lines = "\n".join(f"  {label}: {where}" for label, where in parted)
    return "\n\ngreedy output not identical to plain decoding, where it first parted:\n" + lines
