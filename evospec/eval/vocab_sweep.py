"""K sweeps over ``profile vocab`` rows: share of full-vocabulary tau against active size.

Per domain, temperature and policy family (``frspec:K``, ``evospec:K``, ...), the smallest swept K
whose tau keeps 95% and 99% of the full vocabulary's, and a plot of share vs K per domain. Only
sizes that were run count: "> 16384" means no swept size reached the share, not that a larger one would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from evospec.core.plotting import pyplot, save_figure
from evospec.core.text_table import text_table
from evospec.eval.profile_vocab import VocabRow, policy_size

KEEP_LEVELS = (0.95, 0.99)


@dataclass(frozen=True)
class SweepRow:
    domain: str
    temperature: float
    family: str
    sizes: tuple[int, ...]
    shares: tuple[float, ...]  # share of full tau at each size
    smallest_k_95: int | None  # None: no swept size kept 95%
    smallest_k_99: int | None


def smallest_keeping(sizes: tuple[int, ...], shares: tuple[float, ...], level: float) -> int | None:
    return next((k for k, share in zip(sizes, shares) if share >= level), None)


def sweep_rows(rows: list[VocabRow]) -> list[SweepRow]:
    groups: dict[tuple[str, float, str], list[VocabRow]] = {}
    for row in rows:
        if policy_size(row.policy) is not None and row.share_of_full is not None:
            groups.setdefault((row.domain, row.temperature, row.family), []).append(row)
    out = []
    for (domain, temperature, family), members in groups.items():
        members.sort(key=lambda r: policy_size(r.policy))
        sizes = tuple(policy_size(r.policy) for r in members)
        shares = tuple(r.share_of_full for r in members)
        out.append(SweepRow(domain, temperature, family, sizes, shares,
                            *(smallest_keeping(sizes, shares, level) for level in KEEP_LEVELS)))
    return out


def sweep_table(rows: list[SweepRow]) -> str:
    def k(value: int | None, sizes: tuple[int, ...]) -> str:
        return f"> {max(sizes)}" if value is None else str(value)

    header = ("domain", "T", "policy", "share of full tau at K", "K for 95%", "K for 99%")
    lines = [(r.domain, f"{r.temperature:g}", r.family,
              " ".join(f"{size}:{100 * share:.0f}%" for size, share in zip(r.sizes, r.shares)),
              k(r.smallest_k_95, r.sizes), k(r.smallest_k_99, r.sizes)) for r in rows]
    return text_table(header, lines)


def sweep_json(rows: list[SweepRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def sweep_plot(rows: list[SweepRow], path) -> None:
    """One panel per domain: share of full tau against K (log scale), a line per policy and temperature."""

    domains = list(dict.fromkeys(r.domain for r in rows))
    fig, axes = pyplot().subplots(1, max(len(domains), 1), figsize=(4 * max(len(domains), 1), 3.6), squeeze=False)
    for ax, domain in zip(axes[0], domains):
        for r in (r for r in rows if r.domain == domain):
            ax.plot(r.sizes, [100 * s for s in r.shares], marker="o", label=f"{r.family} T={r.temperature:g}")
        for level in KEEP_LEVELS:
            ax.axhline(100 * level, color="grey", lw=0.6, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_title(domain)
        ax.set_xlabel("active size K")
        ax.set_ylabel("share of full-vocabulary tau (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    save_figure(fig, path)
