"""``evospec bench``: acceptance and speed per domain, speculative against plain decoding.

Prompts are prefixes of each domain's test documents. Every prompt is decoded twice through the
same loop, with the drafter (method ``eagle3``) and without (``plain``); greedy outputs must be
identical, and the row says whether they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from evospec.core.errors import SettingsError
from evospec.core.plotting import pyplot, save_figure
from evospec.core.settings import DecodeSettings
from evospec.core.text_table import text_table
from evospec.data.corpus import CorpusError, chosen_domains, read_documents, switch_segment_tokens
from evospec.eval.divergence import first_divergence
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.stats import GenerationResult, PooledStats


@dataclass(frozen=True)
class BenchSettings:
    """Attributes:
    domains: Domains to run (None: every domain folder of the corpus).
    prompts: Prompts per domain (prefixes of the first test documents long enough).
    prompt_tokens: Tokens in each prompt.
    split: Corpus split the prompts come from: ``test`` for reported figures, ``valid`` for tuning.
    """

    domains: tuple[str, ...] | None = None
    prompts: int = 8
    prompt_tokens: int = 64
    split: str = "test"

    def __post_init__(self) -> None:
        if self.prompts < 1 or self.prompt_tokens < 1:
            raise SettingsError(f"prompts and prompt_tokens must be >= 1 (got {self.prompts}, {self.prompt_tokens})")
        if self.split not in ("train", "valid", "test"):
            raise SettingsError(f"split must be train, valid or test (got {self.split!r})")


@dataclass
class BenchRow:
    domain: str
    method: str
    temperature: float
    top_p: float
    seed: int
    prompts: int
    new_tokens: int
    steps: int
    mean_accepted_length: float
    acceptance_per_depth: list[float]  # share of steps that accepted at least d draft tokens, d = 1..depth
    tokens_per_second: float
    draft_ms_per_step: float | None  # None where the engine does not report it (vLLM)
    verify_ms_per_step: float | None
    identical_to_plain: bool | None  # greedy output == the target's own (our runtime without a drafter)
    engine: str = "evospec"  # evospec (this runtime) or vllm (`--engine vllm`)
    first_difference: str | None = None  # where a greedy output first parted from plain's (``divergence.py``)
    batch: int = 1  # requests decoded together (this runtime decodes one at a time)
    ms_per_step: dict[str, float] | None = None  # this runtime: where a step's time went (see step_breakdown)
    plain_steps: int = 0  # steps that drafted nothing (``--plain-fallback``), counted in ``steps``
    draft: str | None = None  # this runtime's speculative rows: what each step drafted (``draft_shape``)


SWITCH_LEAD = 16  # tokens of the new topic a topic-switch prompt ends with


def domain_prompts(generator: SpeculativeGenerator, corpus: str, domain: str, settings: BenchSettings) -> list[list[int]]:
    """Prefixes of the documents of ``settings.split`` (test by default); for topic-switch streams, windows that end ``SWITCH_LEAD``
    tokens after a switch (prompt i after switch 1 + i mod (segments - 1)), so decoding continues
    in a new topic with the old one in context."""
    prompts = []
    segment = switch_segment_tokens(corpus, domain)
    for i, doc in enumerate(read_documents(corpus, domain, settings.split)):
        ids = generator.encode(doc)
        if segment is not None and len(ids) >= 2 * segment:
            boundaries = max(1, len(ids) // segment - 1)
            end = segment * (1 + i % boundaries) + SWITCH_LEAD
            if end - settings.prompt_tokens >= 0 and end <= len(ids):
                prompts.append(ids[end - settings.prompt_tokens : end])
        elif len(ids) >= settings.prompt_tokens:
            prompts.append(ids[: settings.prompt_tokens])
        if len(prompts) == settings.prompts:
            break
    if not prompts:
        raise CorpusError(f"{corpus}/{domain}/{settings.split} has no document of at least {settings.prompt_tokens} tokens")
    return prompts


def draft_shape(decode: DecodeSettings, native: bool = False, policy: str | None = None) -> str:
    """What a speculative step drafts under ``decode``, in words (``native``: the C++ library drafts; ``policy``: the
    vocabulary policy and who runs it, ``policy_label``), so a JSON row says what each side of a comparison was given."""
    if decode.draft_tree == "chain":
        shape = f"chain of {decode.draft_depth}"
        if decode.draft_siblings:
            shape += f", second choices at its first {decode.draft_siblings} levels"
            if decode.draft_sibling_ratio:
                shape += f" where the first is under {decode.draft_sibling_ratio:g}x as likely"
    else:
        shape = f"tree: depth {decode.draft_depth}, {decode.draft_topk} children a node, {decode.draft_tokens} nodes"
        if decode.temperature > 0:
            sampled = decode.tree_children == "sampled" or (decode.tree_children == "auto" and not native)
            shape += ", children sampled without replacement" if sampled else ", top-k children"
    if decode.draft_budget == "auto" and decode.draft_tree == "chain" and decode.draft_siblings:
        shape += ", siblings on the steps where they lately paid"
    elif decode.draft_budget == "auto":
        shape += ", value-based budget"
    if decode.temperature > 0:
        shape += ", C++ verifier" if decode.sampled_verifier(native) == "native" else ", Python verifier"
    shape += f", {policy}" if policy else ""
    return shape + (", plain fallback" if decode.plain_fallback else "")


def policy_label(generator) -> str | None:
    """The vocabulary policy ``generator`` drafts under and who runs it; None for the drafter's own vocabulary."""
    if generator.native is not None:
        return None if generator.native.policy is None else f"vocabulary {generator.native.policy} in the C++ drafter"
    if generator.policy is None:
        return None
    from evospec.runtime.vocab.native_policy import NativePolicy

    runner = "the C++ library's policy" if isinstance(generator.policy, NativePolicy) else "Python's policy"
    return f"vocabulary {getattr(generator.policy, 'name', type(generator.policy).__name__)} by {runner}"


