"""EvoSpec's living vocabulary: a frequency core plus a context-driven tail, within a budget K.

Active set = the ``core`` most frequent corpus tokens + up to ``K - core`` tail tokens ranked by
recency of evidence; tail budget the evidence leaves unused goes to the next most frequent
tokens, so the set always holds K ids (equal size to ``frspec:K``). Evidence:
- statistical index: every token of the prompt and of the committed output (context); what
  followed the newest committed token in the corpus (top-S successors from ``evospec vocab
  frequencies --successors S``) and in this session; misses (committed tokens the set lacked);
- semantic index (when the bundle has one): the ``semantic_count`` rows whose projected inner
  product with the drafter's state is largest (``SemanticIndex``), once per verification cycle.
Each piece of evidence stamps the token with the current step; the tail keeps the most recently
stamped tokens, so old evidence ages out. Drift detection: when the short-run miss rate jumps
well above its long-run level (a topic switch), stamps older than the switch are dropped and the
semantic index is asked for ``drift_boost`` times more rows, so the tail refills with the new topic.
"""

from __future__ import annotations

import heapq

import torch

from evospec.core.errors import SettingsError
from evospec.runtime.vocab.evospec_settings import DriftSettings, PolicySettings
from evospec.runtime.vocab.frequencies import TokenFrequencies

__all__ = ["DriftSettings", "EvoSpecPolicy", "PolicySettings"]


class EvoSpecPolicy:
    def __init__(self, k: int, frequencies: TokenFrequencies, vocab_size: int,
                 settings: PolicySettings | None = None, semantic=None, name: str | None = None) -> None:
        settings = settings or PolicySettings()
        if frequencies.successors is None and settings.corpus_successors:
            raise SettingsError("policy evospec:K needs a frequency file with successors "
                                "(`evospec vocab frequencies --successors 8`)")
        if not 2 <= k <= vocab_size:
            raise SettingsError(f"evospec:K needs 2 <= K <= {vocab_size} (got {k})")
        self.name = name or f"evospec:{k}"
        self.settings = settings
        self.k, self.core_size = k, min(k, max(1, int(k * settings.core_share)))
        self.ranked = frequencies.ranked(k, vocab_size)  # core, then the fill for an unused tail budget
        self.core = self.ranked[: self.core_size]
        self._core_set = set(self.core.tolist())
        self.successors = (frequencies.successors or {}) if settings.corpus_successors else {}
        self.semantic = semantic if settings.semantic_count > 0 else None
        self.semantic_count = settings.semantic_count
        self.drift = settings.drift if settings.drift.enabled else None
        self._member = torch.zeros(vocab_size, dtype=torch.bool)
        self.drifts = 0  # topic switches detected since reset
        self._active: torch.Tensor | None = None  # the last set handed out
        self.reset([])

    def reset(self, prompt_ids: list[int]) -> None:
        self.step = 0
        self.stamp: dict[int, int] = {}
        self.session_next: dict[int, dict[int, int]] = {}
        self.last: int | None = None
        self.fast_miss = self.slow_miss = 0.0
        self.drifts = 0
        self._member.zero_()
        self.observe(list(prompt_ids))

    def _mark(self, token: int) -> None:
        if token not in self._core_set:
            self.stamp[token] = self.step

    def _detect_drift(self, committed: list[int]) -> bool:
        if self.drift is None or not committed or not self._member.any():
            return False
        miss = 1.0 - float(self._member[torch.tensor(committed)].float().mean())
        d = self.drift
        self.fast_miss += d.fast * (miss - self.fast_miss)
        drifted = self.step > d.warmup and self.fast_miss > self.slow_miss + d.jump
        self.slow_miss = self.fast_miss if drifted else self.slow_miss + d.slow * (miss - self.slow_miss)
        return drifted

    def observe(self, committed: list[int], state: torch.Tensor | None = None) -> None:
        self.step += 1
        drifted = self._detect_drift(committed)
        if drifted:  # a topic switch: drop the old topic's evidence
            self.drifts += 1
            fresh = self.step - self.drift.keep_steps
            self.stamp = {t: s for t, s in self.stamp.items() if s >= fresh}
        context, session = self.settings.context, self.settings.session_successors
        for token in committed:
            if context:
                self._mark(token)  # context and misses (a miss is a committed token outside the set)
            if self.last is not None and session:
                self.session_next.setdefault(self.last, {})[token] = self.step
            self.last = token
        if self.last is not None:
            for token in self.successors.get(self.last, ()):
                self._mark(token)
            for token in self.session_next.get(self.last, ()):
                self._mark(token)
        if self.settings.max_age:  # ageing: evidence older than max_age steps leaves the tail
            oldest = self.step - self.settings.max_age
            self.stamp = {t: s for t, s in self.stamp.items() if s > oldest}
        if self.semantic is not None and state is not None:
            count = self.semantic_count * (self.drift.boost if drifted else 1)
            for token in self.semantic.query(state, count):
                self._mark(token)
        budget = self.k - self.core_size
        if len(self.stamp) > 4 * max(budget, 1):  # bounded memory: forget the stalest evidence
            keep = sorted(self.stamp, key=self.stamp.__getitem__, reverse=True)[: 2 * budget]
            self.stamp = {t: self.stamp[t] for t in keep}

    def served(self, active: torch.Tensor) -> None:
        """The set the drafter actually drafted over this cycle (a pipelined caller serves one computed
        a cycle earlier than the newest): misses, and so drift, are judged against it."""
        self._member.zero_()
        self._member[active] = True

    def active_ids(self) -> torch.Tensor:
        budget = self.k - self.core_size
        newest = self.stamp if len(self.stamp) <= budget else heapq.nlargest(budget, self.stamp, key=lambda t: (self.stamp[t], -t))  # ties: lower id
        tail = torch.tensor(list(newest), dtype=torch.long)
        fill = self.ranked[self.core_size :]  # budget the evidence does not use goes to the next most frequent
        fill = fill[~torch.isin(fill, tail)][: budget - tail.numel()]
        active = torch.cat((self.core, tail, fill))
        if self._active is not None and torch.equal(active, self._active):
            return self._active  # the same tensor: the drafter's plan update then costs nothing
        self._active = active
        self._member.zero_()
        self._member[active] = True
        return active

    def close(self) -> None:  # no worker threads: nothing to release
        pass
