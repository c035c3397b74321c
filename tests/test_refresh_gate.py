"""The refresh gate (``refresh_gap``, runtime/vocab/refresh_gate.py): a greedy request's routed set is chosen again
only after a committed token outside it, or every ``gap`` cycles; sampled requests route every cycle; a kept set is
the very tensor the last route returned (the drafter's plan update then costs nothing); greedy output stays the
target's own while the gate keeps and changes sets."""

from __future__ import annotations

import pytest
import torch

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.core.errors import SettingsError
from evospec.runtime.vocab import PolicyInputs, make_policy
from evospec.runtime.vocab.evospec_settings import EvoSpecConfig, PolicySettings
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.runtime.vocab.refresh_gate import RefreshGate


class CountingRouted:
    """A routed policy whose every route returns a new set (ids ``10 n .. 10 n + 9`` at the n-th route)."""

    name = "counting"

    def __init__(self) -> None:
        self.routes, self.observed = 0, []

    def reset(self, prompt_ids):
        self.routes = 0

    def observe(self, committed, state=None):
        self.observed.append(list(committed))

    def route(self, state):
        self.routes += 1
        return torch.arange(10 * self.routes, 10 * self.routes + 10)


def _gate(gap: int, greedy: bool = True) -> tuple[RefreshGate, CountingRouted]:
    inner = CountingRouted()
    gate = RefreshGate(inner, gap)
    gate.decoding(greedy)
    gate.reset([1, 2])
    return gate, inner


def test_greedy_keeps_the_set_until_a_miss():
    gate, inner = _gate(gap=100)
    state = torch.zeros(4)
    first = gate.route(state)  # ids 10..19
    for committed in ([10, 11], [19], [12, 13, 14]):  # every committed token in the set: nothing to refresh
        gate.observe(committed)
        assert gate.route(state) is first
    assert inner.routes == 1 and gate.skips == 3
    gate.observe([12, 55])  # 55 is outside the set: the next cycle routes again
    second = gate.route(state)
    assert inner.routes == 2 and torch.equal(second, torch.arange(20, 30))
    gate.observe([25])
    assert gate.route(state) is second
    assert inner.observed == [[10, 11], [19], [12, 13, 14], [12, 55], [25]]  # the inner policy saw every cycle


def test_greedy_routes_every_gap_cycles_without_a_miss():
    gate, inner = _gate(gap=3)
    state = torch.zeros(4)
    for _ in range(7):
        gate.route(state)
        gate.observe([10 * inner.routes])  # always in the current set
    assert inner.routes == 3  # cycles 1, 4 and 7


def test_hold_keeps_a_set_only_after_cycles_in_a_row_without_a_miss():
    inner = CountingRouted()
    gate = RefreshGate(inner, gap=100, hold=2)
    gate.decoding(True)
    gate.reset([1])
    state = torch.zeros(4)
    routed = []
    for committed in ([10], [999], [20], [20], [30], [30], [999], [40]):
        before = inner.routes
        current = gate.route(state)
        routed.append(inner.routes > before)
        gate.observe([int(current[0])] if committed != [999] else committed)
    # a route at once, and again after one hit (held 1 < 2); the miss routes, then one more hit routes; two hits in a
    # row keep the set (cycles 5-7) until the next miss
    assert routed == [True, True, True, True, False, False, False, True]


def test_sampled_requests_route_every_cycle_and_reset_routes_afresh():
    gate, inner = _gate(gap=100, greedy=False)
    for _ in range(4):
        gate.route(torch.zeros(4))
        gate.observe([10 * inner.routes])
    assert inner.routes == 4 and gate.skips == 0
    gate.decoding(True)
    gate.reset([3])
    gate.route(torch.zeros(4))
    assert inner.routes == 1  # a new sequence routes at once


def test_gap_setting_reaches_the_policy_and_is_checked():
    labels = torch.arange(200) // 20
    from evospec.runtime.vocab.mass_index import MassIndex

    inputs = PolicyInputs(200, torch.arange(100), mass=MassIndex(labels, 3 * torch.eye(10), torch.full((10,), 20.0).log(),
                                                                  torch.zeros(10)))
    counts = torch.zeros(200, dtype=torch.long)
    counts[:40] = torch.arange(40, 0, -1)
    table = TokenFrequencies(200, counts, 1, "unit", successors={})
    config = EvoSpecConfig.builtin()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: table))
        gated = make_policy("evospec:40:sync", inputs, "f", evospec=config)  # the chosen settings
        shorter = make_policy("evospec:40:refresh-4-hold-0:sync", inputs, "f", evospec=config)
        every = make_policy("evospec:40:no-refresh-gate:sync", inputs, "f", evospec=config)
    assert isinstance(gated, RefreshGate) and (gated.gap, gated.hold) == (16, 4)
    assert isinstance(shorter, RefreshGate) and (shorter.gap, shorter.hold) == (4, 0)
    assert not isinstance(every, RefreshGate) and hasattr(every, "route")  # gap 1: no gate at all
    with pytest.raises(SettingsError, match="refresh_gap must be >= 1"):
        PolicySettings(refresh_gap=0)
    with pytest.raises(ValueError, match="refresh gap"):
        RefreshGate(CountingRouted(), 0)
    with pytest.raises(SettingsError, match="refresh_hold >= 0"):
        PolicySettings(refresh_gap=4, refresh_hold=-1)


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    from evospec.bundle.compile import compile_bundle
    from evospec.passes.base import CompileSettings
    from evospec.train.demo_pair import ASSET_DIR

    work = tmp_path_factory.mktemp("refresh-gate")
    counts = torch.zeros(512, dtype=torch.long)
    counts[:200] = torch.arange(200, 0, -1)
    TokenFrequencies(512, counts, 1, "unit", successors={}).save(work / "freq.json")
    compile_bundle(ASSET_DIR / "target", ASSET_DIR / "drafter", work / "bundle",
                   CompileSettings(backend="torch", buckets=(64, 512), index_dims=0, mass_clusters=32))
    return work / "bundle", ASSET_DIR / "target", work / "freq.json"


def test_greedy_output_is_the_targets_while_the_gate_keeps_and_changes_sets(demo_bundle):
    bundle, target, freq = demo_bundle
    generator = SpeculativeGenerator.from_bundle(bundle, target, vocab="evospec:96:hold-0", frequencies=freq)
    gate = generator.policy
    assert isinstance(gate, RefreshGate)
    s = DecodeSettings(max_new_tokens=64, draft_tree="chain", draft_depth=5)
    plain = SpeculativeGenerator.from_paths(target)
    for text in ("def parse(self, text):\n    ", "The court held that the"):
        prompt = generator.encode(text)
        result = generator.generate(prompt, s)
        assert result.token_ids == plain.generate(prompt, DecodeSettings(max_new_tokens=64, use_draft=False)).token_ids
    assert gate.skips > 0 and gate.routes > 2  # the gate kept sets and routed again after misses
    generator.policy.close()
