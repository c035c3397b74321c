"""Decoding statistics and results, as data.

One definition of tau (EAGLE's mean accepted length) lives here, ``mean_tokens_per_step``: the
tokens a user actually received per verification step. Every report (``generate --json``,
``bench``, ``profile vocab``, ``profile align``) pools its runs through it, so none can count
tokens that a step accepted but the caller never got (past ``max_new_tokens`` or EOS).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field


def mean_tokens_per_step(step_tokens: Iterable[int]) -> float:
    """Tau: tokens emitted per verification step (0.0 when there was no step)."""
    counts = list(step_tokens)
    return sum(counts) / len(counts) if counts else 0.0


@dataclass
class DecodeStats:
    """What one generation call did and how long it took, on the decoding thread.

    ``accepted_lengths[i]``: draft tokens the verifier accepted at step i. ``step_tokens[i]``:
    tokens step i actually emitted — accepted + the target's own, cut where generation stopped
    (``max_new_tokens``, EOS). Tau (``mean_accepted_length``) is the mean of ``step_tokens``. The
    first new token comes from the prefill pass and belongs to no step.

    Times partition each step's wall time on the decoding thread: ``retrieval_time_s`` (policy
    calls), ``plan_time_s`` (gather-plan update and resident-row copies), ``draft_time_s`` (the
    drafter itself), ``verify_time_s`` (target pass, verification, cache rollback) and
    ``align_time_s`` (handing feedback to an aligner and applying its changes); ``step_time_s`` is
    the whole, measured end to end, so nothing a step costs can fall between columns.
    ``verify_time_s`` is itself split into ``target_time_s`` (the target's forward), ``verdict_time_s``
    (greedy or sampling verification) and ``cache_time_s`` (rolling the target's cache back); on a GPU
    the forward runs asynchronously, so its time shows up in the verdict's first host read.
    ``trunk_time_s`` is the part of ``draft_time_s`` spent in the drafter's trunk (its decoder layer;
    ``runtime/trunk_clock.py``), the rest being the head over the active rows, choosing tokens and the
    tree; ``draft_split`` is False where the trunk could not be timed apart (ONNX Runtime, TensorRT,
    CUDA graphs, the C++ library): drafting is then one column.

    ``rejected_choice_hits / rejected_choice_total``: at every step that rejected a draft token,
    whether the target's own token at that position (the one the drafter should have proposed)
    was in the active set the drafter drafted over (vocabulary policies only).
    """

    prompt_tokens: int = 0
    new_tokens: int = 0
    steps: int = 0
    accepted_lengths: list[int] = field(default_factory=list)
    step_tokens: list[int] = field(default_factory=list)
    draft_tokens_proposed: int = 0
    prefill_time_s: float = 0.0
    retrieval_time_s: float = 0.0
    plan_time_s: float = 0.0
    draft_time_s: float = 0.0
    trunk_time_s: float = 0.0
    draft_split: bool = True
    verify_time_s: float = 0.0
    target_time_s: float = 0.0
    verdict_time_s: float = 0.0
    cache_time_s: float = 0.0
    align_time_s: float = 0.0
    step_time_s: float = 0.0
    wall_time_s: float = 0.0
    rejected_choice_hits: int = 0
    rejected_choice_total: int = 0
    active_rows_moved: int = 0  # head columns changed between steps (gather-plan deltas)
    active_size_sum: int = 0  # active-set size summed over draft steps
    plain_steps: int = 0  # steps that drafted nothing (``plain_fallback``: plain steps were ahead)

    @property
    def mean_accepted_length(self) -> float:
        return mean_tokens_per_step(self.step_tokens)

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens over proposed draft tokens."""
        return sum(self.accepted_lengths) / self.draft_tokens_proposed if self.draft_tokens_proposed else 0.0

    @property
    def rejected_choice_coverage(self) -> float | None:
        """Share of the target's choices at rejected positions the active set held (None without a policy)."""
        return self.rejected_choice_hits / self.rejected_choice_total if self.rejected_choice_total else None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out.update(
            mean_accepted_length=self.mean_accepted_length,
            acceptance_rate=self.acceptance_rate,
            tokens_per_second=self.tokens_per_second,
            rejected_choice_coverage=self.rejected_choice_coverage,
        )
        return out


@dataclass(frozen=True)
class PooledStats:
    """Several generation calls taken together, per step (what bench and profile rows report)."""

    steps: int
    new_tokens: int
    mean_accepted_length: float
    accepted_lengths: tuple[int, ...]
    # retrieval, plan, draft (of it: trunk), verify (= target + verdict + cache), align, step
    ms_per_step: dict[str, float]
    rejected_choice_coverage: float | None
    active_size: float
    rows_moved_per_step: float
    wall_time_s: float
    draft_split: bool = True  # every call timed its drafter's trunk apart (``trunk`` is then part of ``draft``)

    @classmethod
    def of(cls, stats: list[DecodeStats]) -> PooledStats:
        steps = sum(s.steps for s in stats)
        per_step = max(steps, 1)
        hits, total = sum(s.rejected_choice_hits for s in stats), sum(s.rejected_choice_total for s in stats)
        columns = ("retrieval", "plan", "draft", "trunk", "verify", "target", "verdict", "cache", "align", "step")
        return cls(
            steps=steps,
            new_tokens=sum(s.new_tokens for s in stats),
            mean_accepted_length=mean_tokens_per_step(t for s in stats for t in s.step_tokens),
            accepted_lengths=tuple(a for s in stats for a in s.accepted_lengths),
            ms_per_step={c: 1e3 * sum(getattr(s, f"{c}_time_s") for s in stats) / per_step for c in columns},
            rejected_choice_coverage=hits / total if total else None,
            active_size=sum(s.active_size_sum for s in stats) / per_step,
            rows_moved_per_step=sum(s.active_rows_moved for s in stats) / per_step,
            wall_time_s=sum(s.wall_time_s for s in stats),
            draft_split=all(s.draft_split for s in stats),
        )


@dataclass
class GenerationResult:
    token_ids: list[int]  # new tokens only
    text: str | None
    stats: DecodeStats

    def as_dict(self) -> dict[str, object]:
        return {"token_ids": self.token_ids, "text": self.text, **self.stats.as_dict()}
