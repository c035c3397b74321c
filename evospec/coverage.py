"""``evospec vocab coverage``: how much of each domain a frequency-ranked top-K list covers.

FR-Spec's premise is that the K most frequent tokens of general text cover most of what a drafter
must propose. This measures it: frequencies are counted on the general domain's train split, and
for every domain the share of its test tokens that fall in the top-K list is reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

from evospec.corpus import CorpusError, corpus_domains, read_documents
from evospec.text_table import text_table

DEFAULT_KS = (4096, 8192, 16384, 32768)


@dataclass
class CoverageRow:
    domain: str
    k: int
    coverage: float
    tokens: int


def count_tokens(tokenizer, documents: Iterable[str], batch: int = 64, progress: Callable[[int], None] | None = None) -> Counter:
    """Token frequencies over documents, tokenised in batches (streams: one batch in memory)."""
    counts: Counter = Counter()
    pending: list[str] = []

    def flush() -> None:
        for ids in tokenizer(pending, add_special_tokens=False)["input_ids"]:
            counts.update(ids)
        if progress is not None:
            progress(len(pending))
        pending.clear()

    for doc in documents:
        pending.append(doc)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return counts


def coverage_rows(
    tokenizer, corpus: str, ks: tuple[int, ...] = DEFAULT_KS, reference: str = "general",
    progress: Callable[[int], None] | None = None,
) -> list[CoverageRow]:
    domains = corpus_domains(corpus)
    if reference not in domains:
        raise CorpusError(f"corpus {corpus} has no '{reference}' domain to count reference frequencies on")
    ranked = [t for t, _ in count_tokens(tokenizer, read_documents(corpus, reference, "train"), progress=progress).most_common()]
    rows = []
    for domain in domains:
        counts = count_tokens(tokenizer, read_documents(corpus, domain, "test"), progress=progress)
        total = sum(counts.values())
        for k in ks:
            top = set(ranked[:k])
            covered = sum(c for t, c in counts.items() if t in top)
            rows.append(CoverageRow(domain=domain, k=k, coverage=covered / total if total else 0.0, tokens=total))
    return rows


def coverage_table(rows: list[CoverageRow]) -> str:
    ks = sorted({r.k for r in rows})
    domains = list(dict.fromkeys(r.domain for r in rows))
    by = {(r.domain, r.k): r.coverage for r in rows}
    header = ["domain"] + [f"top-{k}" for k in ks]
    lines = [[d] + [f"{by[(d, k)]:.1%}" for k in ks] for d in domains]
    return text_table(header, lines)


def coverage_json(rows: list[CoverageRow]) -> list[dict]:
    return [asdict(r) for r in rows]


def coverage_plot(rows: list[CoverageRow], path) -> None:
    """Coverage against K, one line per domain (PNG, written atomically)."""
    from evospec.plotting import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6, 4))
    for domain in dict.fromkeys(r.domain for r in rows):
        pts = sorted((r.k, r.coverage) for r in rows if r.domain == domain)
        ax.plot([k for k, _ in pts], [100 * c for _, c in pts], marker="o", label=domain)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (top-K most frequent general-text tokens)")
    ax.set_ylabel("share of the domain's tokens covered (%)")
    ax.set_title("FR-Spec premise: top-K coverage by domain")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_figure(fig, path)
