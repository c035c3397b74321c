"""EvoSpec's settings and its combined method (``evospec:K+align``): the config file mirrors the
built-in settings, bad files fail clearly, every ablation switch changes what it claims, and
decoding stays exact while the vocabulary and the head rows change every cycle."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.core.errors import SettingsError
from evospec.runtime.align.feedback import CycleFeedback
from evospec.runtime.align.head_aligner import AlignSettings, HeadAligner
from evospec.runtime.align.methods import make_evospec_aligner
from evospec.runtime.vocab import PolicyInputs, make_policy, split_align
from evospec.runtime.vocab.evospec_policy import EvoSpecPolicy
from evospec.runtime.vocab.evospec_settings import VARIANTS, DriftSettings, EvoSpecConfig, PolicySettings
from evospec.runtime.vocab.frequencies import TokenFrequencies

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "evospec.toml"


def _frequencies(vocab: int = 200, successors: dict | None = None) -> TokenFrequencies:
    counts = torch.zeros(vocab, dtype=torch.long)
    counts[:40] = torch.arange(40, 0, -1)  # ids 0..39 are frequent, 0 the most
    return TokenFrequencies(vocab, counts, 1, "unit", successors={} if successors is None else successors)


def test_config_file_mirrors_the_builtin_settings():
    from_file, builtin = EvoSpecConfig.load(CONFIG), EvoSpecConfig.builtin()
    assert from_file.chosen == builtin.chosen and from_file.variants == builtin.variants
    for name, override in VARIANTS.items():  # each variant changes exactly what it names, nothing else
        variant = builtin.variant(name)
        changed = {f.name for f in dataclasses.fields(variant) if getattr(variant, f.name) != getattr(builtin.chosen, f.name)}
        assert changed == set(override), name


@pytest.mark.parametrize(("text", "message"), [
    ("[policy]\ncore_shar = 0.5\n", "unknown keys ['core_shar']"),
    ("[policy]\ncore_share = 'half'\n", "core_share must be float"),
    ("[policy]\ncore_share = 1.5\n", "core_share must be in (0, 1]"),
    ("[policy]\nrefresh_gap = 0\n", "evospec.toml.policy: refresh_gap must be >= 1 cycle"),
    ("[align]\nbatch = 2.5\n", "batch must be int"),
    ("align_rows = 'some'\n", "align_rows must be 'retrieved' or 'all'"),
    ("[variants.sync]\npolicy = { context = false }\n", "reserved"),
    ("[policy\n", "not valid TOML"),
])
def test_bad_config_files_fail_with_the_key_named(tmp_path, text, message):
    path = tmp_path / "evospec.toml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        EvoSpecConfig.load(path)
    with pytest.raises(SettingsError, match="does not exist"):
        EvoSpecConfig.load(tmp_path / "missing.toml")


def test_policy_names_select_variants_and_alignment():
    inputs = PolicyInputs(200, torch.arange(100), mass=_mass_index())
    config = EvoSpecConfig.builtin()
    freq = _frequencies()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: freq))
        assert make_policy("evospec:40:sync", inputs, "f", evospec=config).settings == config.chosen.policy
        variant = make_policy("evospec:40:core-25", inputs, "f", evospec=config)  # mass-routed, pipelined
        pipelined = variant.inner.inner  # the refresh gate holds the mass fill, which holds the worker
        assert pipelined.inner.settings.core_share == 0.25 and pipelined.inner.core_size == 10
        variant.close()
        synced = make_policy("evospec:40:core-25:sync", inputs, "f", evospec=config)  # the variant, unpipelined
        assert isinstance(synced.inner.inner, EvoSpecPolicy) and synced.inner.inner.core_size == 10
        with pytest.raises(SettingsError, match="variant 'nope' is not in built-in settings"):
            make_policy("evospec:40:nope", inputs, "f", evospec=config)
    assert split_align("evospec:40:no-drift+align") == ("evospec:40:no-drift", True)
    assert split_align("frspec:40") == ("frspec:40", False)
    with pytest.raises(SettingsError, match="only suffix"):
        split_align("evospec:40+osd")
    assert config.for_policy("evospec:40:no-curriculum").align.curriculum is False
    assert config.chosen.align.curriculum_greedy is False
    assert config.for_policy("evospec:40:curriculum-greedy").align.curriculum_greedy is True
    assert config.for_policy("frspec:40@general") == config.chosen


def _mass_index():
    from evospec.runtime.vocab.mass_index import MassIndex

    labels = torch.arange(200) // 20  # clusters of 20 consecutive ids; centre i = 3 e_i
    return MassIndex(labels, 3 * torch.eye(10), torch.full((10,), 20.0).log(), torch.zeros(10))


def _run(policy: EvoSpecPolicy, steps: list[list[int]], state=None) -> set[int]:
    policy.reset([])
    for committed in steps:
        policy.active_ids()
        policy.observe(committed, state)
    return set(policy.active_ids().tolist())


def test_core_share_sets_the_core_size():
    for share, core in ((0.25, 10), (0.5, 20), (1.0, 40)):
        policy = EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(core_share=share))
        assert policy.core_size == core and policy.core.tolist() == list(range(core))
    only = EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(core_share=1.0))
    assert _run(only, [[150, 151]]) == set(range(40))  # no tail: FR-Spec over the same list


def test_context_switch_stamps_committed_tokens():
    on = EvoSpecPolicy(40, _frequencies(), 200)
    off = EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(context=False))
    assert {150, 151} <= _run(on, [[150, 151]]) and not {150, 151} & _run(off, [[150, 151]])


def test_corpus_successor_switch():
    freq = _frequencies(successors={150: [160, 161]})
    on = EvoSpecPolicy(40, freq, 200)
    off = EvoSpecPolicy(40, freq, 200, PolicySettings(corpus_successors=False))
    assert {160, 161} <= _run(on, [[150]]) and not {160, 161} & _run(off, [[150]])


def test_session_successor_switch():
    def seen(settings: PolicySettings) -> set[int]:
        # 170 followed 150 earlier; later 150 recurs after 170 has aged out of the tail's recency window
        policy = EvoSpecPolicy(24, _frequencies(), 200, settings)  # tail of 12
        return _run(policy, [[150, 170]] + [[100 + i] for i in range(12)] + [[150]])

    assert 170 in seen(PolicySettings()) and 170 not in seen(PolicySettings(session_successors=False))


class _FixedIndex:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def query(self, state, count):
        self.calls.append(count)
        return list(range(180, 180 + count))


def test_semantic_count_switch():
    index = _FixedIndex()
    on = EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(semantic_count=3), semantic=index)
    assert {180, 181, 182} <= _run(on, [[1]], state=torch.zeros(4)) and index.calls == [3]
    off = EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(semantic_count=0), semantic=index)
    assert 180 not in _run(off, [[1]], state=torch.zeros(4)) and index.calls == [3]  # never queried


def test_semantic_greedy_switch():
    """Greedy requests skip the semantic query unless ``semantic_greedy``; sampled ones always query. The kind reaches
    the policy through the pipelined worker and the mass fill as the decoding loop tells it (``decoding``)."""
    for greedy, semantic_greedy, queried in ((True, False, False), (False, False, True), (True, True, True)):
        index = _FixedIndex()
        policy = EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(semantic_count=3, semantic_greedy=semantic_greedy),
                               semantic=index)
        policy.decoding(greedy)
        assert (180 in _run(policy, [[1]], state=torch.zeros(4))) == queried and (index.calls == [3]) == queried
    inputs = PolicyInputs(200, torch.arange(100), semantic=_FixedIndex(), mass=_mass_index())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: _frequencies()))
        routed = make_policy("evospec:40", inputs, "f")  # the gate, the mass fill, the worker, the policy
    routed.decoding(True)
    assert routed.inner.inner.inner._greedy is True
    routed.decoding(False)
    assert routed.inner.inner.inner._greedy is False
    routed.close()


def test_target_top_switch():
    """Verification feedback: the target's top ids at the verified positions enter the tail, up to
    ``target_top`` per position, and only when the switch is on."""
    top = torch.tensor([[150, 151, 152], [160, 161, 162]])  # two verified positions, the target's top 3
    on = EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(target_top=2, context=False))
    on.reset([])
    on.observe([1, 2], None, top)
    active = set(on.active_ids().tolist())
    assert {150, 151, 160, 161} <= active and not {152, 162} & active
    off = EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(context=False))
    off.reset([])
    off.observe([1, 2], None, top)
    assert off.target_top == 0 and not {150, 151, 160, 161} & set(off.active_ids().tolist())
    with pytest.raises(SettingsError, match="target_top"):
        PolicySettings(target_top=-1)


def test_fresh_switch_patches_the_pipelined_set_with_the_newest_tokens():
    """The worker's set is a cycle old; ``fresh`` puts the newest committed token and its corpus
    successors in it on the decoding thread, and the set stays K distinct ids."""
    from evospec.runtime.vocab.pipelined import PipelinedPolicy

    freq = _frequencies(successors={150: [160, 161, 3]})  # 3 is a core token: never patched in
    for fresh in (False, True):
        policy = PipelinedPolicy(EvoSpecPolicy(40, freq, 200, PolicySettings(fresh=fresh)))
        policy.reset([])
        policy.active_ids()
        policy.observe([150])
        active = policy.active_ids()  # the worker's set still predates the observation
        assert active.numel() == 40 and torch.unique(active).numel() == 40
        assert ({150, 160, 161} <= set(active.tolist())) == fresh and 3 in active.tolist()
        policy.close()


def test_route_semantic_switch_adds_the_roots_nearest_rows():
    """Routed: the index is queried with the state handed to ``route`` (this cycle's root), and its rows
    take the places of the set's last entries, never the core's; without the switch nothing routes."""
    index = _FixedIndex()
    inputs = PolicyInputs(200, torch.arange(100), semantic=index)
    config = EvoSpecConfig.builtin()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: _frequencies()))
        routed = make_policy("evospec:40:route-semantic-1024:sync", inputs, "f", evospec=config)
        plain = make_policy("evospec:40:frequency-fill:sync", inputs, "f", evospec=config)
        with pytest.raises(SettingsError, match="has none"):
            make_policy("evospec:40:route-semantic-1024", PolicyInputs(200, torch.arange(100)), "f", evospec=config)
    assert hasattr(routed, "route") and not hasattr(plain, "route")
    routed.reset([])
    index.calls.clear()
    active = routed.route(torch.zeros(4))
    assert index.calls == [1024] and active.numel() == 40 and torch.unique(active).numel() == 40
    assert set(range(20)) <= set(active.tolist())  # the core stays
    assert set(range(180, 200)) <= set(active.tolist())  # the index's rows fill the tail (20 places)
    with pytest.raises(SettingsError, match="route_semantic"):
        PolicySettings(route_semantic=-1)


def test_mass_fill_switch_fills_the_tail_from_the_roots_clusters():
    """With ``mass_fill`` the tail budget the evidence leaves goes to the cluster the root state points at
    (routed, between trunk and head), not to the next most frequent ids; the core and evidence stay; a
    bundle without a mass index is a clear error; without the switch nothing routes."""
    index = _mass_index()
    inputs = PolicyInputs(200, torch.arange(100), mass=index)
    config = EvoSpecConfig.builtin()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: _frequencies()))
        routed = make_policy("evospec:40:sync", inputs, "f", evospec=config)
        plain = make_policy("evospec:40:frequency-fill:sync", inputs, "f", evospec=config)
        with pytest.raises(SettingsError, match="no mass index"):
            make_policy("evospec:40", PolicyInputs(200, torch.arange(100)), "f", evospec=config)
    assert hasattr(routed, "route") and not hasattr(plain, "route")
    for policy in (routed, plain):
        policy.reset([120])
    state = torch.zeros(10)
    state[8] = 1.0  # the cluster of ids 160..179
    active = set(routed.route(state).tolist())
    assert len(active) == 40 and set(range(20)) | {120} <= active
    assert active - set(range(20)) - {120} == set(range(160, 179))  # 19 places, the root's cluster in id order
    assert set(plain.active_ids().tolist()) == set(range(39)) | {120}  # frequency fill: ids 20..38
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SettingsError, match="choose one"):
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: _frequencies()))
        both = EvoSpecConfig.from_table({"variants": {"both": {"policy": {"mass_fill": True, "route_semantic": 8}}}}, "t")
        make_policy("evospec:40:both:sync", PolicyInputs(200, torch.arange(100), semantic=_FixedIndex(), mass=index),
                    "f", evospec=both)


def test_max_age_switch():
    steps = [[150]] + [[1]] * 5  # 150 seen once, then only core tokens for five steps
    assert 150 in _run(EvoSpecPolicy(40, _frequencies(), 200), steps)
    assert 150 not in _run(EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(max_age=3)), steps)


def test_drift_switch():
    def drifts(enabled: bool) -> int:
        policy = EvoSpecPolicy(60, _frequencies(), 200, PolicySettings(drift=DriftSettings(enabled=enabled, warmup=4)))
        _run(policy, [[1, 2]] * 20 + [[120 + 3 * i, 121 + 3 * i, 122 + 3 * i] for i in range(6)])
        return policy.drifts

    assert drifts(True) >= 1 and drifts(False) == 0


def _pool_after(settings: AlignSettings, sampled: bool) -> int:
    """Size of the pool an update draws from after 40 buffered entries, the newest cycle decoded by sampling or not."""
    aligner = HeadAligner(torch.zeros(50, 4), settings)
    aligner.buffer.add(torch.randn(38, 4), torch.randn(38, 50))
    aligner.record(CycleFeedback(torch.randn(2, 4), torch.randn(2, 50), 1, torch.arange(50), sampled=sampled), None)
    return aligner.pool().numel()


def test_curriculum_switch_changes_the_pool():
    for curriculum_greedy in (False, True):
        on = AlignSettings(buffer=40, batch=4, curriculum=True, curriculum_greedy=curriculum_greedy)
        off = dataclasses.replace(on, curriculum=False)
        assert _pool_after(on, sampled=True) == 10  # pace_start 0.25 of the buffer
        assert _pool_after(off, sampled=True) == 40 and _pool_after(off, sampled=False) == 40  # all of it


def test_curriculum_greedy_switch_orders_greedy_sessions_too():
    """The chosen setting orders only sampled sessions' updates by the curriculum; ``curriculum-greedy`` greedy
    ones too (a session's kind is its newest cycle's)."""
    chosen = AlignSettings(buffer=40, batch=4)
    assert chosen.curriculum and not chosen.curriculum_greedy
    assert _pool_after(chosen, sampled=False) == 40 and _pool_after(chosen, sampled=True) == 10
    greedy_too = dataclasses.replace(chosen, curriculum_greedy=True)
    assert _pool_after(greedy_too, sampled=False) == 10 and _pool_after(greedy_too, sampled=True) == 10


class _Drafter:
    """What ``make_evospec_aligner`` reads from a compiled drafter."""

    def __init__(self) -> None:
        self.reservoir = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        self.draft_vocab_ids = torch.arange(10)  # rows 0..9 were trained; 10..29 are synthesised


@pytest.mark.parametrize("align_rows", ["retrieved", "all"])
def test_align_rows_switch_limits_the_rows_that_change(align_rows):
    drafter = _Drafter()
    before = drafter.reservoir.clone()
    settings = dataclasses.replace(EvoSpecConfig.builtin().chosen, align_rows=align_rows,
                                   align=AlignSettings(batch=4, every=1, lr=0.1, background=False))
    aligner = make_evospec_aligner(drafter, settings)
    g = torch.Generator().manual_seed(1)
    aligner.buffer.add(torch.randn(8, 4, generator=g), torch.randn(8, 30, generator=g) * 4)
    aligner.apply(aligner.compute(aligner.draw(torch.arange(0, 30, 2))))
    changed = set(torch.nonzero((drafter.reservoir != before).any(-1)).flatten().tolist())
    assert changed and (changed <= set(range(10, 30))) == (align_rows == "retrieved")


ALIGN_EVERY_CYCLE = """
[align]
batch = 1
every = 1
lr = 0.5
window = 1000000
background = {background}
"""


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory):
    from evospec.bundle.compile import compile_bundle
    from evospec.passes.base import CompileSettings
    from evospec.train.demo_pair import ASSET_DIR

    bundle = tmp_path_factory.mktemp("combined") / "bundle"
    compile_bundle(ASSET_DIR / "target", ASSET_DIR / "drafter", bundle,
                   CompileSettings(backend="torch", buckets=(64, 512), index_dims=0, mass_clusters=32))
    return bundle, ASSET_DIR / "target"


@pytest.mark.parametrize(("background", "variant"), [(False, ""), (True, ""), (False, "frequency-fill:")])
def test_combined_method_greedy_exact_while_vocabulary_and_rows_change(tmp_path, demo_bundle, background, variant):
    bundle, target = demo_bundle
    freq = _frequencies(512, successors={t: [(7 * t + 3) % 512, (11 * t + 5) % 512] for t in range(512)})
    freq.save(tmp_path / "freq.json")
    config = tmp_path / "evospec.toml"
    config.write_text('align_rows = "all"\n' + ALIGN_EVERY_CYCLE.format(background=str(background).lower())
                      + "[variants.frequency-fill]\npolicy = { mass_fill = false }\n")
    generator = SpeculativeGenerator.from_bundle(bundle, target, vocab=f"evospec:48:{variant}sync+align",
                                                 frequencies=tmp_path / "freq.json", evospec_config=config)
    before = generator.drafter.reservoir.clone()
    prompt = generator.encode("def parse(self, text):\n    ")
    s = DecodeSettings(max_new_tokens=40, draft_tree="tree", draft_depth=4, draft_topk=4, draft_tokens=10)
    result = generator.generate(prompt, s)
    assert generator.aligner.updates >= result.stats.steps - 2  # rows changed (nearly) every cycle
    assert not torch.equal(generator.drafter.reservoir, before) and result.stats.active_rows_moved > 0
    generator.aligner.close() if background else None
    generator.aligner = generator.policy = None
    assert result.token_ids == generator.generate(prompt, DecodeSettings(max_new_tokens=40, use_draft=False)).token_ids


# slow: sampled exactness under a changing active set stays in the default run through test_vocab_policies.py's
# test_sampling_exact_while_the_active_set_changes_every_step[quick] and the rows changing through the greedy check above
@pytest.mark.parametrize("relative_error", [
    pytest.param(0.15, id="quick", marks=pytest.mark.slow), pytest.param(0.05, id="strict", marks=pytest.mark.slow)])
def test_combined_method_sampling_follows_the_target(relative_error):
    """Joint law of the first 3 new tokens while EvoSpec's policy changes the active set and its aligner
    changes head rows every cycle (one update per generation call, carried across calls)."""
    from .test_sampling_exactness import (
        assert_joint_matches,
        compiled_end_to_end_pair,
        equal_halves,
        exact_joint,
        halves_samples,
        sample_joint,
    )

    model, compiled = compiled_end_to_end_pair()
    counts = torch.tensor([0, 0, 5, 4, 3, 2])
    freq = TokenFrequencies(6, counts, 1, "unit", successors={t: [(t + 1) % 6] for t in range(6)})
    policy = EvoSpecPolicy(3, freq, 6, PolicySettings(core_share=0.34, semantic_count=0))
    generator = SpeculativeGenerator.from_models(model, compiled)
    generator.policy = policy
    settings = dataclasses.replace(EvoSpecConfig.builtin().chosen, align_rows="all",
                                   align=AlignSettings(batch=1, every=1, lr=0.3, window=10**6, background=False, top=4))
    generator.aligner = make_evospec_aligner(compiled, settings)
    before = compiled.reservoir.clone()
    prompt = [1, 4, 2]
    expected = exact_joint(model, prompt, 3, 1.0, 1.0)
    n = halves_samples(sum(expected[k] for k in equal_halves(expected)), relative_error)
    joint, accepted = sample_joint(generator, prompt, n, temperature=1.0, draft_tree="chain", draft_depth=3)
    assert generator.aligner.updates >= n - 1 and not torch.equal(compiled.reservoir, before)
    assert_joint_matches(joint, expected, n, relative_error)
    assert accepted > n // 10, "the drafter must be accepted often enough for the test to mean something"


@pytest.mark.parametrize(("variant", "last"), [
    ("unseen-last", set(range(40, 200))),  # ids 0..39 are the only counted ones
    ("synthesised-last", set(range(100, 200))),  # the drafter was trained on ids 0..99
])
def test_fill_order_switches_put_their_rows_last(variant, last):
    """``mass_unseen_last`` / ``mass_synthesised_last``: the fill takes those rows only after every other row; the
    chosen setting (neither) takes the root's cluster first, whatever its rows."""
    inputs = PolicyInputs(200, torch.arange(100), mass=_mass_index())
    freq = _frequencies()
    h = torch.zeros(10)
    h[7] = 1.0  # cluster 7: ids 140..159, counted by no one and never trained
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: freq))
        for name, expect_last in ((f"evospec:40:{variant}:sync", True), ("evospec:40:sync", False)):
            policy = make_policy(name, inputs, "f")
            policy.reset([])
            active = policy.route(h).tolist()
            fill = active[policy.inner.fill_start:]
            assert fill and (not set(fill) & last) == expect_last, name
            assert (set(range(140, 160)) <= set(active)) != expect_last, name


