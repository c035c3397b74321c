"""EvoSpec's incremental bookkeeping hands out exactly the sets its earlier whole-dict version did.

``ReferencePolicy`` below is a copy of ``EvoSpecPolicy`` before the change (a heap over every stamp
per call, dicts rebuilt by each filter, an unbounded session table). Random observation sequences
under random settings (context on/off, ageing, drift, corpus and session successors, semantic
rows, small K so the tail budget and the memory bound both bind) must give the same active tensor,
element for element and in order, at every step; the stamps must match in content and order too.
The session table's bound is tested on its own: the property test's vocabularies are too small to
reach it (at most ``SESSION_SUCCESSORS`` distinct tokens, far fewer than ``SESSION_KEYS_MIN``).
"""

from __future__ import annotations

import heapq
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.runtime.vocab.evospec_policy import (
    SESSION_KEYS_MIN,
    SESSION_SUCCESSORS,
    DriftSettings,
    EvoSpecPolicy,
    PolicySettings,
)
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.runtime.vocab.recency import RecencyIndex


class ReferencePolicy:
    """``EvoSpecPolicy``'s bookkeeping as it was (core, tail and fill computed the same way)."""

    def __init__(self, k: int, frequencies: TokenFrequencies, vocab_size: int, s: PolicySettings,
                 semantic=None) -> None:
        self.settings, self.k = s, k
        self.core_size = min(k, max(1, int(k * s.core_share)))
        self.ranked = frequencies.ranked(k, vocab_size)
        self.core = self.ranked[: self.core_size]
        self._core_set = set(self.core.tolist())
        self.successors = (frequencies.successors or {}) if s.corpus_successors else {}
        self.semantic = semantic if s.semantic_count > 0 else None
        self.semantic_count = s.semantic_count
        self.drift = s.drift if s.drift.enabled else None
        self._member = torch.zeros(vocab_size, dtype=torch.bool)
        self._active = None
        self.reset([])

    def reset(self, prompt_ids: list[int]) -> None:
        self.step = 0
        self.stamp: dict[int, int] = {}
        self.session_next: dict[int, dict[int, int]] = {}
        self.last = None
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
        if drifted:
            self.drifts += 1
            fresh = self.step - self.drift.keep_steps
            self.stamp = {t: s for t, s in self.stamp.items() if s >= fresh}
        context, session = self.settings.context, self.settings.session_successors
        for token in committed:
            if context:
                self._mark(token)
            if self.last is not None and session:
                self.session_next.setdefault(self.last, {})[token] = self.step
            self.last = token
        if self.last is not None:
            for token in self.successors.get(self.last, ()):
                self._mark(token)
            for token in self.session_next.get(self.last, ()):
                self._mark(token)
        if self.settings.max_age:
            oldest = self.step - self.settings.max_age
            self.stamp = {t: s for t, s in self.stamp.items() if s > oldest}
        if self.semantic is not None and state is not None:
            count = self.semantic_count * (self.drift.boost if drifted else 1)
            for token in self.semantic.query(state, count):
                self._mark(token)
        budget = self.k - self.core_size
        if len(self.stamp) > 4 * max(budget, 1):
            keep = sorted(self.stamp, key=self.stamp.__getitem__, reverse=True)[: 2 * budget]
            self.stamp = {t: self.stamp[t] for t in keep}

    def served(self, active: torch.Tensor) -> None:
        self._member.zero_()
        self._member[active] = True

    def active_ids(self) -> torch.Tensor:
        budget = self.k - self.core_size
        newest = self.stamp if len(self.stamp) <= budget else heapq.nlargest(
            budget, self.stamp, key=lambda t: (self.stamp[t], -t))
        tail = torch.tensor(list(newest), dtype=torch.long)
        fill = self.ranked[self.core_size :]
        fill = fill[~torch.isin(fill, tail)][: budget - tail.numel()]
        active = torch.cat((self.core, tail, fill))
        if self._active is not None and torch.equal(active, self._active):
            return self._active
        self._active = active
        self._member.zero_()
        self._member[active] = True
        return active


