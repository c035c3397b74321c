"""`evospec profile vocab`: every vocabulary policy on the same prompts, per domain and temperature.

Prompts are prefixes of each domain's test documents (as in ``bench``). Each policy drafts with
the same compiled drafter; per domain, temperature and policy the rows give mean accepted length
(tau: tokens emitted per step, ``runtime/stats``), its share of the full vocabulary's tau under the
same decoding settings, *rejected-choice coverage* (at every step that rejected a draft token,
whether the target's own token there was in the active set), text coverage, active size, rows
moved per step and the decoding thread's time per step, column by column. Greedy outputs are
checked against plain decoding for every policy; sampled runs follow the target's distribution by
construction (chi-square tests), so they carry no identity check.

``POLICY+align`` runs a policy with EvoSpec's online alignment (``evospec:K+align`` is the full
method: retrieval brings long-tail rows into the active set and alignment corrects them from each
verification); the aligner starts fresh and the reservoir rows are restored after every
(domain, temperature, policy) run, so no run inherits another's updates. ``evospec:K:VARIANT``
runs a named variant of EvoSpec's settings (``--evospec-config``). Prompts and replayed text come
from ``settings.split``: ``valid`` for tuning, ``test`` for reported figures.

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
from evospec.data.corpus import CorpusError, chosen_domains, read_documents
from evospec.data.teacher_forced import replay_streams
from evospec.eval.bench import BenchSettings, domain_prompts
from evospec.eval.divergence import first_divergence, parted_report
from evospec.eval.replay import replay_by_kind, replay_states
from evospec.runtime.align.methods import make_evospec_aligner
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.stats import PooledStats
from evospec.runtime.vocab import ALIGN, PolicyInputs, make_policy, split_align
from evospec.runtime.vocab.evospec_settings import EvoSpecConfig

FULL = "full"  # the reference every share is taken of; always run


def head_kernels(generator: SpeculativeGenerator) -> str | None:
    """"one/many" kernels of the target's CPU LM head (``runtime/skinny_head.py``), or None where it has none."""
    head = getattr(getattr(generator.target, "model", None), "lm_head", None)
    return f"{head.one}/{head.many}" if hasattr(head, "one") and hasattr(head, "many") else None


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
    target_mass: float | None  # the target's probability inside the set over replayed text (T=0: its argmax)
    tokens_per_second: float  # tokens emitted over the generation calls' wall time (prefill included)
    rows_moved_per_step: float
    retrieval_ms_per_step: float  # policy calls on the decoding thread
    plan_ms_per_step: float  # gather-plan updates and resident-row copies
    draft_ms_per_step: float
    verify_ms_per_step: float
    align_ms_per_step: float  # handing feedback to the aligner and applying its updates (decoding thread)
    step_ms: float  # the whole step on the decoding thread (at least the sum of the columns before it)
    identical_to_plain: bool | None  # greedy only
    projected_speedup: float | None = None  # a projection: see project_speedups
    # the target LM head's kernels (one row / verification rows) when the row was done: they round differently,
    # so sampled runs repeat only with the same ones (``EVOSPEC_HEAD_KERNEL`` fixes them); None: no CPU head choice
    head_kernels: str | None = None
    first_difference: str | None = None  # where a greedy output first parted from plain's (``divergence.py``)


def expand_policies(specs: list[str], sizes: list[int]) -> list[str]:
    """``frspec:K`` etc. once per size (a K sweep); names without ``K`` as given; ``full`` always first."""
    out = [FULL]
    for spec in specs:
        name, listed = split_list(spec)
        parts = name.split(":")
        suffix = (f"@{listed}" if listed else "") + (ALIGN if split_align(spec)[1] else "")
        named = [":".join(str(k) if p == "K" else p for p in parts) + suffix for k in sizes] if "K" in parts else [spec]
        out += [n for n in named if n not in out]
    return out


def split_list(spec: str) -> tuple[str, str | None]:
    """``frspec:4096@general`` -> (``frspec:4096``, ``general``): the policy and the named frequency
    list it is built from (None: the default list, ``--frequencies``); a ``+align`` suffix is dropped."""
    name, at, listed = split_align(spec)[0].partition("@")
    return name, (listed or None) if at else None


def policy_family(spec: str) -> str:
    """The policy's name with its size written as K: ``frspec:4096@general`` -> ``frspec:K@general``."""
    name, listed = split_list(spec)
    parts = name.split(":")
    if len(parts) > 1 and parts[1].isdigit():
        parts[1] = "K"
    return ":".join(parts) + (f"@{listed}" if listed else "") + (ALIGN if split_align(spec)[1] else "")