def test_sticky_switch_reaches_the_fill_and_keeps_last_cycles_cluster():
    """The chosen hysteresis (0.25) reaches the fill and ``no-sticky`` turns it off; with it a cluster that slips just
    below the cut stays, without it the fill follows the new ranking (the rule itself: test_mass_index.py)."""
    inputs = PolicyInputs(200, torch.arange(100), mass=_mass_index())
    freq = _frequencies()
    first, second = torch.zeros(10), torch.zeros(10)
    first[7], first[8] = 1.0, 0.9  # cluster 7 (ids 140..159) ranks first
    second[8], second[7] = 1.0, 0.9  # ... then 8 (160..179), with 7 just behind it
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: freq))
        for name, sticky in (("evospec:40:sync", 0.25), ("evospec:40:no-sticky:sync", 0.0)):
            policy = make_policy(name, inputs, "f")
            assert policy.fill.sticky == sticky
            policy.reset([])
            policy.route(first)
            after = set(policy.route(second).tolist())
            assert (set(range(140, 160)) <= after) == (sticky > 0), name


@pytest.mark.parametrize("variant", ["prior-half", "prior-1"])
def test_prior_switch_ranks_clusters_of_counted_tokens_first(variant):
    """``mass_prior``: the fill's cluster score adds the log mean corpus count of its rows, so a cluster of counted
    tokens (ids 20..39) outranks one of never-counted ones (140..159) the drafter gives a little more mass; the
    chosen setting (no prior) follows the drafter's mass alone."""
    inputs = PolicyInputs(200, torch.arange(100), mass=_mass_index())
    freq = _frequencies()
    h = torch.zeros(10)
    h[7], h[1] = 1.0, 0.9
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: freq))
        for name, prior in ((f"evospec:40:{variant}:sync", True), ("evospec:40:sync", False)):
            policy = make_policy(name, inputs, "f")
            policy.reset([])
            active = set(policy.route(h).tolist())
            assert (set(range(20, 40)) <= active) == prior and (set(range(140, 160)) <= active) != prior, name


