"""`evospec profile vocab`: every vocabulary policy on the same prompts, per domain and temperature.

Prompts are prefixes of each domain's test documents (as in ``bench``). Each policy drafts with
the same compiled drafter; per domain, temperature and policy the rows give mean accepted length
(tau: tokens emitted per step, ``runtime/stats``), its share of the full vocabulary's tau under the
same decoding settings, *rejected-choice coverage* (at every step that rejected a draft token,
whether the target's own token there was in the active set), text coverage, active size, rows
moved per step and the decoding thread's time per step, column by column. Greedy outputs are
checked against plain decoding for every policy; sampled runs follow the target's distribution by
construction (chi-square tests), so they carry no identity check.

``text_coverage`` replays each policy over the domain's real test text (teacher-forced: the
policy observes the true tokens ``REPLAY_STEP`` at a time, as if each draft step accepted that
many) and counts how many next tokens its active set held. It reads thousands of tokens per
domain and does not depend on a small target's greedy output, which can collapse onto a few
frequent tokens; a teacher-forced model pass is run only to give retrieval and routing the
drafter's states, exactly the ones decoding would hand them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from evospec.core.errors import SettingsError
from evospec.core.settings import DecodeSettings
from evospec.core.text_table import text_table
from evospec.data.corpus import chosen_domains
from evospec.data.teacher_forced import replay_streams, teacher_forced
from evospec.eval.bench import BenchSettings, domain_prompts
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.stats import PooledStats
from evospec.runtime.vocab import PolicyInputs, make_policy

FULL = "full"  # the reference every share is taken of; always run


@dataclass
class VocabRow:
    domain: str
    policy: str
    family: str  # the policy name with its size written as K (frspec:K, dynaspec:K:64, ...)
    temperature: float
    top_p: float
    seed: int
    active_size: float
    mean_accepted_length: float
    share_of_full: float | None  # tau over the full vocabulary's tau, same domain and decoding settings
    rejected_choice_coverage: float | None
    text_coverage: float
    rows_moved_per_step: float
    retrieval_ms_per_step: float  # policy calls on the decoding thread
    plan_ms_per_step: float  # gather-plan updates and resident-row copies
    draft_ms_per_step: float
    verify_ms_per_step: float
    step_ms: float  # the whole step on the decoding thread (at least the sum of the columns before it)
    identical_to_plain: bool | None  # greedy only
    projected_speedup: float | None = None  # a projection: see project_speedups


REPLAY_STEP = 3  # tokens observed per replayed step


def expand_policies(specs: list[str], sizes: list[int]) -> list[str]:
    """``frspec:K`` etc. once per size (a K sweep); names without ``K`` as given; ``full`` always first."""
    out = [FULL]
    for spec in specs:
        name, listed = split_list(spec)
        parts, suffix = name.split(":"), f"@{listed}" if listed else ""
        named = [":".join(str(k) if p == "K" else p for p in parts) + suffix for k in sizes] if "K" in parts else [spec]
        out += [n for n in named if n not in out]
    return out


def split_list(spec: str) -> tuple[str, str | None]:
    """``frspec:4096@general`` -> (``frspec:4096``, ``general``): the policy and the named frequency
    list it is built from (None: the default list, ``--frequencies``)."""
    name, at, listed = spec.partition("@")
    return name, (listed or None) if at else None


def policy_family(spec: str) -> str:
    """The policy's name with its size written as K: ``frspec:4096@general`` -> ``frspec:K@general``."""
    name, listed = split_list(spec)
    parts = name.split(":")
    if len(parts) > 1 and parts[1].isdigit():
        parts[1] = "K"
    return ":".join(parts) + (f"@{listed}" if listed else "")


def policy_size(spec: str) -> int | None:
    """K of a sized policy name (``evospec:4096:sync`` -> 4096), None for ``full``/``eagle3``."""
    parts = split_list(spec)[0].split(":")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def build_policies(specs: list[str], inputs: PolicyInputs, frequencies: str | None, lists: dict[str, str],
                   router: str | None) -> dict:
    """Every policy by its full name; ``NAME@LIST`` takes its frequency list from ``lists[LIST]``.
    Bad names and unknown lists fail here, before any run."""
    built = {}
    for spec in specs:
        name, listed = split_list(spec)
        if listed is not None and listed not in lists:
            raise SettingsError(f"policy {spec!r} names the frequency list {listed!r}, but only "
                                f"{sorted(lists) or 'none'} were given (--list NAME=FILE)")
        built[spec] = make_policy(name, inputs, lists[listed] if listed else frequencies, router)
    return built


def decoding_state(states: torch.Tensor | None, pos: int) -> torch.Tensor | None:
    """The drafter state decoding hands a policy when the tokens from ``pos`` on are committed: the
    head input of the cycle's root call at the newest token before them (``states[j]`` predicts token
    j + 2, so the root's state is ``states[pos - 2]``)."""
    return states[pos - 2] if states is not None and pos >= 2 else None


def text_coverage(policy, streams: list[list[int]], vocab_size: int, prompt_tokens: int,
                  states: list | None = None) -> float:
    """Share of the true next tokens of ``streams`` (after a ``prompt_tokens`` context) that the
    policy's active set held when they came. ``states[i][j]``: the drafter's head input at position j
    of stream i; a routing policy is routed with, and every policy observes, the state decoding would
    give it at that point (``decoding_state``)."""
    hits = total = 0
    member = torch.zeros(vocab_size, dtype=torch.bool)
    routed = hasattr(policy, "route")
    for i, ids in enumerate(streams):
        policy.reset(ids[:prompt_tokens])
        previous = None
        for pos in range(prompt_tokens, len(ids), REPLAY_STEP):
            state = decoding_state(states[i] if states is not None else None, pos)
            active = policy.route(state) if routed and state is not None else policy.active_ids()
            if active is not previous:  # static policies hand back the same tensor: no rebuild
                member.zero_()
                member[active] = True
                previous = active
            chunk = ids[pos : pos + REPLAY_STEP]
            hits += int(member[torch.tensor(chunk)].sum())
            total += len(chunk)
            policy.observe(chunk, state)
    return hits / max(total, 1)


