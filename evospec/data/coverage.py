"""``evospec vocab coverage``: how much of each domain a frequency-ranked top-K list covers.

FR-Spec's premise is that the K most frequent tokens of general text cover most of what a drafter
must propose. This measures it for the list named: by default FR-Spec's own design (frequencies
counted on the general domain's train split), or any other domains' train splits (``all``: every
in-domain train split, the most generous variant), or a saved frequency file. For every domain
the share of its test tokens that fall in the top-K list is reported, and every row says which
list it used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from evospec.core.plotting import pyplot, save_figure
from evospec.core.text_table import text_table
from evospec.data.corpus import CorpusError, corpus_domains, iter_document_batches
from evospec.runtime.vocab.frequencies import count_tokens as count_table

DEFAULT_KS = (4096, 8192, 16384, 32768)
GENERAL = ("general",)


@dataclass(frozen=True)
class FrequencyList:
    """Attributes:
    ranked: Token ids seen in the counted text, most frequent first (ties: lower id first, as
        ``frspec:K`` ranks them).
    domains: Domains whose text was counted (None when a frequency file does not say).
    split: Split that was counted (None when a frequency file does not say).
    tokens: Tokens counted.
    file: The frequency file the list was read from, or None when counted here.
    """

    ranked: list[int]
    domains: tuple[str, ...] | None
    split: str | None
    tokens: int
    file: str | None = None

    def label(self) -> str:
        what = f"{'+'.join(self.domains)} {self.split} split" if self.domains else "unrecorded text"
        where = f" (from {self.file})" if self.file else ""
        return f"top-K of {what}, {self.tokens:,} tokens{where}"


@dataclass
class CoverageRow:
    domain: str
    k: int
    coverage: float
    tokens: int
    list_domains: list[str] | None = None  # which text the frequency list was counted on
    list_split: str | None = None
    list_tokens: int = 0
    list_size: int = 0  # ids in the list: K, or fewer when the counted text has fewer distinct tokens
    list_file: str | None = None
    list_label: str = ""  # the list in words, as the table's first line says it


def list_domains(corpus: str | Path, spec: str | Iterable[str]) -> tuple[str, ...]:
    """Domains a list is counted on: ``all`` is every domain but the topic-switch streams;
    otherwise comma-separated names, each of which the corpus must have."""
    available = corpus_domains(corpus)
    names = [d.strip() for d in (spec.split(",") if isinstance(spec, str) else spec) if d.strip()]
    if names == ["all"]:
        return tuple(d for d in available if d != "switch")
    missing = [d for d in names if d not in available]
    if missing or not names:
        raise CorpusError(f"corpus {corpus} has no {', '.join(repr(d) for d in missing) or 'named'} domain to count "
                          f"list frequencies on (it has {', '.join(available)}; or use 'all')")
    return tuple(names)


def corpus_frequencies(tokenizer, corpus: str | Path, domains: tuple[str, ...], split: str = "train",
                       progress: Callable[[int], None] | None = None, successors: int = 0):
    """A ``TokenFrequencies`` table counted on ``domains``' ``split`` (streamed), recording what it counted."""

    batches = (tokenizer(batch, add_special_tokens=False)["input_ids"]
               for domain in domains for batch in iter_document_batches(corpus, domain, split))
    source = f"{corpus} {split} {','.join(domains)}"
    table = count_table(batches, len(tokenizer), source, progress, successors=successors)
    table.counted = {"corpus": str(corpus), "split": split, "domains": list(domains)}
    return table


def frequency_list(table, vocab_size: int, file: str | None = None) -> FrequencyList:
    """The ranked list of a ``TokenFrequencies`` table (only ids it saw)."""
    seen = int((table.counts > 0).sum())
    ranked = table.ranked(seen, vocab_size).tolist() if seen else []
    counted = table.counted or {}
    domains = tuple(counted["domains"]) if counted.get("domains") else None
    return FrequencyList(ranked, domains, counted.get("split"), int(table.counts.sum()), file)


def coverage_rows(
    tokenizer, corpus: str, ks: tuple[int, ...] = DEFAULT_KS, frequencies: FrequencyList | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[CoverageRow]:
    """Top-K coverage of every domain's test split by ``frequencies`` (default: FR-Spec's list,
    the general domain's train split)."""
    domains = corpus_domains(corpus)
    if frequencies is None:
        if "general" not in domains:
            raise CorpusError(f"corpus {corpus} has no 'general' domain to count reference frequencies on")
        frequencies = frequency_list(corpus_frequencies(tokenizer, corpus, GENERAL, "train", progress), len(tokenizer))
    rows = []
    for domain in domains:
        counts = corpus_frequencies(tokenizer, corpus, (domain,), "test", progress).counts
        total = int(counts.sum())
        for k in ks:
            top = frequencies.ranked[:k]
            covered = int(counts[top].sum()) if top else 0
            rows.append(CoverageRow(
                domain=domain, k=k, coverage=covered / total if total else 0.0, tokens=total,
                list_domains=list(frequencies.domains) if frequencies.domains else None, list_split=frequencies.split,
                list_tokens=frequencies.tokens, list_size=len(top), list_file=frequencies.file,
                list_label=frequencies.label()))
    return rows


def coverage_table(rows: list[CoverageRow]) -> str:
    """The list used (first line), then one row per domain, one column per K."""
    ks = sorted({r.k for r in rows})
    domains = list(dict.fromkeys(r.domain for r in rows))
    by = {(r.domain, r.k): r.coverage for r in rows}
    header = ["domain (test split)"] + [f"top-{k}" for k in ks]
    lines = [[d] + [f"{by[(d, k)]:.1%}" for k in ks] for d in domains]
    short = [f"top-{r.k} has {r.list_size}" for r in rows if r.domain == domains[0] and r.list_size < r.k]
    title = f"list: {rows[0].list_label}" if rows else "list: none"
    if short:
        title += f" (fewer distinct tokens than K: {', '.join(short)})"
    return title + "\n" + text_table(header, lines)


def coverage_json(rows: list[CoverageRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def coverage_plot(rows: list[CoverageRow], path) -> None:
    """Coverage against K, one line per domain (PNG, written atomically)."""

    fig, ax = pyplot().subplots(figsize=(6, 4))
    for domain in dict.fromkeys(r.domain for r in rows):
        pts = sorted((r.k, r.coverage) for r in rows if r.domain == domain)
        ax.plot([k for k, _ in pts], [100 * c for _, c in pts], marker="o", label=domain)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"K ({rows[0].list_label})" if rows else "K")
    ax.set_ylabel("share of the domain's tokens covered (%)")
    ax.set_title("FR-Spec premise: top-K coverage by domain")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)