def test_rank_max_switch_ranks_the_cluster_holding_the_likeliest_row_first():
    """``mass_rank = "max"`` (variant ``rank-max``): the fill ranks clusters by the expected largest logit among their
    rows, not by their mass. Cluster 7 (ids 140..159) has the higher centre and tight rows, so the most mass; cluster 8
    (160..179) a lower centre and spread rows, so the likelier argmax: the chosen setting (mass) fills from 7, rank-max
    from 8 (its score is ``MassIndex.max_terms``)."""
    from evospec.runtime.vocab.mass_index import MassIndex

    spread = torch.zeros(10)
    spread[8] = 0.1
    index = MassIndex(torch.arange(200) // 20, 3 * torch.eye(10), torch.full((10,), 20.0).log(), spread)
    inputs = PolicyInputs(200, torch.arange(100), mass=index)
    freq = _frequencies()
    h = torch.zeros(10)
    h[7], h[8] = 1.0, 0.9
    mass, top = index.scores(h), index.scores(h, "max")
    assert mass[7] > mass[8] and top[8] > top[7]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: freq))
        for name, by_max in (("evospec:40:rank-max:sync", True), ("evospec:40:sync", False)):
            policy = make_policy(name, inputs, "f")
            assert policy.fill.rank == ("max" if by_max else "mass")
            policy.reset([])
            active = set(policy.route(h).tolist())
            assert (set(range(160, 180)) <= active) == by_max and (set(range(140, 160)) <= active) != by_max, name


