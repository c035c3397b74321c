"""Token frequency tables (``evospec vocab frequencies``): counted once, streamed, saved as JSON."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from evospec.core.atomic import write_text_atomic
from evospec.core.errors import SettingsError


@dataclass
class TokenFrequencies:
    vocab_size: int
    counts: torch.Tensor  # [vocab_size] int64
    documents: int
    source: str
    successors: dict[int, list[int]] | None = None  # token -> its most frequent next tokens in the corpus
    counted: dict | None = None  # what was counted: {"corpus", "split", "domains"} (`vocab frequencies`)

    def top(self, k: int, vocab_size: int | None = None) -> torch.Tensor:
        """The ``k`` most frequent ids, sorted by id."""
        return self.ranked(k, vocab_size).sort().values

    def ranked(self, k: int, vocab_size: int | None = None) -> torch.Tensor:
        """The ``k`` most frequent ids, most frequent first."""
        if vocab_size is not None and vocab_size != self.vocab_size:
            raise SettingsError(f"frequency table counts {self.vocab_size} token ids but the model has {vocab_size}; "
                                "count with the target's own tokenizer")
        if not 1 <= k <= self.vocab_size:
            raise SettingsError(f"K must be in [1, {self.vocab_size}] (got {k})")
        # stable sort: among equal counts the lower id wins, so the list is deterministic
        return torch.sort(-self.counts, stable=True).indices[:k]

    def save(self, path: Path) -> None:
        nonzero = torch.nonzero(self.counts).flatten()
        write_text_atomic(Path(path), json.dumps({
            "format": "evospec-token-frequencies/1", "vocab_size": self.vocab_size, "documents": self.documents,
            "tokens": int(self.counts.sum()), "source": self.source,
            "counts": {str(int(i)): int(self.counts[i]) for i in nonzero},
            "successors": None if self.successors is None else {str(t): s for t, s in self.successors.items()},
            "counted": self.counted,
        }))

    @classmethod
    def load(cls, path: str | Path) -> TokenFrequencies:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise SettingsError(f"frequency file {path} does not exist (make one with `evospec vocab frequencies`)") from None
        except json.JSONDecodeError as exc:
            raise SettingsError(f"frequency file {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != "evospec-token-frequencies/1":
            raise SettingsError(f"{path} is not an evospec token-frequency file")
        counts = torch.zeros(int(data["vocab_size"]), dtype=torch.long)
        for token, count in data["counts"].items():
            counts[int(token)] = int(count)
        successors = data.get("successors")
        if successors is not None:
            successors = {int(t): [int(x) for x in nxt] for t, nxt in successors.items()}
        return cls(int(data["vocab_size"]), counts, int(data["documents"]), str(data.get("source", "")), successors,
                   data.get("counted"))


def count_tokens(batches: Iterable[list[list[int]]], vocab_size: int, source: str,
                 progress: Callable[[int], None] | None = None, successors: int = 0) -> TokenFrequencies:
    """Count ids over batches of tokenised documents (streamed: one batch in memory at a time).

    With ``successors`` > 0 also keep, per token, its ``successors`` most frequent next tokens
    (the statistical index of the ``evospec`` policy).
    """
    counter: Counter = Counter()
    pairs: Counter = Counter()
    documents = 0
    for batch in batches:
        for ids in batch:
            counter.update(ids)
            if successors:
                pairs.update(zip(ids, ids[1:]))
        documents += len(batch)
        if progress is not None:
            progress(len(batch))
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for token, count in counter.items():
        if not 0 <= token < vocab_size:
            raise SettingsError(f"token id {token} is outside the vocabulary [0, {vocab_size})")
        counts[token] = count
    table = None
    if successors:
        ranked: dict[int, list[tuple[int, int]]] = {}
        for (a, b), count in pairs.items():
            ranked.setdefault(a, []).append((-count, b))
        table = {a: [b for _, b in sorted(nxt)[:successors]] for a, nxt in ranked.items()}
    return TokenFrequencies(vocab_size, counts, documents, source, table)