def policy_size(spec: str) -> int | None:
    """K of a sized policy name (``evospec:4096:sync`` -> 4096), None for ``full``/``eagle3``."""
    parts = split_list(spec)[0].split(":")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


def build_policies(specs: list[str], inputs: PolicyInputs, frequencies: str | None, lists: dict[str, str],
                   router: str | None, evospec: EvoSpecConfig | None = None) -> dict:
    """Every policy by its full name; ``NAME@LIST`` takes its frequency list from ``lists[LIST]``.
    Bad names, unknown lists and unknown variants fail here, before any run."""
    built = {}
    for spec in specs:
        name, listed = split_list(spec)
        if listed is not None and listed not in lists:
            raise SettingsError(f"policy {spec!r} names the frequency list {listed!r}, but only "
                                f"{sorted(lists) or 'none'} were given (--list NAME=FILE)")
        built[spec] = make_policy(name, inputs, lists[listed] if listed else frequencies, router, evospec)
    return built


def _reads_states(policy) -> bool:
    return hasattr(policy, "route") or getattr(policy, "semantic", None) is not None


def run_profile_vocab(generator: SpeculativeGenerator, corpus: str, policies: list[str], frequencies: str | None,
                      router: str | None, decodes: list[DecodeSettings], settings: BenchSettings,
                      replay_tokens: int = 8192, progress: Callable[[str], None] | None = None,
                      lists: dict[str, str] | None = None, evospec: EvoSpecConfig | None = None) -> list[VocabRow]:
    """Rows per domain, decoding setting (temperature) and policy; ``policies`` are expanded names
    (``expand_policies``) and must include ``full``; ``evospec``: EvoSpec's settings (default built-in)."""
    domains = chosen_domains(corpus, settings.domains)
    for domain in domains:  # a domain without the split fails now, not after hours of decoding the others
        try:
            read_documents(corpus, domain, settings.split)
        except CorpusError as exc:
            raise CorpusError(f"{exc}; leave the domain out with --domains") from None
    if FULL not in policies:
        raise SettingsError("profile vocab needs the full vocabulary among the policies: shares are taken of it")
    drafter = generator.drafter
    inputs = PolicyInputs(drafter.config.vocab_size, drafter.draft_vocab_ids, getattr(drafter, "semantic_index", None),
                          getattr(drafter, "mass_index", None))
    frequencies = frequencies or getattr(drafter, "frequencies_path", None)  # else the bundle's own
    config = evospec or EvoSpecConfig.builtin()
    built = build_policies(policies, inputs, frequencies, lists or {}, router, config)
    aligned = {spec: config.for_policy(split_align(spec)[0]) for spec in built if split_align(spec)[1]}
    if aligned and getattr(drafter, "reservoir", None) is None:
        raise SettingsError("+align needs a bundle whose head rows live on the host (an ort or torch bundle)")
    try:
        return _measure(generator, corpus, domains, settings, decodes, built, inputs, replay_tokens, progress, aligned)
    finally:
        generator.policy = generator.aligner = None
        for policy in built.values():
            policy.close()


def _generate_aligned(generator, prompts, decode, settings):
    """Generate ``prompts`` in turn with a fresh EvoSpec aligner carried from prompt to prompt, then put
    every reservoir row back as it was (the next run starts from the compiled drafter)."""
    drafter = generator.drafter
    saved = drafter.reservoir.clone()
    aligner = generator.aligner = make_evospec_aligner(drafter, settings)
    try:
        return [generator.generate(p, decode) for p in prompts]
    finally:
        generator.aligner = None
        if hasattr(aligner, "close"):
            aligner.close()
        drafter.reservoir.copy_(saved)
        drafter.rows_changed(torch.arange(saved.shape[0]))


