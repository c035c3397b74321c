"""`evospec profile vocab`: every vocabulary policy on the same prompts, per domain.

Prompts are prefixes of each domain's test documents (as in ``bench``). Each policy drafts with
the same compiled drafter; per domain and policy the rows give coverage (share of committed
tokens that were in the active set), mean accepted length, mean active size, rows moved per
step and draft time. Greedy outputs are checked against plain decoding for every policy.

``text_coverage`` replays each policy over the domain's real test text (teacher-forced: the
policy observes the true tokens ``REPLAY_STEP`` at a time, as if each draft step accepted that
many) and counts how many next tokens its active set held. It reads thousands of tokens per
domain and does not depend on a small target's greedy output, which can collapse onto a few
frequent tokens; a teacher-forced model pass is run only to give semantic retrieval its states.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from dataclasses import asdict, dataclass, replace

from evospec.bench import BenchSettings, domain_prompts
from evospec.corpus import CorpusError, corpus_domains
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.vocab import PolicyInputs, make_policy
from evospec.settings import DecodeSettings
from evospec.teacher_forced import replay_streams
from evospec.text_table import text_table


@dataclass
class VocabRow:
    domain: str
    policy: str
    active_size: float
    coverage: float
    text_coverage: float
    mean_accepted_length: float
    rows_moved_per_step: float
    draft_ms_per_step: float
    retrieval_ms_per_step: float
    step_ms: float
    identical_to_plain: bool
    projected_speedup: float | None = None  # a projection: see project_speedups


REPLAY_STEP = 3  # tokens observed per replayed step


def text_coverage(policy, streams: list[list[int]], vocab_size: int, prompt_tokens: int,
                  states: list | None = None) -> float:
    """Share of the true next tokens of ``streams`` (after a ``prompt_tokens`` context) that the
    policy's active set held when they came. ``states[i][j]``: the drafter's head input at
    position j of stream i (for semantic retrieval), handed over one step late, as in decoding."""
    import torch

    hits = total = 0
    member = torch.zeros(vocab_size, dtype=torch.bool)
    for i, ids in enumerate(streams):
        policy.reset(ids[:prompt_tokens])
        previous = None
        for pos in range(prompt_tokens, len(ids), REPLAY_STEP):
            active = policy.active_ids()
            if active is not previous:  # static policies hand back the same tensor: no rebuild
                member.zero_()
                member[active] = True
                previous = active
            chunk = ids[pos : pos + REPLAY_STEP]
            hits += int(member[torch.tensor(chunk)].sum())
            total += len(chunk)
            late = pos - REPLAY_STEP - 1  # the state at the previous step's newest token
            policy.observe(chunk, states[i][late] if states is not None and late >= 0 else None)
    return hits / max(total, 1)


def replay_states(generator: SpeculativeGenerator, streams: list[list[int]]) -> list | None:
    """Per stream, the compiled drafter's head input at every position (teacher-forced), or None
    when the drafter has no semantic index to query with them."""
    from evospec.teacher_forced import teacher_forced

    if getattr(generator.drafter, "semantic_index", None) is None:
        return None
    return [teacher_forced(generator, ids)[0] for ids in streams]


def run_profile_vocab(generator: SpeculativeGenerator, corpus: str, policies: list[str], frequencies: str | None,
                      router: str | None,
                      decode: DecodeSettings, settings: BenchSettings, replay_tokens: int = 8192,
                      progress: Callable[[str], None] | None = None) -> list[VocabRow]:
    available = corpus_domains(corpus)
    domains = list(settings.domains or available)
    unknown = sorted(set(domains) - set(available))
    if unknown:
        raise CorpusError(f"corpus {corpus} has no domain(s) {unknown}; it has {available}")
    drafter = generator.drafter
    inputs = PolicyInputs(drafter.config.vocab_size, drafter.draft_rows, getattr(drafter, "semantic_index", None))
    frequencies = frequencies or getattr(drafter, "frequencies_path", None)  # else the bundle's own
    built = {spec: make_policy(spec, inputs, frequencies, router) for spec in policies}  # bad names fail before any run
    rows = []
    for domain in domains:
        prompts = domain_prompts(generator, corpus, domain, settings)
        streams = replay_streams(generator, corpus, domain, replay_tokens)
        states = replay_states(generator, streams)
        generator.policy = None
        plain = [generator.generate(p, replace(decode, use_draft=False)).token_ids for p in prompts]
        for spec, policy in built.items():
            generator.policy = policy
            replayed = text_coverage(policy, streams, inputs.vocab_size, settings.prompt_tokens, states)
            results = [generator.generate(p, decode) for p in prompts]
            steps = sum(r.stats.steps for r in results)
            accepted = [a for r in results for a in r.stats.accepted_lengths]
            rows.append(VocabRow(
                domain=domain, policy=spec,
                active_size=sum(r.stats.active_size_sum for r in results) / max(steps, 1),
                coverage=sum(r.stats.active_hits for r in results) / max(1, sum(r.stats.active_total for r in results)),
                text_coverage=replayed,
                mean_accepted_length=sum(a + 1 for a in accepted) / max(len(accepted), 1),
                rows_moved_per_step=sum(r.stats.active_rows_moved for r in results) / max(steps, 1),
                draft_ms_per_step=1e3 * sum(r.stats.draft_time_s for r in results) / max(steps, 1),
                retrieval_ms_per_step=1e3 * sum(r.stats.retrieval_time_s for r in results) / max(steps, 1),
                step_ms=1e3 * sum(r.stats.draft_time_s + r.stats.verify_time_s for r in results) / max(steps, 1),
                identical_to_plain=all(r.token_ids == q for r, q in zip(results, plain)),
            ))
            if progress is not None:
                progress(f"{domain} {spec}")
    generator.policy = None
    return rows


@dataclass(frozen=True)
class StageCosts:
    """Median stage latencies read from ``profile stages --json`` at a production shape."""

    trunk_ms: float
    full_ms: float
    heads: tuple[tuple[int, float], ...]  # (active size, head_active ms), ascending

    @classmethod
    def load(cls, path: str) -> StageCosts:
        from evospec.errors import SettingsError

        try:
            stages = json.loads(Path(path).read_text())
            trunk = next(r["median_ms"] for r in stages if r["stage"] == "trunk")
            full = next(r for r in stages if r["stage"] == "head_full")
            heads = tuple(sorted((r["active_size"], r["median_ms"]) for r in stages if r["stage"] == "head_active"))
            return cls(float(trunk), float(full["median_ms"]), heads)
        except (OSError, json.JSONDecodeError, StopIteration, KeyError, TypeError):
            raise SettingsError(f"{path}: expected the JSON of `evospec profile stages --json` "
                                "(rows with trunk, head_active and head_full)") from None

    def head_ms(self, active_size: float) -> float:
        """The measured head over the smallest bucket that holds ``active_size`` rows (else the full head)."""
        return next((ms for size, ms in self.heads if size >= active_size), self.full_ms)


def project_speedups(rows: list[VocabRow], costs: StageCosts, target_layers: int, depth: int) -> None:
    """Fill ``projected_speedup``: measured tau combined with stage latencies at a production shape.
    A projection, not a measurement: verification is taken as ``target_layers`` decoder layers (each
    costed as the drafter's trunk) plus the full head, and each of the ``depth`` draft levels as
    trunk + head over the active set (``full``: the full head). Retrieval done on the decoding thread
    (``:sync``) is added as measured here; pipelined retrieval adds nothing to the critical path.
    Speedup over plain decoding = tau x verify / (verify + depth x draft level + retrieval)."""
    verify = target_layers * costs.trunk_ms + costs.full_ms
    for row in rows:
        head = costs.full_ms if row.policy == "full" else costs.head_ms(row.active_size)
        retrieval = row.retrieval_ms_per_step if row.policy.endswith(":sync") else 0.0
        row.projected_speedup = row.mean_accepted_length * verify / (verify + depth * (costs.trunk_ms + head) + retrieval)


def vocab_table(rows: list[VocabRow]) -> str:
    header = ("domain", "policy", "active", "coverage", "text coverage", "tau", "moved/step", "draft ms/step", "retrieval ms/step",
              "step ms", "projected x", "identical")
    lines = [(r.domain, r.policy, f"{r.active_size:.0f}", f"{100 * r.coverage:.1f}%", f"{100 * r.text_coverage:.1f}%",
              f"{r.mean_accepted_length:.2f}",
              f"{r.rows_moved_per_step:.0f}", f"{r.draft_ms_per_step:.2f}", f"{r.retrieval_ms_per_step:.2f}",
              f"{r.step_ms:.2f}", "-" if r.projected_speedup is None else f"{r.projected_speedup:.2f}x",
              str(r.identical_to_plain)) for r in rows]
    return text_table(header, lines)


def vocab_json(rows: list[VocabRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def vocab_plot(rows: list[VocabRow], path) -> None:
    from evospec.plotting import pyplot, save_figure

    domains = list(dict.fromkeys(r.domain for r in rows))
    policies = list(dict.fromkeys(r.policy for r in rows))
    fig, (cov_ax, text_ax, tau_ax) = pyplot().subplots(1, 3, figsize=(16, 4))
    width = 0.8 / len(policies)
    for i, policy in enumerate(policies):
        by = {r.domain: r for r in rows if r.policy == policy}
        xs = [d + i * width for d in range(len(domains))]
        cov_ax.bar(xs, [100 * by[d].coverage if d in by else 0 for d in domains], width, label=policy)
        text_ax.bar(xs, [100 * by[d].text_coverage if d in by else 0 for d in domains], width, label=policy)
        tau_ax.bar(xs, [by[d].mean_accepted_length if d in by else 0 for d in domains], width, label=policy)
    for ax, label in ((cov_ax, "coverage of committed tokens (%)"), (text_ax, "coverage of test text (%)"), (tau_ax, "mean accepted length (tau)")):
        ax.set_xticks([d + 0.4 - width / 2 for d in range(len(domains))], domains)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)