class StubSemantic:
    """Rows for a state: the state carries its token ids (deterministic, with repeats and core tokens)."""

    def __init__(self, vocab: int) -> None:
        self.vocab = vocab

    def query(self, state: torch.Tensor, count: int) -> list[int]:
        seeds = state.long().tolist()
        return [(seeds[i % len(seeds)] + 7 * (i // len(seeds))) % self.vocab for i in range(count)]


@st.composite
def sessions(draw):
    """Settings, a frequency table, and a sequence of calls: observe (with or without a state),
    serve the last set (a pipelined caller), or reset with a new prompt."""
    vocab = draw(st.integers(4, SESSION_SUCCESSORS))  # the session table's bound is never reached
    token = st.integers(0, vocab - 1)
    k = draw(st.integers(2, min(vocab, 12)))
    drift = DriftSettings(
        enabled=draw(st.booleans()), fast=draw(st.sampled_from([0.3, 0.5, 1.0])),
        slow=draw(st.sampled_from([0.05, 0.3])), jump=draw(st.sampled_from([0.01, 0.1, 0.3])),
        warmup=draw(st.integers(0, 3)), keep_steps=draw(st.integers(0, 3)),
        boost=draw(st.integers(1, 3)))
    policy = PolicySettings(
        core_share=draw(st.sampled_from([0.25, 0.5, 0.75, 1.0])), context=draw(st.booleans()),
        corpus_successors=draw(st.booleans()), session_successors=draw(st.booleans()),
        semantic_count=draw(st.sampled_from([0, 1, 3])), max_age=draw(st.sampled_from([0, 0, 1, 2, 5])), drift=drift)
    counts = draw(st.lists(st.integers(0, 3), min_size=vocab, max_size=vocab))  # zeros and ties
    successors = draw(st.dictionaries(token, st.lists(token, max_size=5, unique=True), max_size=vocab))
    call = st.one_of(
        st.tuples(st.just("observe"), st.lists(token, min_size=1, max_size=8),
                  st.none() | st.lists(token, min_size=1, max_size=3)),
        st.tuples(st.just("served"), st.none(), st.none()),
        st.tuples(st.just("reset"), st.lists(token, max_size=10), st.none()),
    )
    calls = draw(st.lists(call, min_size=1, max_size=60))
    prompt = draw(st.lists(token, max_size=10))
    return vocab, k, policy, counts, successors, prompt, calls


@settings(max_examples=300, deadline=None)
@given(sessions())
def test_active_sets_equal_the_whole_dict_version(session):
    vocab, k, s, counts, successors, prompt, calls = session
    frequencies = TokenFrequencies(vocab, torch.tensor(counts, dtype=torch.long), 1, "test", successors)
    ours = EvoSpecPolicy(k, frequencies, vocab, s, semantic=StubSemantic(vocab))
    reference = ReferencePolicy(k, frequencies, vocab, s, semantic=StubSemantic(vocab))
    for policy in (ours, reference):
        policy.reset(prompt)
    for kind, tokens, state in calls:
        for policy in (ours, reference):
            if kind == "observe":
                policy.observe(tokens, None if state is None else torch.tensor(state, dtype=torch.float32))
            elif kind == "served":
                policy.served(policy._active if policy._active is not None else policy.core)
            else:
                policy.reset(tokens)
        assert list(ours.stamp.items()) == list(reference.stamp.items())
        mine, theirs = ours.active_ids(), reference.active_ids()
        assert torch.equal(mine, theirs), (mine.tolist(), theirs.tolist())
        assert ours.drifts == reference.drifts
        assert {t: dict(n) for t, n in ours.session_next.items()} == reference.session_next


def _long_session(policy: EvoSpecPolicy, rng: random.Random, vocab: int, steps: int) -> None:
    """Zipf-like tokens: a few very frequent ones are followed by hundreds of distinct tokens."""
    weights = [1.0 / (rank + 1) for rank in range(vocab)]
    for _ in range(steps):
        policy.observe(rng.choices(range(vocab), weights, k=rng.randint(1, 6)))


def test_session_table_stays_bounded_over_a_long_session():
    vocab, k = 20_000, 64
    frequencies = TokenFrequencies(vocab, torch.arange(vocab, 0, -1), 1, "test", {})
    policy = EvoSpecPolicy(k, frequencies, vocab, PolicySettings(corpus_successors=False, semantic_count=0))
    assert policy.session_keys == SESSION_KEYS_MIN  # 2 * 64 < the floor
    _long_session(policy, random.Random(0), vocab, 6000)
    assert len(policy.session_next) == policy.session_keys  # reached, and held there
    assert max(len(n) for n in policy.session_next.values()) == SESSION_SUCCESSORS
    assert len(policy.stamp) <= 4 * (k - policy.core_size)  # the tail's own bound still holds
    assert policy.active_ids().numel() == k


def test_session_table_keeps_the_most_recent_evidence():
    vocab, k = 5000, 1000  # keys bound: 2 * 1000 = 2000
    frequencies = TokenFrequencies(vocab, torch.arange(vocab, 0, -1), 1, "test", {})
    policy = EvoSpecPolicy(k, frequencies, vocab, PolicySettings(corpus_successors=False, semantic_count=0))
    assert policy.session_keys == 2000
    hub = 0
    followers = list(range(1000, 1000 + SESSION_SUCCESSORS + 8))
    for follower in followers:  # the hub is followed by more distinct tokens than are kept
        policy.observe([hub, follower])
    assert list(policy.session_next[hub]) == followers[8:]  # the stalest went first, order kept
    policy.observe([hub])  # the hub is newest: its kept successors are stamped now
    assert all(policy.stamp[t] == policy.step for t in followers[8:])
    assert all(policy.stamp.get(t, -1) < policy.step for t in followers[:8])
    for token in range(2000, 2000 + 2100):  # 2099 new keys, each followed by the next
        policy.observe([token])
    assert len(policy.session_next) == 2000
    assert hub not in policy.session_next and 4098 in policy.session_next  # the least recently followed left
    assert next(iter(policy.session_next)) == 2000 + 2100 - 1 - 2000


def test_recency_index_refuses_an_older_stamp():
    index = RecencyIndex()
    index.mark(3, 5)
    with pytest.raises(ValueError, match="older than the newest"):
        index.mark(4, 4)
