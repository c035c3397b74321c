"""The speculation gate (``--plain-fallback``): its rule, and decoding through plain steps.

A plain step verifies the newest token alone and drafts nothing; the drafter then takes those positions with
the next speculative step, as it takes a prompt. The rule's tests feed the gate step outcomes; the decoding
tests script which steps are plain (``ScriptedGate``) so that runs compare step by step.
"""

from __future__ import annotations

import pytest

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.runtime import generator as generator_module
from evospec.runtime.speculation_gate import GateSettings, SpeculationGate
from evospec.testing.scripted_gate import ScriptedGate
from evospec.train.demo_pair import ASSET_DIR

SPECULATIVE, PLAIN = True, False


def run_gate(gate: SpeculationGate, steps: int, outcome, first_steps: tuple[int, ...] = (0,)) -> list[bool]:
    """The gate's choices over ``steps`` steps, each observed as ``outcome(speculative) -> (tokens, ms)``."""
    choices = []
    for i in range(steps):
        speculative = gate.speculate(first=i in first_steps)
        choices.append(speculative)
        gate.observe(speculative, *outcome(speculative))
    return choices


def test_gate_warms_up_then_probes_plain_then_follows_the_faster_kind():
    settings = GateSettings(warmup=4, plain_probes=2, explore_every=5, recheck_every=7, confidence=0.0)
    fast = run_gate(SpeculationGate(settings), 30, lambda s: (3, 10.0) if s else (1, 7.0))  # 0.30 against 0.14 / ms
    assert fast[:7] == [SPECULATIVE] * 5 + [PLAIN] * 2  # the request's first step, 4 of warm-up, 2 plain probes
    assert fast[7:] == ([SPECULATIVE] * 6 + [PLAIN]) * 3 + [SPECULATIVE] * 2  # a plain recheck every 7th step
    slow = run_gate(SpeculationGate(settings), 30, lambda s: (1, 18.0) if s else (1, 7.0))
    assert slow[:7] == [SPECULATIVE] * 5 + [PLAIN] * 2
    assert slow[7:] == ([PLAIN] * 4 + [SPECULATIVE]) * 4 + [PLAIN] * 3  # speculation explored every 5th step


def test_gate_follows_a_change_of_text():
    """Speculation stops paying half way (the drafter is no longer accepted): the gate turns to plain steps
    within a window, and back when exploration sees speculation pay again."""
    settings = GateSettings(window=4, warmup=2, plain_probes=1, explore_every=3, recheck_every=50, confidence=0.0)
    gate = SpeculationGate(settings)
    phase = {"tokens": 4}
    choices = run_gate(gate, 20, lambda s: (phase["tokens"], 12.0) if s else (1, 7.0))
    assert choices[-10:] == [SPECULATIVE] * 10
    phase["tokens"] = 1
    later = run_gate(gate, 30, lambda s: (phase["tokens"], 12.0) if s else (1, 7.0), first_steps=())
    assert later[:4] == [SPECULATIVE] * 4 and later.count(PLAIN) >= 15 and later[-3:].count(PLAIN) >= 2
    phase["tokens"] = 4
    back = run_gate(gate, 30, lambda s: (phase["tokens"], 12.0) if s else (1, 7.0), first_steps=())
    assert back[-10:] == [SPECULATIVE] * 10


def test_a_new_request_measures_speculation_afresh_and_keeps_plains_cost():
    settings = GateSettings(warmup=3, plain_probes=2, explore_every=100, recheck_every=100, confidence=0.0)
    gate = SpeculationGate(settings)
    run_gate(gate, 12, lambda s: (1, 20.0) if s else (1, 7.0))  # plain ahead at the end of request 1
    assert gate.speculation_ahead() is False
    second = run_gate(gate, 6, lambda s: (4, 12.0) if s else (1, 7.0))  # request 2: the drafter is accepted
    assert second == [SPECULATIVE] * 6  # the first, 3 of warm-up, no new plain probes, and speculation is ahead
    assert gate.rate(SPECULATIVE) == pytest.approx(4 / 12)


def test_confidence_keeps_speculating_while_its_few_steps_are_uncertain():
    """Two speculative steps emitting 1 and 2 tokens in 12 ms each (0.125 / ms) against plain's 1 in 7 ms (0.143 / ms):
    by the mean plain is ahead; with one standard error of head room (2 tokens a step: 0.167 / ms) speculation is."""
    for confidence, ahead in ((0.0, False), (1.0, True)):
        gate = SpeculationGate(GateSettings(warmup=2, plain_probes=1, confidence=confidence))
        gate.observe(SPECULATIVE, 1, 12.0)
        gate.observe(SPECULATIVE, 2, 12.0)
        gate.observe(PLAIN, 1, 7.0)
        assert gate.speculation_ahead() is ahead, confidence


