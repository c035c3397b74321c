"""Plain-text tables of decoding statistics: readable in a terminal, a log or a CI transcript."""

from __future__ import annotations

from evospec.runtime.stats import DecodeStats


def stats_table(stats: DecodeStats) -> str:
    rows = [
        ("prompt tokens", f"{stats.prompt_tokens}"),
        ("new tokens", f"{stats.new_tokens}"),
        ("verification steps", f"{stats.steps}" + (f" ({stats.plain_steps} plain)" if stats.plain_steps else "")),
        ("mean accepted length (tokens/step)", f"{stats.mean_accepted_length:.2f}"),
        ("draft tokens accepted / proposed", f"{stats.acceptance_rate:.1%}"),
        ("prefill time", f"{stats.prefill_time_s * 1e3:.1f} ms"),
        ("retrieval time (decoding thread)", f"{stats.retrieval_time_s * 1e3:.1f} ms"),
        ("gather-plan time", f"{stats.plan_time_s * 1e3:.1f} ms"),
        ("draft time", f"{stats.draft_time_s * 1e3:.1f} ms"),
        ("verify time", f"{stats.verify_time_s * 1e3:.1f} ms"),
        ("alignment time (decoding thread)", f"{stats.align_time_s * 1e3:.1f} ms"),
        ("step time (all of the above)", f"{stats.step_time_s * 1e3:.1f} ms"),
        ("wall time", f"{stats.wall_time_s * 1e3:.1f} ms"),
        ("tokens/s", f"{stats.tokens_per_second:.1f}"),
    ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'stat'.ljust(width)}  value", f"{'-' * width}  {'-' * 12}"]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)
