"""Drafting split into trunk and head (``bench --breakdown``): the trunk is timed inside the draft
window, the parts still add up to the step, and drafters whose trunk torch cannot see stay one column."""

from __future__ import annotations

import pytest
import torch

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.eval.bench import BenchRow, breakdown_table, step_breakdown
from evospec.runtime.drafter import DrafterKVCache
from evospec.runtime.stats import PooledStats
from evospec.runtime.trunk_clock import TrunkClock, trunk_module
from evospec.testing.tiny import tiny_drafter, tiny_target


@pytest.fixture(scope="module")
def pair():
    model = tiny_target(seed=3)
    return model, tiny_drafter(model, seed=4)


def _row(ms: dict[str, float], method: str = "eagle3") -> BenchRow:
    return BenchRow("code", method, 0.0, 1.0, 0, 1, 8, 4, 2.0, [0.5], 10.0, 1.0, 1.0, True, ms_per_step=ms)


@pytest.mark.parametrize("tree", ["chain", "tree"])
def test_trunk_is_part_of_the_draft_and_the_parts_add_up(pair, tree):
    model, drafter = pair
    generator = SpeculativeGenerator.from_models(model, drafter)
    result = generator.generate([1, 2, 3, 4], DecodeSettings(max_new_tokens=16, draft_tree=tree, draft_depth=3))
    stats = result.stats
    assert stats.draft_split and 0 < stats.trunk_time_s < stats.draft_time_s
    assert not drafter.midlayer._forward_hooks and not drafter.midlayer._forward_pre_hooks  # none left behind
    ms = step_breakdown(PooledStats.of([stats]).ms_per_step, draft_split=True)
    assert "draft" not in ms and ms["trunk"] > 0 and ms["head"] > 0
    assert sum(v for k, v in ms.items() if k != "step") == pytest.approx(ms["step"], rel=1e-9)
    plain = generator.generate([1, 2, 3, 4], DecodeSettings(max_new_tokens=4, use_draft=False)).stats
    assert plain.draft_split and plain.trunk_time_s == plain.draft_time_s == 0.0


def test_the_clock_counts_only_while_entered(pair):
    _, drafter = pair
    module = trunk_module(drafter)
    assert module is drafter.midlayer and trunk_module(object()) is None
    assert not TrunkClock(None).timed and TrunkClock(module).timed
    cache = DrafterKVCache(drafter.config, 8, torch.device("cpu"), drafter.dtype)
    d = drafter.config.target_hidden_size
    call = (torch.randn(1, 2, 3 * d), torch.tensor([[1, 2]]), torch.arange(2)[None], cache, 0,
            torch.ones(2, 2, dtype=torch.bool).tril())
    clock = TrunkClock(module)
    drafter(*call)
    assert clock.seconds == 0.0  # not entered: not counted
    with clock:
        drafter(*call)
    timed = clock.seconds
    drafter(*call)
    assert timed > 0 and clock.seconds == timed and not module._forward_hooks


def test_a_torch_bundle_trunk_is_timed():
    from evospec.runtime.compiled_drafter import eager_compiled
    from evospec.runtime.stages import TrunkStage

    model = tiny_target(seed=5)
    drafter = tiny_drafter(model, seed=6).float()
    reservoir = torch.randn(model.config.vocab_size, drafter.config.hidden_size)
    compiled = eager_compiled(drafter, reservoir, (96,))
    assert isinstance(trunk_module(compiled), TrunkStage)
    result = SpeculativeGenerator.from_models(model, compiled).generate([5, 6, 7], DecodeSettings(max_new_tokens=8))
    assert result.stats.draft_split and 0 < result.stats.trunk_time_s < result.stats.draft_time_s


def test_breakdown_table_splits_drafting_where_it_was_timed():
    ms = {"draft": 3.0, "trunk": 2.0, "target": 5.0, "verdict": 0.5, "cache": 0.25, "retrieval": 0.0, "plan": 0.0,
          "align": 0.0, "step": 10.0}
    split, whole = step_breakdown(ms, draft_split=True), step_breakdown(ms, draft_split=False)
    assert (split["trunk"], split["head"]) == (2.0, 1.0) and "draft" not in split
    assert whole["draft"] == 3.0 and "trunk" not in whole and "head" not in whole
    for parts in (split, whole):
        assert sum(v for k, v in parts.items() if k != "step") == pytest.approx(parts["step"])
        assert parts["other"] == pytest.approx(1.25)
    table = breakdown_table([_row(split), _row(whole, "eagle3-ort")])
    header, *lines = [line for line in table.splitlines() if "code" in line or "trunk" in line]
    assert "trunk" in header and "head" in header and "draft" in header
    assert "2.00" in lines[0] and "1.00" in lines[0] and "-" in lines[1].split()
    assert all("20.0%" in line for line in lines)  # outside the forwards: (10 - 3 - 5) / 10, either way