def test_max_terms_are_the_expected_largest_residual_logit():
    """``MassIndex.max_terms``: sqrt(2 s ln n) for n rows of per-coordinate variance s (spread = s / 2): one row has
    none, an empty cluster ranks last. Against the mean largest of n Gaussian draws: at n = 400 the asymptote overstates
    it by about 15% (never understates it), the same bias for every cluster of that size."""
    from evospec.runtime.vocab.mass_index import MassIndex

    log_sizes = torch.tensor([0.0, float("-inf"), math.log(400.0)])
    index = MassIndex(torch.zeros(3, dtype=torch.long), torch.zeros(3, 4), log_sizes, torch.tensor([0.5, 0.5, 0.5]))
    terms = index.max_terms()
    assert terms[0] == 0 and terms[1] == float("-inf")
    g = torch.Generator().manual_seed(0)
    largest = torch.randn(2000, 400, generator=g).max(dim=1).values.mean()  # s = 1: unit-variance residual logits
    assert 1.0 < float(terms[2]) / float(largest) < 1.25


def test_router_fill_switch_fills_from_the_routers_clusters(tmp_path):
    """``fill_source``: ``router`` (variant ``router-fill``) ranks a DynaSpec router's clusters (trained on the target's
    next tokens) instead of the mass index's, ``mass`` (variant ``mass-fill``) the mass index's, and ``auto`` (chosen)
    the router's for greedy requests when a router is given. Here the mass index ranks cluster 7 (ids 140..159) first
    for the state and the router its own cluster 8 (ids 160..179): each fills from its own first cluster. Without
    --router the router variant says what it needs."""
    from evospec.runtime.vocab.dynaspec import Router

    inputs = PolicyInputs(200, torch.arange(100), mass=_mass_index())
    freq = _frequencies()
    h = torch.zeros(10)
    h[7] = 1.0
    w2 = torch.zeros(10, 10)
    w2[8, 7] = 5.0  # the router sends this state to cluster 8
    router = Router(torch.arange(200) // 20, torch.zeros(0, 10), torch.zeros(0), w2, torch.zeros(10),
                    torch.ones(200))
    router.save(tmp_path / "router.safetensors")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TokenFrequencies, "load", staticmethod(lambda path: freq))
        # the chosen setting, auto: the router's clusters for greedy requests, the mass index's for sampled ones
        for name, greedy, routed in (("evospec:40:router-fill:sync", False, True), ("evospec:40:sync", True, True),
                                     ("evospec:40:sync", False, False), ("evospec:40:mass-fill:sync", True, False)):
            policy = make_policy(name, inputs, "f", router=tmp_path / "router.safetensors")
            policy.decoding(greedy)
            policy.reset([])
            active = set(policy.route(h).tolist())
            assert (set(range(160, 180)) <= active) == routed and (set(range(140, 160)) <= active) != routed, name
        without = make_policy("evospec:40:sync", inputs, "f")  # auto without a router: the mass index's, always
        without.decoding(True)
        without.reset([])
        assert set(range(140, 160)) <= set(without.route(h).tolist())
        with pytest.raises(SettingsError, match="--router FILE"):
            make_policy("evospec:40:router-fill:sync", inputs, "f")
