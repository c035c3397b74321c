"""EvoSpec's living vocabulary (statistical index): a frequency core plus a context-driven tail.

Active set = the ``core`` most frequent corpus tokens + up to ``K - core`` tail tokens, ranked by
recency of evidence, and tail budget the evidence leaves unused goes to the next most frequent
tokens, so the set always holds K ids (equal size to ``frspec:K``):
- context: every token of the prompt and of the committed output;
- successors: what followed the newest committed token in the corpus (top-S per token, counted
  by ``evospec vocab frequencies --successors S``) and in this session so far;
- misses: committed tokens the active set lacked (they are the draft tokens that were impossible).
Each piece of evidence stamps the token with the current step; the tail keeps the most recently
stamped tokens (older ones age out), so a topic switch refreshes the tail within a few steps.
The semantic (USearch) index and drift detection are not part of this version.
"""

from __future__ import annotations

import torch
from evospec.runtime.vocab.frequencies import TokenFrequencies

from evospec.errors import SettingsError


class EvoSpecPolicy:
    def __init__(self, k: int, frequencies: TokenFrequencies, vocab_size: int, core_share: float = 0.5) -> None:
        if frequencies.successors is None:
            raise SettingsError("policy evospec:K needs a frequency file with successors "
                                "(`evospec vocab frequencies --successors 8`)")
        if not 2 <= k <= vocab_size:
            raise SettingsError(f"evospec:K needs 2 <= K <= {vocab_size} (got {k})")
        self.name = f"evospec:{k}"
        self.k, self.core_size = k, max(1, int(k * core_share))
        self.ranked = frequencies.ranked(k, vocab_size)  # core, then the fill for an unused tail budget
        self.core = self.ranked[: self.core_size]
        self._core_set = set(self.core.tolist())
        self.successors = frequencies.successors
        self.reset([])

    def reset(self, prompt_ids: list[int]) -> None:
        self.step = 0
        self.stamp: dict[int, int] = {}
        self.session_next: dict[int, dict[int, int]] = {}
        self.last: int | None = None
        self._active: set[int] = set()
        self.observe(list(prompt_ids))

    def _mark(self, token: int) -> None:
        if token not in self._core_set:
            self.stamp[token] = self.step

    def observe(self, committed: list[int]) -> None:
        self.step += 1
        for token in committed:
            self._mark(token)  # context and misses (a miss is a committed token outside the set)
            if self.last is not None:
                nxt = self.session_next.setdefault(self.last, {})
                nxt[token] = self.step
            self.last = token
        if self.last is not None:
            for token in self.successors.get(self.last, ()):
                self._mark(token)
            for token in self.session_next.get(self.last, ()):
                self._mark(token)
        budget = self.k - self.core_size
        if len(self.stamp) > 4 * budget:  # bounded memory: forget the stalest evidence
            keep = sorted(self.stamp, key=self.stamp.__getitem__, reverse=True)[: 2 * budget]
            self.stamp = {t: self.stamp[t] for t in keep}

    def active_ids(self) -> torch.Tensor:
        budget = self.k - self.core_size
        tail = torch.tensor(sorted(self.stamp, key=lambda t: (-self.stamp[t], t))[:budget], dtype=torch.long)
        fill = self.ranked[self.core_size :]  # budget the evidence does not use goes to the next most frequent
        fill = fill[~torch.isin(fill, tail)][: budget - tail.numel()]
        return torch.cat((self.core, tail, fill))