def test_gate_settings_are_checked():
    with pytest.raises(ValueError, match="must be >= 1"):
        GateSettings(window=0)
    with pytest.raises(ValueError, match="confidence"):
        GateSettings(confidence=-1.0)


def _record_trees(monkeypatch) -> list[list[int]]:
    """The draft tree's tokens at every greedy verification, in order."""
    trees: list[list[int]] = []
    verify = generator_module.verify_greedy

    def recording(tree, logits):
        trees.append(tree.tokens.tolist())
        return verify(tree, logits)

    monkeypatch.setattr(generator_module, "verify_greedy", recording)
    return trees


def _trees_by_position(trees: list[list[int]], step_tokens: list[int]) -> dict[int, list[int]]:
    """Each step's tree keyed by the new tokens emitted before it (plain steps' empty trees left out)."""
    position, out = 0, {}
    for tree, emitted in zip(trees, step_tokens, strict=True):
        if tree:
            out[position] = tree
        position += emitted
    return out


def test_plain_steps_keep_greedy_output_and_the_drafters_trees(monkeypatch):
    """Greedy output through plain steps equals the target's own, and wherever a speculative step after plain
    steps starts at a position a speculate-every-step run also drafts from, the trees are the same: the
    drafter took the plain steps' positions with its next call, none lost or repeated (dropping the plain
    step's pair, tried, changes the trees)."""
    generator = SpeculativeGenerator.from_paths(ASSET_DIR / "target", ASSET_DIR / "drafter")
    prompt = list(range(5, 37))
    s = DecodeSettings(max_new_tokens=64, draft_tree="tree", draft_depth=4, draft_topk=3, draft_tokens=8)
    plain = generator.generate(prompt, DecodeSettings(max_new_tokens=64, use_draft=False)).token_ids
    trees = _record_trees(monkeypatch)
    every = generator.generate(prompt, s)
    every_trees = _trees_by_position(list(trees), every.stats.step_tokens)
    trees.clear()
    generator.gate = ScriptedGate((PLAIN, PLAIN, SPECULATIVE, PLAIN, SPECULATIVE, SPECULATIVE))
    gated = generator.generate(prompt, DecodeSettings(**{**s.__dict__, "plain_fallback": True}))
    gated_trees = _trees_by_position(list(trees), gated.stats.step_tokens)
    assert every.token_ids == plain and gated.token_ids == plain
    assert gated.stats.plain_steps >= 10 and gated.stats.plain_steps == sum(not t for t in trees)
    shared = sorted(set(every_trees) & set(gated_trees) - {0})  # 0: the first step, before any plain step
    assert len(shared) >= 3, shared
    assert all(gated_trees[p] == every_trees[p] for p in shared)
    assert sum(gated.stats.accepted_lengths) > 0


def test_plain_fallback_off_speculates_every_step():
    generator = SpeculativeGenerator.from_paths(ASSET_DIR / "target", ASSET_DIR / "drafter")
    generator.gate = ScriptedGate((PLAIN,))
    result = generator.generate(list(range(5, 20)), DecodeSettings(max_new_tokens=24, draft_tree="chain"))
    assert result.stats.plain_steps == 0 and all(a >= 0 for a in result.stats.accepted_lengths)
    assert result.stats.draft_tokens_proposed == 5 * result.stats.steps


def test_plain_steps_leave_the_cost_model_and_the_shape_chooser_alone():
    """With ``--draft-budget auto`` on a tree, a plain step drafts nothing: the cost model and the chain-or-tree
    chooser see only the speculative steps, and the output is still the target's own."""
    generator = SpeculativeGenerator.from_paths(ASSET_DIR / "target", ASSET_DIR / "drafter")
    prompt = list(range(5, 37))
    plain = generator.generate(prompt, DecodeSettings(max_new_tokens=48, use_draft=False)).token_ids
    generator.gate = ScriptedGate((PLAIN, SPECULATIVE, PLAIN))
    s = DecodeSettings(max_new_tokens=48, draft_tree="tree", draft_depth=4, draft_topk=3, draft_tokens=8,
                       draft_budget="auto", plain_fallback=True)
    result = generator.generate(prompt, s)
    speculative = result.stats.steps - result.stats.plain_steps
    assert result.token_ids == plain and result.stats.plain_steps >= 8
    assert sum(generator.shapes.chosen.values()) == speculative
    assert len(generator.step_costs._steps) == generator.shapes.chosen["tree"]  # it prices the tree's steps only
