"""Read a corpus folder: one folder per domain, each with ``train/ valid/ test/`` splits of
``.txt`` documents or ``.jsonl`` files with a ``text`` field. Every command that takes
``--corpus`` reads this layout, so users can bring their own domains.
"""

from __future__ import annotations

import json
from pathlib import Path

from evospec.core.errors import EvoSpecError

SPLITS = ("train", "valid", "test")


class CorpusError(EvoSpecError):
    """A corpus folder is missing, empty or not in the domain/split layout."""


def corpus_domains(root: str | Path) -> list[str]:
    """Domains (sub-folders with at least one split) of a corpus folder, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise CorpusError(f"corpus folder {root} does not exist")
    domains = sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / s).is_dir() for s in SPLITS))
    if not domains:
        raise CorpusError(f"corpus folder {root} has no domain folders with {'/'.join(SPLITS)} splits")
    return domains


def chosen_domains(root: str | Path, requested: tuple[str, ...] | list[str] | None) -> list[str]:
    """``requested`` domains (None: every domain of the corpus), each checked to exist there."""
    available = corpus_domains(root)
    domains = list(requested or available)
    unknown = sorted(set(domains) - set(available))
    if unknown:
        raise CorpusError(f"corpus {root} has no domain(s) {unknown}; it has {available}")
    return domains


def read_documents(root: str | Path, domain: str, split: str = "test") -> list[str]:
    """Documents of one domain and split, in file-name order; empty documents are skipped."""
    folder = Path(root) / domain / split
    if not folder.is_dir():
        raise CorpusError(f"{folder} does not exist (expected {Path(root)}/<domain>/{split}/)")
    docs: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".txt":
            docs.append(path.read_text(errors="replace"))
        elif path.suffix == ".jsonl":
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if not line.strip():
                    continue
                try:
                    docs.append(json.loads(line)["text"])
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise CorpusError(f"{path}:{number}: expected a JSON object with a 'text' field") from None
    docs = [d for d in docs if d.strip()]
    if not docs:
        raise CorpusError(f"{folder} holds no documents (.txt files or .jsonl with a 'text' field)")
    return docs


def iter_document_batches(root: str | Path, domain: str, split: str, batch: int = 256):
    """Documents of one domain and split in batches, reading files lazily (for corpora of any size)."""
    folder = Path(root) / domain / split
    if not folder.is_dir():
        raise CorpusError(f"{folder} does not exist (expected {Path(root)}/<domain>/{split}/)")
    pending: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".txt":
            texts = [path.read_text(errors="replace")]
        elif path.suffix == ".jsonl":
            texts = []
            with path.open() as handle:
                for number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        texts.append(json.loads(line)["text"])
                    except (json.JSONDecodeError, KeyError, TypeError):
                        raise CorpusError(f"{path}:{number}: expected a JSON object with a 'text' field") from None
        else:
            continue
        pending += [t for t in texts if t.strip()]
        while len(pending) >= batch:
            yield pending[:batch]
            pending = pending[batch:]
    if pending:
        yield pending


def switch_segment_tokens(root: str | Path, domain: str) -> int | None:
    """Tokens per segment when ``domain`` holds topic-switch streams (``evospec data build``'s
    manifest says so), else None."""
    path = Path(root) / "manifest.json"
    try:
        info = json.loads(path.read_text()).get(domain) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        raise CorpusError(f"{path}: not valid JSON") from None
    if isinstance(info, dict) and info.get("segment_unit") == "tokens" and info.get("segment_tokens"):
        return int(info["segment_tokens"])
    return None
