"""EvoSpec's living vocabulary: a frequency core plus a context-driven tail, within a budget K.

Active set = the ``core`` most frequent corpus tokens + up to ``K - core`` tail tokens ranked by
recency of evidence; tail budget the evidence leaves unused goes to the next most frequent
tokens, so the set always holds K ids (equal size to ``frspec:K``). Evidence:
- statistical index: every token of the prompt and of the committed output (context); what
  followed the newest committed token in the corpus (top-S successors from ``evospec vocab
  frequencies --successors S``) and in this session; misses (committed tokens the set lacked);
- semantic index (when the bundle has one): the ``semantic_count`` rows whose projected inner
  product with the drafter's state is largest (``SemanticIndex``), once per verification cycle;
- verification feedback (``target_top``): the target's most likely tokens at each verified position,
  which the caller reads from the logits verification computed anyway.
Each piece of evidence stamps the token with the current step; the tail keeps the most recently
stamped tokens, so old evidence ages out. Drift detection: when the short-run miss rate jumps
well above its long-run level (a topic switch), stamps older than the switch are dropped and the
semantic index is asked for ``drift_boost`` times more rows, so the tail refills with the new topic.

Bookkeeping stays proportional to what changed: stamps live in a ``RecencyIndex`` (per-step buckets,
so the tail is read newest-first without a heap over every stamp, and ageing drops whole buckets),
and the session's successor table is bounded (``SESSION_SUCCESSORS``, ``SESSION_KEYS_PER_K``).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from evospec.core.errors import SettingsError
from evospec.runtime.vocab.evospec_settings import DriftSettings, PolicySettings
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.runtime.vocab.recency import RecencyIndex

__all__ = ["DriftSettings", "EvoSpecPolicy", "PolicySettings"]

# The session's successor table is bounded so a long session cannot grow it without limit. Why the
# bound is harmless: a token's successors are stamped all at once, with one stamp, whenever it is
# the newest committed token, so the ones kept are the most recent SESSION_SUCCESSORS things that
# followed it (a token followed by more distinct tokens than that is a function word whose oldest
# followers are weak evidence); a token is forgotten as a key only after SESSION_KEYS_PER_K * K
# other tokens were followed by something more recently, and each of those committed tokens stamped
# itself (context), so what the forgotten key last stamped has long been outranked in a tail of at
# most K tokens; should the token come back, the corpus successors still cover it.
SESSION_SUCCESSORS = 32  # successors kept per token (the stalest goes first)
SESSION_KEYS_PER_K = 2  # distinct tokens with successors kept, per unit of K (least recently followed goes first)
SESSION_KEYS_MIN = 1024  # ... and at least this many, so a small K still remembers a paragraph's transitions


class EvoSpecPolicy:
    def __init__(self, k: int, frequencies: TokenFrequencies, vocab_size: int,
                 settings: PolicySettings | None = None, semantic=None, name: str | None = None,
                 frequency_fill: bool = True) -> None:
        """``frequency_fill=False``: sets hold the core and the evidence only (``kept_ids``), for a wrapper that
        fills the rest of K itself (``MassRouted``), which would otherwise throw away a fill of up to K / 2 ids
        a cycle."""
        settings = settings or PolicySettings()
        if frequencies.successors is None and settings.corpus_successors:
            raise SettingsError("policy evospec:K needs a frequency file with successors "
                                "(`evospec vocab frequencies --successors 8`)")
        if not 2 <= k <= vocab_size:
            raise SettingsError(f"evospec:K needs 2 <= K <= {vocab_size} (got {k})")
        self.name = name or f"evospec:{k}"
        self.settings = settings
        self._greedy = False  # the request decodes greedily (``decoding``): no semantic query unless semantic_greedy
        self.frequency_fill = frequency_fill
        self.k, self.core_size = k, min(k, max(1, int(k * settings.core_share)))
        self.ranked = frequencies.ranked(k, vocab_size)  # core, then the fill for an unused tail budget
        self.core = self.ranked[: self.core_size]
        self._core_set = set(self.core.tolist())
        self._core_mask = torch.zeros(vocab_size, dtype=torch.bool)
        self._core_mask[self.core] = True
        self._scratch = torch.zeros(vocab_size, dtype=torch.bool)  # the tail's members while a set is built
        self.successors = (frequencies.successors or {}) if settings.corpus_successors else {}
        self.semantic = semantic if settings.semantic_count > 0 else None
        self.semantic_count = settings.semantic_count
        self.target_top = settings.target_top  # callers hand ``observe`` this many target ids per position
        self.drift = settings.drift if settings.drift.enabled else None
        self._member = torch.zeros(vocab_size, dtype=torch.bool)
        self.drifts = 0  # topic switches detected since reset
        self.session_keys = max(SESSION_KEYS_PER_K * k, SESSION_KEYS_MIN)
        self._active: torch.Tensor | None = None  # the last set handed out
        self.reset([])

    def decoding(self, greedy: bool) -> None:
        """The next request decodes greedily or samples (greedy ones skip the semantic query unless
        ``semantic_greedy``)."""
        self._greedy = bool(greedy)

    def reset(self, prompt_ids: list[int]) -> None:
        self.step = 0
        self.recency = RecencyIndex()
        # token -> {what followed it this session: step}; keys in order of last use (stalest first)
        self.session_next: OrderedDict[int, dict[int, int]] = OrderedDict()
        self.last: int | None = None
        self.fast_miss = self.slow_miss = 0.0
        self.drifts = 0
        self._member.zero_()
        self.observe(list(prompt_ids))

    @property
    def stamp(self) -> dict[int, int]:
        """Token -> the step of its newest evidence (tail candidates only); read it, do not write it."""
        return self.recency.stamp

    def _mark(self, token: int) -> None:
        if token not in self._core_set:
            self.recency.mark(token, self.step)

    def _mark_all(self, ids: torch.Tensor) -> None:
        """``_mark`` each id, the core left out by a mask first (a per-id Python call is the dear part)."""
        ids = ids.to(torch.long)
        step, mark = self.step, self.recency.mark
        for token in ids[~self._core_mask[ids]].tolist():
            mark(token, step)

    def _followed(self, token: int, successor: int) -> None:
        """Record that ``successor`` followed ``token`` this session, within the table's bounds."""
        nexts = self.session_next.get(token)
        if nexts is None:
            nexts = self.session_next[token] = {}
            if len(self.session_next) > self.session_keys:
                self.session_next.popitem(last=False)  # the token least recently followed by anything
        else:
            self.session_next.move_to_end(token)
        nexts[successor] = self.step  # an existing successor keeps its place: marking order is unchanged
        if len(nexts) > SESSION_SUCCESSORS:
            del nexts[min(nexts, key=nexts.__getitem__)]  # the stalest (the first of equals)

    def _detect_drift(self, committed: list[int]) -> bool:
        if self.drift is None or not committed or not self._member.any():
            return False
        miss = 1.0 - float(self._member[torch.tensor(committed)].float().mean())
        d = self.drift
        self.fast_miss += d.fast * (miss - self.fast_miss)
        drifted = self.step > d.warmup and self.fast_miss > self.slow_miss + d.jump
        self.slow_miss = self.fast_miss if drifted else self.slow_miss + d.slow * (miss - self.slow_miss)
        return drifted

    def observe(self, committed: list[int], state: torch.Tensor | None = None,
                target_top: torch.Tensor | None = None) -> None:
        """``target_top``: [positions, target_top] the target's most likely ids at the verified positions."""
        self.step += 1
        drifted = self._detect_drift(committed)
        if drifted:  # a topic switch: drop the old topic's evidence
            self.drifts += 1
            self.recency.drop_before(self.step - self.drift.keep_steps)
        context, session = self.settings.context, self.settings.session_successors
        for token in committed:
            if context:
                self._mark(token)  # context and misses (a miss is a committed token outside the set)
            if self.last is not None and session:
                self._followed(self.last, token)
            self.last = token
        if self.last is not None:
            for token in self.successors.get(self.last, ()):
                self._mark(token)
            for token in self.session_next.get(self.last, ()):
                self._mark(token)
        if self.settings.max_age:  # ageing: evidence older than max_age steps leaves the tail
            self.recency.drop_before(self.step - self.settings.max_age + 1)
        if target_top is not None and self.target_top:
            self._mark_all(target_top[:, : self.target_top].reshape(-1))
        if self.semantic is not None and state is not None and (not self._greedy or self.settings.semantic_greedy):
            count = self.semantic_count * (self.drift.boost if drifted else 1)
            for token in self.semantic.query(state, count):
                self._mark(token)
        budget = self.k - self.core_size
        if len(self.recency) > 4 * max(budget, 1):  # bounded memory: forget the stalest evidence
            self.recency.keep_newest(2 * budget)

    @property
    def patches_fresh(self) -> bool:
        """Whether a pipelining caller should patch this policy's sets with ``fresh`` (the ``fresh`` setting)."""
        return self.settings.fresh

    def fresh(self, committed: list[int]) -> list[int]:
        """The tail evidence ``committed`` gives at once, without the policy's state: the tokens themselves
        (context) and the corpus successors of the newest, core tokens and repeats left out, in order.
        Reads only tables fixed at construction, so a caller may run it while a worker runs ``observe``."""
        ids = list(committed) if self.settings.context else []
        if committed:
            ids += self.successors.get(committed[-1], ())
        out: list[int] = []
        for token in ids:
            if token not in self._core_set and token not in out:  # a handful of ids: a list is enough
                out.append(token)
        return out

    def served(self, active: torch.Tensor) -> None:
        """The set the drafter actually drafted over this cycle (a pipelined caller serves one computed
        a cycle earlier than the newest): misses, and so drift, are judged against it."""
        self._member.zero_()
        self._member[active] = True

    def active_ids(self) -> torch.Tensor:
        budget = self.k - self.core_size
        tail = torch.tensor(self.recency.newest(budget), dtype=torch.long)  # newest first, ties: lower id
        if self.frequency_fill:
            fill = self.ranked[self.core_size :]  # budget the evidence does not use goes to the next most frequent
            self._scratch[tail] = True  # a mask, not isin: the tail and the fill are each up to K / 2 long
            fill = fill[~self._scratch[fill]][: budget - tail.numel()]
            self._scratch[tail] = False
            active = torch.cat((self.core, tail, fill))
        else:
            active = torch.cat((self.core, tail))
        self.fill_start = self.core_size + tail.numel()  # the evidence ends here (``kept_ids``)
        if self._active is not None and torch.equal(active, self._active):
            return self._active  # the same tensor: the drafter's plan update then costs nothing
        self._active = active
        self._member.zero_()
        self._member[active] = True
        return active

    def kept_ids(self) -> torch.Tensor:
        """The last set ``active_ids`` handed out without its frequency fill: the core and the evidence (all of
        it without ``frequency_fill``)."""
        return self._active[: self.fill_start]

    def close(self) -> None:  # no worker threads: nothing to release
        pass