def replay_states(generator: SpeculativeGenerator, streams: list[list[int]], needed: bool) -> list | None:
    """Per stream, the compiled drafter's head input at every position (teacher-forced), when some
    policy reads states (semantic retrieval, routing)."""
    return [teacher_forced(generator, ids)[0] for ids in streams] if needed else None


def _reads_states(policy) -> bool:
    return hasattr(policy, "route") or getattr(policy, "semantic", None) is not None


def run_profile_vocab(generator: SpeculativeGenerator, corpus: str, policies: list[str], frequencies: str | None,
                      router: str | None, decodes: list[DecodeSettings], settings: BenchSettings,
                      replay_tokens: int = 8192, progress: Callable[[str], None] | None = None,
                      lists: dict[str, str] | None = None) -> list[VocabRow]:
    """Rows per domain, decoding setting (temperature) and policy; ``policies`` are expanded names
    (``expand_policies``) and must include ``full``."""
    domains = chosen_domains(corpus, settings.domains)
    if FULL not in policies:
        raise SettingsError("profile vocab needs the full vocabulary among the policies: shares are taken of it")
    drafter = generator.drafter
    inputs = PolicyInputs(drafter.config.vocab_size, drafter.draft_vocab_ids, getattr(drafter, "semantic_index", None))
    frequencies = frequencies or getattr(drafter, "frequencies_path", None)  # else the bundle's own
    built = build_policies(policies, inputs, frequencies, lists or {}, router)
    try:
        return _measure(generator, corpus, domains, settings, decodes, built, inputs, replay_tokens, progress)
    finally:
        generator.policy = None
        for policy in built.values():
            policy.close()


def _measure(generator, corpus, domains, settings, decodes, built, inputs, replay_tokens, progress) -> list[VocabRow]:
    rows = []
    for domain in domains:
        prompts = domain_prompts(generator, corpus, domain, settings)
        streams = replay_streams(generator, corpus, domain, replay_tokens)
        states = replay_states(generator, streams, any(_reads_states(p) for p in built.values()))
        replayed = {spec: text_coverage(p, streams, inputs.vocab_size, settings.prompt_tokens, states)
                    for spec, p in built.items()}
        for decode in decodes:
            generator.policy = None
            plain = [generator.generate(p, replace(decode, use_draft=False)).token_ids for p in prompts] \
                if decode.greedy else None
            runs: dict[str, VocabRow] = {}
            for spec, policy in built.items():
                generator.policy = policy
                results = [generator.generate(p, decode) for p in prompts]
                pooled = PooledStats.of([r.stats for r in results])
                ms = pooled.ms_per_step
                runs[spec] = VocabRow(
                    domain=domain, policy=spec, family=policy_family(spec), temperature=decode.temperature,
                    top_p=decode.top_p, seed=decode.seed, active_size=pooled.active_size,
                    mean_accepted_length=pooled.mean_accepted_length, share_of_full=None,
                    rejected_choice_coverage=pooled.rejected_choice_coverage, text_coverage=replayed[spec],
                    rows_moved_per_step=pooled.rows_moved_per_step, retrieval_ms_per_step=ms["retrieval"],
                    plan_ms_per_step=ms["plan"], draft_ms_per_step=ms["draft"], verify_ms_per_step=ms["verify"],
                    step_ms=ms["step"],
                    identical_to_plain=None if plain is None else all(r.token_ids == q for r, q in zip(results, plain)),
                )
                if progress is not None:
                    progress(f"{domain} T={decode.temperature:g} {spec}")
            full_tau = runs[FULL].mean_accepted_length
            for row in runs.values():
                row.share_of_full = row.mean_accepted_length / full_tau if full_tau > 0 else None
            rows += runs.values()
    return rows


@dataclass(frozen=True)
class StageCosts:
    """Median stage latencies read from ``profile stages --json`` at a production shape."""

    trunk_ms: float
    full_ms: float
    heads: tuple[tuple[int, float], ...]  # (active size, head_active ms), ascending

    @classmethod
    def load(cls, path: str) -> StageCosts:
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
    header = ("domain", "T", "policy", "active", "tau", "of full", "rejected-choice cov", "text cov", "moved/step",
              "retrieval ms", "plan ms", "draft ms", "verify ms", "step ms", "projected x", "identical")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [(r.domain, f"{r.temperature:g}", r.policy, f"{r.active_size:.0f}", f"{r.mean_accepted_length:.2f}",
              pct(r.share_of_full), pct(r.rejected_choice_coverage), pct(r.text_coverage),
              f"{r.rows_moved_per_step:.0f}", f"{r.retrieval_ms_per_step:.2f}", f"{r.plan_ms_per_step:.2f}",
              f"{r.draft_ms_per_step:.2f}", f"{r.verify_ms_per_step:.2f}", f"{r.step_ms:.2f}",
              "-" if r.projected_speedup is None else f"{r.projected_speedup:.2f}x",
              "-" if r.identical_to_plain is None else str(r.identical_to_plain)) for r in rows]
    return text_table(header, lines)


def vocab_json(rows: list[VocabRow]) -> list[dict]:
    return [asdict(r) for r in rows]
