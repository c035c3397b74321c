"""Decoding statistics and results, as data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class DecodeStats:
    """What one generation call did and how long it took.

    ``accepted_lengths[i]`` is the number of draft tokens the target accepted at verification
    step i; each step also emits one token of the target's own, so a step yields
    ``accepted_lengths[i] + 1`` tokens and ``mean_accepted_length`` (EAGLE's tau) is their mean.
    The first new token comes from the prefill pass and belongs to no step.
    """

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0
    accepted_lengths: list[int] = field(default_factory=list)
    draft_tokens_proposed: int = 0
    prefill_time_s: float = 0.0
    draft_time_s: float = 0.0
    verify_time_s: float = 0.0
    wall_time_s: float = 0.0
    active_hits: int = 0  # committed tokens that were in the drafter's active set (vocabulary policies)
    active_total: int = 0
    active_rows_moved: int = 0  # head columns changed between steps (gather-plan deltas)
    active_size_sum: int = 0  # active-set size summed over draft steps
    retrieval_time_s: float = 0.0  # time the decoding thread spent in policy calls (retrieval on the critical path)

    @property
    def mean_accepted_length(self) -> float:
        if not self.accepted_lengths:
            return 0.0
        return sum(a + 1 for a in self.accepted_lengths) / len(self.accepted_lengths)

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens over proposed draft tokens."""
        return sum(self.accepted_lengths) / self.draft_tokens_proposed if self.draft_tokens_proposed else 0.0

    @property
    def active_coverage(self) -> float | None:
        """Share of committed tokens the drafter could have proposed (None without a policy)."""
        return self.active_hits / self.active_total if self.active_total else None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.update(
            mean_accepted_length=self.mean_accepted_length,
            acceptance_rate=self.acceptance_rate,
            tokens_per_second=self.tokens_per_second,
            active_coverage=self.active_coverage,
        )
        return out


@dataclass
class GenerationResult:
    token_ids: list[int]  # new tokens only
    text: str | None
    stats: DecodeStats

    def as_dict(self) -> dict[str, object]:
        return {"token_ids": self.token_ids, "text": self.text, **self.stats.as_dict()}