def _measure(generator, corpus, domains, settings, decodes, built, inputs, replay_tokens, progress,
             aligned) -> list[VocabRow]:
    rows = []
    for domain in domains:
        prompts = domain_prompts(generator, corpus, domain, settings)
        streams = replay_streams(generator, corpus, domain, replay_tokens, split=settings.split)
        states = replay_states(generator, streams, any(_reads_states(p) for p in built.values()))
        # a policy run with +align replays as the policy alone: replayed once, under its base name
        bases = {split_align(spec)[0]: p for spec, p in built.items()}
        replayed = replay_by_kind(generator, bases, streams, inputs.vocab_size, settings.prompt_tokens, states,
                                  sorted({d.temperature for d in decodes}), decodes[0].top_p)
        for decode in decodes:
            generator.policy = None
            plain = [generator.generate(p, replace(decode, use_draft=False)).token_ids for p in prompts] \
                if decode.greedy else None
            runs: dict[str, VocabRow] = {}
            for spec, policy in built.items():
                generator.policy = policy
                if spec in aligned:
                    results = _generate_aligned(generator, prompts, decode, aligned[spec])
                else:
                    results = [generator.generate(p, decode) for p in prompts]
                pooled = PooledStats.of([r.stats for r in results])
                ms = pooled.ms_per_step
                runs[spec] = VocabRow(
                    domain=domain, policy=spec, family=policy_family(spec), temperature=decode.temperature,
                    top_p=decode.top_p, seed=decode.seed, active_size=pooled.active_size,
                    mean_accepted_length=pooled.mean_accepted_length, share_of_full=None,
                    rejected_choice_coverage=pooled.rejected_choice_coverage,
                    text_coverage=replayed[decode.greedy][split_align(spec)[0]].text_coverage,
                    target_mass=replayed[decode.greedy][split_align(spec)[0]].target_mass(decode.temperature),
                    tokens_per_second=pooled.new_tokens / pooled.wall_time_s if pooled.wall_time_s > 0 else 0.0,
                    rows_moved_per_step=pooled.rows_moved_per_step, retrieval_ms_per_step=ms["retrieval"],
                    plan_ms_per_step=ms["plan"], draft_ms_per_step=ms["draft"], verify_ms_per_step=ms["verify"],
                    align_ms_per_step=ms["align"], step_ms=ms["step"],
                    identical_to_plain=None if plain is None else all(r.token_ids == q for r, q in zip(results, plain)),
                    head_kernels=head_kernels(generator),
                )
                if runs[spec].identical_to_plain is False:
                    parted = first_divergence(generator.target.model, prompts, [r.token_ids for r in results], plain)
                    runs[spec].first_difference = None if parted is None else parted.describe()
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
    trunk + head over the active set (``full``: the full head). The retrieval and gather-plan time each
    policy spent on the decoding thread here is added as measured: routing (DynaSpec, EvoSpec's mass fill)
    and the fresh patch run there, a pipelined worker's own time does not. The plan's row copies are
    measured at this pair's width, so at a production width they cost more than added here.
    Speedup over plain decoding = tau x verify / (verify + depth x draft level + retrieval + plan)."""
    verify = target_layers * costs.trunk_ms + costs.full_ms
    for row in rows:
        head = costs.full_ms if row.policy == "full" else costs.head_ms(row.active_size)
        host = row.retrieval_ms_per_step + row.plan_ms_per_step
        row.projected_speedup = row.mean_accepted_length * verify / (verify + depth * (costs.trunk_ms + head) + host)


def vocab_table(rows: list[VocabRow]) -> str:
    header = ("domain", "T", "policy", "active", "tau", "of full", "rejected-choice cov", "text cov", "target mass",
              "tokens/s", "moved/step",
              "retrieval ms", "plan ms", "draft ms", "verify ms", "align ms", "step ms", "projected x", "identical")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    lines = [(r.domain, f"{r.temperature:g}", r.policy, f"{r.active_size:.0f}", f"{r.mean_accepted_length:.2f}",
              pct(r.share_of_full), pct(r.rejected_choice_coverage), pct(r.text_coverage), pct(r.target_mass),
              f"{r.tokens_per_second:.1f}",
              f"{r.rows_moved_per_step:.0f}", f"{r.retrieval_ms_per_step:.2f}", f"{r.plan_ms_per_step:.2f}",
              f"{r.draft_ms_per_step:.2f}", f"{r.verify_ms_per_step:.2f}", f"{r.align_ms_per_step:.2f}", f"{r.step_ms:.2f}",
              "-" if r.projected_speedup is None else f"{r.projected_speedup:.2f}x",
              "-" if r.identical_to_plain is None else str(r.identical_to_plain)) for r in rows]
    return text_table(header, lines) + parted_report([(f"{r.domain} {r.policy}", r.first_difference)
                                                      for r in rows if r.first_difference])


def vocab_json(rows: list[VocabRow]) -> list[dict]:
    return [asdict(r) for r in rows]
