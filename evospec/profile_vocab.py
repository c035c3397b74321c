"""`evospec profile vocab`: every vocabulary policy on the same prompts, per domain.

Prompts are prefixes of each domain's test documents (as in ``bench``). Each policy drafts with
the same compiled drafter; per domain and policy the rows give coverage (share of committed
tokens that were in the active set), mean accepted length, mean active size, rows moved per
step and draft time. Greedy outputs are checked against plain decoding for every policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from evospec.bench import BenchSettings, domain_prompts
from evospec.corpus import CorpusError, corpus_domains
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.vocab import PolicyInputs, make_policy
from evospec.settings import DecodeSettings


@dataclass
class VocabRow:
    domain: str
    policy: str
    active_size: float
    coverage: float
    mean_accepted_length: float
    rows_moved_per_step: float
    draft_ms_per_step: float
    identical_to_plain: bool


def run_profile_vocab(generator: SpeculativeGenerator, corpus: str, policies: list[str], frequencies: str | None,
                      decode: DecodeSettings, settings: BenchSettings,
                      progress: Callable[[str], None] | None = None) -> list[VocabRow]:
    available = corpus_domains(corpus)
    domains = list(settings.domains or available)
    unknown = sorted(set(domains) - set(available))
    if unknown:
        raise CorpusError(f"corpus {corpus} has no domain(s) {unknown}; it has {available}")
    drafter = generator.drafter
    inputs = PolicyInputs(drafter.config.vocab_size, drafter.draft_rows)
    built = {spec: make_policy(spec, inputs, frequencies) for spec in policies}  # bad names fail before any run
    rows = []
    for domain in domains:
        prompts = domain_prompts(generator, corpus, domain, settings)
        generator.policy = None
        plain = [generator.generate(p, replace(decode, use_draft=False)).token_ids for p in prompts]
        for spec, policy in built.items():
            generator.policy = policy
            results = [generator.generate(p, decode) for p in prompts]
            steps = sum(r.stats.steps for r in results)
            accepted = [a for r in results for a in r.stats.accepted_lengths]
            rows.append(VocabRow(
                domain=domain, policy=spec,
                active_size=sum(r.stats.active_size_sum for r in results) / max(steps, 1),
                coverage=sum(r.stats.active_hits for r in results) / max(1, sum(r.stats.active_total for r in results)),
                mean_accepted_length=sum(a + 1 for a in accepted) / max(len(accepted), 1),
                rows_moved_per_step=sum(r.stats.active_rows_moved for r in results) / max(steps, 1),
                draft_ms_per_step=1e3 * sum(r.stats.draft_time_s for r in results) / max(steps, 1),
                identical_to_plain=all(r.token_ids == q for r, q in zip(results, plain)),
            ))
            if progress is not None:
                progress(f"{domain} {spec}")
    generator.policy = None
    return rows


def vocab_table(rows: list[VocabRow]) -> str:
    header = ("domain", "policy", "active", "coverage", "tau", "moved/step", "draft ms/step", "identical")
    lines = [(r.domain, r.policy, f"{r.active_size:.0f}", f"{100 * r.coverage:.1f}%", f"{r.mean_accepted_length:.2f}",
              f"{r.rows_moved_per_step:.0f}", f"{r.draft_ms_per_step:.2f}", str(r.identical_to_plain)) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *lines)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*x) for x in lines])


def vocab_json(rows: list[VocabRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def vocab_plot(rows: list[VocabRow], path) -> None:
    from evospec.plotting import pyplot, save_figure

    domains = list(dict.fromkeys(r.domain for r in rows))
    policies = list(dict.fromkeys(r.policy for r in rows))
    fig, (cov_ax, tau_ax) = pyplot().subplots(1, 2, figsize=(12, 4))
    width = 0.8 / len(policies)
    for i, policy in enumerate(policies):
        by = {r.domain: r for r in rows if r.policy == policy}
        xs = [d + i * width for d in range(len(domains))]
        cov_ax.bar(xs, [100 * by[d].coverage if d in by else 0 for d in domains], width, label=policy)
        tau_ax.bar(xs, [by[d].mean_accepted_length if d in by else 0 for d in domains], width, label=policy)
    for ax, label in ((cov_ax, "coverage of committed tokens (%)"), (tau_ax, "mean accepted length (tau)")):
        ax.set_xticks([d + 0.4 - width / 2 for d in range(len(domains))], domains)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