def summarise(domain: str, method: str, results: list[GenerationResult], decode: DecodeSettings,
              identical: bool | None, draft: str | None = None) -> BenchRow:
    pooled = PooledStats.of([r.stats for r in results])
    accepted, steps = pooled.accepted_lengths, pooled.steps
    return BenchRow(
        domain=domain,
        method=method,
        temperature=decode.temperature,
        top_p=decode.top_p,
        seed=decode.seed,
        prompts=len(results),
        new_tokens=pooled.new_tokens,
        steps=steps,
        mean_accepted_length=pooled.mean_accepted_length,
        acceptance_per_depth=[sum(a >= d for a in accepted) / steps if steps else 0.0
                              for d in range(1, decode.draft_depth + 1)],
        tokens_per_second=pooled.new_tokens / pooled.wall_time_s if pooled.wall_time_s > 0 else 0.0,
        draft_ms_per_step=pooled.ms_per_step["draft"],
        verify_ms_per_step=pooled.ms_per_step["verify"],
        identical_to_plain=identical,
        ms_per_step=step_breakdown(pooled.ms_per_step, pooled.draft_split),
        plain_steps=sum(r.stats.plain_steps for r in results),
        draft=draft,
    )


BREAKDOWN = ("draft", "target", "verdict", "cache", "retrieval", "plan", "align")
DRAFT_PARTS = ("trunk", "head")  # draft split: the drafter's decoder layer, and the rest (LM head, choosing tokens, tree)


def step_breakdown(ms: dict[str, float], draft_split: bool) -> dict[str, float]:
    """A step's wall time by part, with ``other`` (the loop's own bookkeeping) as the remainder, so the
    parts add up to ``step``: nothing a step costs is left out. With ``draft_split`` (the trunk was timed
    apart, ``runtime/trunk_clock.py``) drafting is given as ``trunk`` and ``head`` (= draft - trunk: the
    LM head over the active rows, choosing tokens, the tree's bookkeeping) in place of ``draft``."""
    parts = {name: ms[name] for name in BREAKDOWN}
    if draft_split:
        draft = parts.pop("draft")
        trunk = min(ms["trunk"], draft)
        parts = {"trunk": trunk, "head": draft - trunk, **parts}
    return {**parts, "other": max(ms["step"] - sum(parts.values()), 0.0), "step": ms["step"]}


def breakdown_table(rows: list[BenchRow]) -> str:
    """ms per step by part (``draft`` = trunk + head; "-" where the trunk was not timed apart);
    ``outside`` is the share of the step spent outside the target's and the drafter's forwards
    (verification, cache rollback, policy, plan, alignment, bookkeeping)."""
    columns = (*DRAFT_PARTS, *BREAKDOWN[1:], "other", "step")
    header = ("domain", "T", "method", "draft", *columns, "outside forwards")
    lines = []
    for r in rows:
        if r.ms_per_step is None or r.ms_per_step["step"] == 0:
            continue
        ms = r.ms_per_step
        draft = ms["draft"] if "draft" in ms else ms["trunk"] + ms["head"]
        outside = (ms["step"] - draft - ms["target"]) / ms["step"]
        lines.append((r.domain, f"{r.temperature:g}", r.method, f"{draft:.2f}",
                      *(f"{ms[n]:.2f}" if n in ms else "-" for n in columns), f"{100 * outside:.1f}%"))
    return text_table(header, lines)


