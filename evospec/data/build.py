"""``evospec data build``: the evaluation corpus in the folder layout every ``--corpus`` reads.

Per domain: documents deduplicated (exact, after whitespace normalisation), split by document into
train/valid/test by a hash of the document id (stable when sources grow), and a ``manifest.json``
with every source's package, version, licence, bytes and (with a tokenizer) token counts. A
``switch`` domain holds topic-switch streams built from the test splits: documents of different
domains back to back, switching every N tokens (general, code, law, medicine, then multilingual:
a change of language is the drift a deployment meets when its users switch to Spanish).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from evospec.core.atomic import atomic_directory
from evospec.data.sources import DataError, Source, default_sources

SWITCH_ORDER = ("general", "code", "law", "medicine", "multilingual")


@dataclass(frozen=True)
class SplitSettings:
    """Attributes:
    valid_share: Share of documents in valid.
    test_share: Share of documents in test.
    switch_tokens: Tokens per segment of a topic-switch stream (characters / 4 without a tokenizer).
    switch_streams: Number of topic-switch streams.
    """

    valid_share: float = 0.05
    test_share: float = 0.10
    switch_tokens: int = 256
    switch_streams: int = 8


def split_of(doc_id: str, settings: SplitSettings) -> str:
    bucket = int.from_bytes(hashlib.sha256(doc_id.encode()).digest()[:8], "big") / 2**64
    if bucket < settings.test_share:
        return "test"
    if bucket < settings.test_share + settings.valid_share:
        return "valid"
    return "train"


def _hash_rank(doc_id: str) -> bytes:
    # salted: the split is a hash of the same id, and an unsalted rank would keep test documents first
    return hashlib.sha256(b"max_bytes:" + doc_id.encode()).digest()


def capped(
    documents: Iterable[tuple[str, str]], max_bytes: int | None, seen: dict[str, int]
) -> Iterator[tuple[str, str]]:
    """The documents in a stable subset of about ``max_bytes`` (ranked by a hash of the id, taken
    until the total reaches the cap), or all of them; ``seen`` gets the source's full size."""
    documents = list(documents)
    seen["documents"] = len(documents)
    seen["bytes"] = sum(len(text.encode()) for _, text in documents)
    if max_bytes is None:
        yield from documents
        return
    total = 0
    for doc_id, text in sorted(documents, key=lambda d: _hash_rank(d[0])):
        if total >= max_bytes:
            return
        total += len(text.encode())
        yield doc_id, text


def _file_name(doc_id: str) -> str:
    return doc_id.replace("/", "__").replace(":", "_")[:150] + ".txt"


@dataclass
class DomainReport:
    sources: list[dict] = field(default_factory=list)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    duplicates_removed: int = 0


def build_corpus(
    out: Path,
    cache: Path,
    sources: list[Source] | None = None,
    tokenizer=None,
    settings: SplitSettings = SplitSettings(),
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Fetch, extract, deduplicate and split every source into ``out`` (atomically); returns the manifest."""
    sources = sources if sources is not None else default_sources()
    count = (lambda text: len(tokenizer.encode(text))) if tokenizer is not None else None
    reports: dict[str, DomainReport] = {}
    with atomic_directory(out) as tmp:
        seen: dict[str, set[str]] = {}
        for source in sources:
            if progress is not None:
                progress(f"{source.domain}: {source.package}=={source.version}")
            archive = source.fetch(cache)
            report = reports.setdefault(source.domain, DomainReport())
            hashes = seen.setdefault(source.domain, set())
            docs = bytes_ = 0
            available: dict[str, int] = {}
            for doc_id, text in capped(source.documents(archive), source.max_bytes, available):
                digest = hashlib.sha256(" ".join(text.split()).encode()).hexdigest()
                if not text.strip() or digest in hashes:
                    report.duplicates_removed += bool(text.strip())
                    continue
                hashes.add(digest)
                split = split_of(doc_id, settings)
                folder = tmp / source.domain / split
                folder.mkdir(parents=True, exist_ok=True)
                (folder / _file_name(doc_id)).write_text(text)
                stats = report.splits.setdefault(split, {"documents": 0, "bytes": 0, **({"tokens": 0} if count else {})})
                stats["documents"] += 1
                stats["bytes"] += len(text.encode())
                if count:
                    stats["tokens"] += count(text)
                docs += 1
                bytes_ += len(text.encode())
            if docs == 0:
                raise DataError(f"{source.package}=={source.version} gave no documents for {source.domain}")
            report.sources.append({"name": source.name, "registry": source.registry, "package": source.package,
                                   "version": source.version, "licence": source.licence, "documents": docs,
                                   "bytes": bytes_, "max_bytes": source.max_bytes,
                                   "available_documents": available["documents"],
                                   "available_bytes": available["bytes"]})
        for domain in reports:
            for split in ("train", "valid", "test"):
                (tmp / domain / split).mkdir(parents=True, exist_ok=True)
        switch = build_switch_streams(tmp, tokenizer, settings)
        manifest = {
            "format": 1,
            "tokenizer": getattr(tokenizer, "name_or_path", None),
            "domains": {d: {"sources": r.sources, "splits": r.splits, "duplicates_removed": r.duplicates_removed}
                        for d, r in reports.items()},
            "switch": switch,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def build_switch_streams(root: Path, tokenizer, settings: SplitSettings) -> dict:
    """Streams that cycle through the domains' test documents, ``switch_tokens`` per segment.

    Stream s takes from each domain the test document at s/streams of the way through its sorted
    pool, so streams spread over a domain's sources (and the multilingual domain's languages).
    """
    order = [d for d in SWITCH_ORDER if any((root / d / "test").glob("*.txt"))]
    if len(order) < 2:
        return {"streams": 0, "order": order}
    pools = {d: sorted((root / d / "test").glob("*.txt")) for d in order}

    def segment(text: str) -> str:
        if tokenizer is None:
            return text[: 4 * settings.switch_tokens]
        # a cut inside a multi-byte character decodes to U+FFFD: drop that partial character
        return tokenizer.decode(tokenizer.encode(text)[: settings.switch_tokens]).rstrip("\ufffd")

    folder = root / "switch" / "test"
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid"):
        (root / "switch" / split).mkdir(parents=True, exist_ok=True)
    for s in range(settings.switch_streams):
        parts = [segment(pools[d][s * len(pools[d]) // settings.switch_streams].read_text()) for d in order]
        (folder / f"stream_{s:03d}.txt").write_text("\n\n".join(parts))
    return {"streams": settings.switch_streams, "order": order, "segment_tokens": settings.switch_tokens,
            "segment_unit": "tokens" if tokenizer is not None else "characters/4"}
