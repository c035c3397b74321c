"""Metrics count what users get: tau over emitted tokens, rejected-choice coverage, plan-update
costs, and the replay handing policies exactly the state decoding would."""

from __future__ import annotations

import pytest
import torch

from evospec import DecodeSettings
from evospec.bundle.compile import compile_bundle
from evospec.eval.replay import decoding_state, text_coverage
from evospec.passes.base import CompileSettings
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.stats import DecodeStats, PooledStats
from evospec.runtime.vocab.base import StaticPolicy
from evospec.train.demo_pair import ASSET_DIR

TARGET, DRAFTER = ASSET_DIR / "target", ASSET_DIR / "drafter"
DEPTH = 5


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("metrics") / "bundle"
    compile_bundle(TARGET, DRAFTER, out, CompileSettings(backend="torch", buckets=(64, 512)))
    return out


def test_tau_counts_only_emitted_tokens():
    generator = SpeculativeGenerator.from_paths(TARGET, DRAFTER)
    prompt = generator.encode("def parse(self, text):\n")
    truncated = 0
    for n in range(6, 30):
        stats = generator.generate(prompt, DecodeSettings(max_new_tokens=n, draft_tree="chain", draft_depth=DEPTH)).stats
        assert stats.new_tokens == n and sum(stats.step_tokens) == n - 1  # the prefill's token belongs to no step
        assert stats.mean_accepted_length == pytest.approx((n - 1) / stats.steps)
        assert all(e <= a + 1 for e, a in zip(stats.step_tokens, stats.accepted_lengths))
        truncated += stats.step_tokens[-1] < stats.accepted_lengths[-1] + 1
    assert truncated > 0  # some runs did stop inside a step: the case the old formula over-counted


def test_emittable_stops_at_eos_and_budget():
    emittable = SpeculativeGenerator._emittable
    assert emittable([5, 6, 7], emitted=1, eos={6}, max_new_tokens=10) == 2  # up to and including EOS
    assert emittable([5, 6, 7], emitted=8, eos=set(), max_new_tokens=10) == 2
    assert emittable([5, 6, 7], emitted=1, eos=set(), max_new_tokens=10) == 3


def test_pooled_tau_is_the_mean_over_all_steps():
    a, b = DecodeStats(steps=2, step_tokens=[1, 5]), DecodeStats(steps=1, step_tokens=[3])
    assert PooledStats.of([a, b]).mean_accepted_length == pytest.approx(3.0)  # not the mean of the two means (2.5)


def test_rejected_choice_coverage(bundle):
    generator = SpeculativeGenerator.from_bundle(bundle, TARGET)
    prompt = generator.encode("class Parser:\n")
    settings = DecodeSettings(max_new_tokens=40, draft_tree="chain", draft_depth=DEPTH)
    generator.policy = StaticPolicy("full", torch.arange(generator.drafter.config.vocab_size))
    stats = generator.generate(prompt, settings).stats
    rejecting = sum(1 for a, e in zip(stats.accepted_lengths, stats.step_tokens) if a < DEPTH and e == a + 1)
    assert stats.rejected_choice_total == rejecting > 0 and stats.rejected_choice_coverage == 1.0
    plain = generator.generate(prompt, DecodeSettings(max_new_tokens=40, use_draft=False)).token_ids
    never = next(t for t in range(generator.drafter.config.vocab_size) if t not in set(plain))
    generator.policy = StaticPolicy("one", torch.tensor([never]))  # holds no token the target chooses here
    stats = generator.generate(prompt, settings).stats
    assert stats.rejected_choice_total > 0 and stats.rejected_choice_coverage == 0.0


def test_an_unchanged_set_costs_nothing_and_a_change_only_its_delta(bundle):
    generator = SpeculativeGenerator.from_bundle(bundle, TARGET)
    drafter = generator.drafter
    ids = torch.arange(200)
    drafter.set_active(ids)
    plan = drafter.plan
    drafter.set_active(ids)  # the same tensor, as static policies hand it back
    assert drafter.moved_rows == 0 and drafter.plan is plan
    drafter.set_active(ids.clone())  # the same set in a new tensor: nothing moves either
    assert drafter.moved_rows == 0 and drafter.plan is plan
    changed = ids.clone()
    changed[[3, 50, 199]] = torch.tensor([300, 301, 302])
    drafter.set_active(changed)
    assert drafter.moved_rows == 3
    assert set(drafter.plan.ids[:200].tolist()) == set(changed.tolist())
    assert torch.equal(drafter.active_rows.rows, drafter.active_rows.reservoir[drafter.plan.ids])
    generator.policy = StaticPolicy("set", changed)
    prompt = generator.encode("def ")
    generator.generate(prompt, DecodeSettings(max_new_tokens=20))
    again = generator.generate(prompt, DecodeSettings(max_new_tokens=20)).stats
    assert again.active_rows_moved == 0 and again.steps > 1


def test_replay_hands_policies_the_state_decoding_would():
    class Recording:
        name = "recording"

        def __init__(self):
            self.seen = []

        def reset(self, prompt_ids):
            pass

        def active_ids(self):
            return torch.tensor([0])

        def observe(self, committed, state=None):
            self.seen.append((committed[0], None if state is None else int(state[0])))

    ids = list(range(100, 120))
    states = torch.arange(len(ids) - 1, dtype=torch.float32)[:, None]  # states[j] names its own position j
    policy = Recording()
    text_coverage(policy, [ids], vocab_size=200, prompt_tokens=4, states=[states])
    # a chunk starting at position p is observed with the root call's state at p - 2 (it predicted token p)
    assert policy.seen == [(ids[p], p - 2) for p in range(4, len(ids), 3)]
    assert decoding_state(states, 1) is None


def test_policy_names_expand_over_sizes_and_lists(tmp_path):
    from evospec.core.errors import SettingsError
    from evospec.eval.profile_vocab import build_policies, expand_policies, policy_family, policy_size
    from evospec.runtime.vocab import PolicyInputs
    from evospec.runtime.vocab.frequencies import TokenFrequencies

    names = expand_policies(["eagle3", "frspec:K@general", "frspec:K", "evospec:K:sync"], [64, 128])
    assert names == ["full", "eagle3", "frspec:64@general", "frspec:128@general", "frspec:64", "frspec:128",
                     "evospec:64:sync", "evospec:128:sync"]
    assert [policy_family(n) for n in names[2:4]] == ["frspec:K@general"] * 2
    assert [policy_size(n) for n in names] == [None, None, 64, 128, 64, 128, 64, 128]
    counts = torch.arange(512, 0, -1)
    general, domain = tmp_path / "g.json", tmp_path / "d.json"
    TokenFrequencies(512, counts, 1, "general").save(general)
    TokenFrequencies(512, counts.flip(0), 1, "domain").save(domain)
    inputs = PolicyInputs(512, torch.arange(384))
    built = build_policies(["frspec:64@general", "frspec:64"], inputs, str(domain), {"general": str(general)}, None)
    assert set(built["frspec:64@general"].active_ids().tolist()) == set(range(64))
    assert set(built["frspec:64"].active_ids().tolist()) == set(range(448, 512))
    with pytest.raises(SettingsError, match="frequency list 'web'"):
        build_policies(["frspec:64@web"], inputs, str(domain), {"general": str(general)}, None)