@dataclass
class BenchRun:
    """This runtime's rows, the prompts they decoded and the plain (target-only) outputs per domain:
    what another engine is run on and compared with."""

    rows: list[BenchRow]
    prompts: dict[str, list[list[int]]]
    plain_outputs: dict[str, list[list[int]]]


def run_bench(
    generator: SpeculativeGenerator,
    corpus: str,
    decode: DecodeSettings,
    settings: BenchSettings = BenchSettings(),
    progress: Callable[[str], None] | None = None,
    speculative: bool = True,
) -> BenchRun:
    """Rows for every domain: ``eagle3`` (speculative, unless ``speculative`` is False) and ``plain`` (``--no-draft``)."""
    domains = chosen_domains(corpus, settings.domains)
    generator.generate([0], replace(decode, max_new_tokens=2))  # warm-up, not measured
    run = BenchRun([], {}, {})
    for domain in domains:
        prompts = domain_prompts(generator, corpus, domain, settings)
        speculative_results, plain = [], []
        for prompt in prompts:
            if speculative:
                speculative_results.append(generator.generate(prompt, decode))
            plain.append(generator.generate(prompt, replace(decode, use_draft=False)))
            if progress is not None:
                progress(domain)
        if speculative:
            identical = (all(s.token_ids == p.token_ids for s, p in zip(speculative_results, plain))
                         if decode.greedy else None)
            row = summarise(domain, "eagle3", speculative_results, decode, identical,
                            draft_shape(decode, native=generator.native is not None, policy=policy_label(generator)))
            if identical is False:
                parted = first_divergence(generator.target.model, prompts, [s.token_ids for s in speculative_results],
                                          [p.token_ids for p in plain])
                row.first_difference = None if parted is None else parted.describe()
            run.rows.append(row)
        run.rows.append(summarise(domain, "plain", plain, decode, None))
        run.prompts[domain] = prompts
        run.plain_outputs[domain] = [p.token_ids for p in plain]
    return run


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def rows_table(rows: list[BenchRow]) -> str:
    header = ("domain", "T", "engine", "batch", "method", "tau", "accept@1..", "tok/s", "draft ms/step",
              "verify ms/step", "identical")
    lines = [
        (
            r.domain, f"{r.temperature:g}", r.engine, str(r.batch), r.method, f"{r.mean_accepted_length:.2f}",
            " ".join(f"{a:.2f}" for a in r.acceptance_per_depth) if r.method != "plain" else "-",
            f"{r.tokens_per_second:.1f}", _ms(r.draft_ms_per_step), _ms(r.verify_ms_per_step),
            "-" if r.identical_to_plain is None else str(r.identical_to_plain),
        )
        for r in rows
    ]
    return text_table(header, lines)


def plain_steps_report(rows: list[BenchRow]) -> str:
    """Where ``--plain-fallback`` took plain steps: how many of each speculative row's steps (empty if none)."""
    taken = [f"{r.domain} {r.plain_steps} of {r.steps}" for r in rows if r.method != "plain" and r.plain_steps]
    return "\n\nplain steps taken by --plain-fallback: " + ", ".join(taken) if taken else ""


def rows_json(rows: list[BenchRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def series_label(row: BenchRow) -> str:
    """The method alone for this runtime at batch 1; engine and batch otherwise."""
    if row.engine == "evospec" and row.batch == 1:
        return row.method
    return f"{row.engine} {row.method} b{row.batch}"


def bench_plot(rows: list[BenchRow], path) -> None:
    """Two panels per domain: mean accepted length (speculative methods) and tokens/s (every method)."""

    domains = list(dict.fromkeys(r.domain for r in rows))
    series = list(dict.fromkeys(series_label(r) for r in rows))
    fig, (tau_ax, speed_ax) = pyplot().subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(series)
    for i, label in enumerate(series):
        by_domain = {r.domain: r for r in rows if series_label(r) == label}
        xs = [d + i * width for d in range(len(domains))]
        if not label.endswith("plain"):
            tau_ax.bar(xs, [by_domain[d].mean_accepted_length if d in by_domain else 0 for d in domains], width, label=label)
        speed_ax.bar(xs, [by_domain[d].tokens_per_second if d in by_domain else 0 for d in domains], width, label=label)
    for ax, label in ((tau_ax, "mean accepted length (tau)"), (speed_ax, "tokens/s")):
        ax.set_xticks([d + 0.4 - width / 2 for d in range(len(domains))], domains)
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend()
    save_figure(fig, path)
