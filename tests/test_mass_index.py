"""The mass index (k-means clusters of the reservoir rows and the drafter-mass estimate) and the mass fill
of EvoSpec's tail: clusters found, the estimate exact where it should be, files checked, fills well formed."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.core.errors import BundleError, SettingsError
from evospec.runtime.vocab.evospec_policy import EvoSpecPolicy
from evospec.runtime.vocab.evospec_settings import PolicySettings
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.runtime.vocab.mass_fill import MassFill, MassRouted
from evospec.runtime.vocab.mass_index import MASS_FILE, MassIndex, kmeans
from evospec.runtime.vocab.pipelined import PipelinedPolicy


def _blobs(groups: int = 6, per: int = 20, d: int = 8, noise: float = 0.05, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, d, generator=g) * 3
    return torch.cat([c + noise * torch.randn(per, d, generator=g) for c in centres]), centres


def _inertia(rows: torch.Tensor, labels: torch.Tensor) -> float:
    return sum(float(((rows[labels == c] - rows[labels == c].mean(0)) ** 2).sum()) for c in labels.unique())


def test_kmeans_finds_separated_groups_and_lowers_the_seeds_error():
    rows, _ = _blobs()
    labels = kmeans(rows, 6, seed=1, seeding="kmeans++")
    groups = [set(labels[20 * i : 20 * (i + 1)].tolist()) for i in range(6)]
    assert all(len(g) == 1 for g in groups) and len(set.union(*groups)) == 6
    spread, _ = _blobs(groups=1, per=300, noise=1.0)  # one cloud: sampled seeds, then Lloyd's steps
    seeded = kmeans(spread, 12, iters=0)
    assert _inertia(spread, kmeans(spread, 12)) < 0.9 * _inertia(spread, seeded)
    with pytest.raises(SettingsError, match="clusters"):
        kmeans(rows, 0)
    with pytest.raises(SettingsError, match="seeding"):
        kmeans(rows, 2, seeding="farthest")


def test_score_is_the_exact_log_mass_when_a_cluster_has_no_spread():
    """Rows equal to their centre: the estimate is exactly log sum_i exp(<h, w_i>) of each cluster."""
    centres = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    sizes = torch.tensor([1, 4, 2, 7, 3])
    rows = torch.repeat_interleave(centres, sizes, dim=0)
    index = MassIndex.build(rows, 5, seeding="kmeans++")
    assert torch.allclose(index.spread, torch.zeros(5), atol=1e-6)
    h = torch.randn(8, generator=torch.Generator().manual_seed(3))
    exact = torch.zeros(5).index_add_(0, index.labels, torch.exp(rows @ h)).log()
    assert torch.allclose(index.scores(h), exact, atol=1e-4)


def test_score_ranks_clusters_by_the_drafters_mass():
    """With spread, the first-ranked cluster holds (nearly) the most of softmax(rows @ h) for most states."""
    rows, _ = _blobs(groups=8, per=30, d=16, noise=0.3)
    index = MassIndex.build(rows, 8, seed=1, seeding="kmeans++")
    states = torch.randn(200, 16, generator=torch.Generator().manual_seed(4)) * 0.5
    hits = 0
    for h in states:
        mass = torch.zeros(8).index_add_(0, index.labels, torch.softmax(rows @ h, -1))
        hits += int(mass[int(index.scores(h).argmax())] >= 0.9 * mass.max())
    assert hits >= 190


def test_saved_index_loads_and_bad_files_fail_clearly(tmp_path):
    rows, _ = _blobs()
    index = MassIndex.build(rows, 6)
    (tmp_path / "index").mkdir()
    index.save(tmp_path / MASS_FILE)
    loaded = MassIndex.load(tmp_path, 120, 8)
    assert torch.equal(loaded.labels, index.labels) and torch.equal(loaded.means, index.means)
    with pytest.raises(BundleError, match="does not fit"):
        MassIndex.load(tmp_path, 121, 8)
    with pytest.raises(BundleError, match="does not fit"):
        MassIndex.load(tmp_path, 120, 9)
    (tmp_path / MASS_FILE).write_bytes(b"junk")
    with pytest.raises(BundleError, match="not a readable mass index"):
        MassIndex.load(tmp_path, 120, 8)
    with pytest.raises(BundleError, match="missing"):
        MassIndex.load(tmp_path / "elsewhere", 120, 8)


def _index_over_groups(groups: int = 10, per: int = 20) -> MassIndex:
    """Rows 0..groups*per-1 in ``groups`` clusters of ``per`` consecutive ids, centre i = 3 * e_i."""
    means = 3 * torch.eye(groups)
    labels = torch.arange(groups * per) // per
    return MassIndex(labels, means, torch.full((groups,), float(per)).log(), torch.zeros(groups))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 9), st.lists(st.integers(0, 199), max_size=40, unique=True), st.integers(0, 120))
def test_mass_fill_is_distinct_new_ids_in_cluster_rank_order(target, kept_ids, room):
    index = _index_over_groups()
    core = torch.arange(5)
    fill = MassFill(index, core, torch.arange(200))
    kept = torch.tensor(sorted(set(kept_ids) | set(range(5))), dtype=torch.long)
    h = torch.zeros(10)
    h[target] = 1.0  # the cluster of ids target*20 .. target*20+19 holds the most mass
    ids = fill.ids(h, kept, room)
    assert ids.numel() == min(room, 200 - kept.numel()) and torch.unique(ids).numel() == ids.numel()
    assert not set(ids.tolist()) & set(kept.tolist())
    ranks = torch.argsort(torch.argsort(index.scores(h), descending=True))[index.labels[ids]]
    assert torch.equal(ranks, torch.sort(ranks).values)  # clusters in rank order, never one skipped back to
    if room >= 20:
        assert set(range(20 * target, 20 * target + 20)) - set(kept.tolist()) <= set(ids.tolist())


def _frequencies(vocab: int = 200) -> TokenFrequencies:
    counts = torch.zeros(vocab, dtype=torch.long)
    counts[:40] = torch.arange(40, 0, -1)  # ids 0..39 are frequent, 0 the most
    return TokenFrequencies(vocab, counts, 1, "unit", successors={150: [151, 152]})


@pytest.mark.parametrize("pipelined", [False, True])
def test_mass_routed_keeps_core_and_evidence_and_fills_from_the_roots_cluster(pipelined):
    freq = _frequencies()
    inner = EvoSpecPolicy(40, freq, 200, PolicySettings(semantic_count=0))
    policy = PipelinedPolicy(inner) if pipelined else inner
    routed = MassRouted(policy, MassFill(_index_over_groups(), inner.core, freq.ranked(200, 200)), 40)
    routed.reset([120, 121])
    routed.observe([150])
    h = torch.zeros(10)
    h[9] = 1.0  # ids 180..199
    active = routed.route(h)
    assert active.numel() == 40 and torch.unique(active).numel() == 40
    members = set(active.tolist())
    assert set(range(20)) <= members and {120, 121} <= members  # the core and the prompt's evidence stay
    assert {150, 151, 152} <= members  # the newest token and its successors (the fresh patch when pipelined)
    evidence = set(range(20)) | {120, 121, 150, 151, 152}
    assert members - evidence <= set(range(180, 200)) and len(members - evidence) == 15  # the root's cluster fills
    assert routed.route(h) is active  # the same set hands back the same tensor
    routed.close()


def _routed_sets(pipelined: bool, frequency_fill: bool, steps: list[list[int]], seed: int):
    """Each step's routed set, and (pipelined) the evidence of the worker's set it was patched from."""
    freq = _frequencies()
    inner = EvoSpecPolicy(40, freq, 200, PolicySettings(semantic_count=0), frequency_fill=frequency_fill)
    policy = PipelinedPolicy(inner) if pipelined else inner
    routed = MassRouted(policy, MassFill(_index_over_groups(), inner.core, freq.ranked(200, 200)), 40)
    routed.reset([120, 121])
    g = torch.Generator().manual_seed(seed)
    sets, evidence = [], []
    for committed in steps:
        routed.observe(committed)
        sets.append(routed.route(torch.randn(10, generator=g)).tolist())
        assert len(sets[-1]) == 40 and len(set(sets[-1])) == 40
        if pipelined:
            evidence.append(set(policy._current[: policy._fill_start].tolist()))
    routed.close()
    return sets, evidence


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(20, 199), min_size=1, max_size=4), min_size=1, max_size=12), st.integers(0, 99))
def test_a_mass_routed_policy_needs_no_frequency_fill_from_its_inner_policy(steps, seed):
    """Without the fill it would throw away, a synchronous inner policy routes to exactly the same sets; a
    pipelined one keeps every fresh id. With a fill, a fresh id that sat in the fill was not patched in, and the
    mass fill then dropped it with the rest of the fill; and a fresh id already among the evidence's last entries
    was cut when the patch made room for the others."""
    assert _routed_sets(False, False, steps, seed)[0] == _routed_sets(False, True, steps, seed)[0]
    sets, _ = _routed_sets(True, False, steps, seed)
    for committed, active in zip(steps, sets):
        fresh = set(committed) | ({151, 152} if committed[-1] == 150 else set())
        assert fresh <= set(active)


def test_compile_builds_the_index_and_bundle_load_checks_it(tmp_path):
    """The pass writes the index and its report; ``mass_clusters = 0`` leaves it out; a damaged file stops
    the bundle's load with a BundleError naming it."""
    import shutil

    from evospec.bundle.compile import compile_bundle
    from evospec.passes.base import CompileSettings
    from evospec.runtime.generator import SpeculativeGenerator
    from evospec.train.demo_pair import ASSET_DIR

    target, drafter = ASSET_DIR / "target", ASSET_DIR / "drafter"
    out = tmp_path / "bundle"
    manifest = compile_bundle(target, drafter, out, CompileSettings(backend="torch", buckets=(64, 512), index_dims=0,
                                                                    mass_clusters=16))
    report = manifest["mass_index"]
    assert report["clusters"] == 16 and report["rows"] == 512 and MASS_FILE in manifest["files"]
    assert 0 < report["drafter_mass_routed"] <= 1 and report["set_size"] == 64
    generator = SpeculativeGenerator.from_bundle(out, target)
    assert generator.drafter.mass_index.clusters == 16
    (out / MASS_FILE).write_bytes(b"junk")
    with pytest.raises(BundleError, match="mass.safetensors is truncated or altered"):
        SpeculativeGenerator.from_bundle(out, target)
    none = tmp_path / "none"
    manifest = compile_bundle(target, drafter, none, CompileSettings(backend="torch", buckets=(64, 512), index_dims=0,
                                                                     mass_clusters=0))
    assert "mass_index" not in manifest and SpeculativeGenerator.from_bundle(none, target).drafter.mass_index is None
    with pytest.raises(SettingsError, match="mass_clusters"):
        CompileSettings(mass_clusters=-1)
    shutil.rmtree(out)


def test_unseen_rows_come_after_every_seen_row_of_the_ranked_clusters():
    """``last`` (as the ``unseen-last`` variant builds it): the fill takes every cluster's counted rows, clusters in rank
    order, before any uncounted row; then the uncounted rows, clusters again in rank order."""
    index = _index_over_groups()
    unseen = torch.zeros(200, dtype=torch.bool)
    unseen[torch.arange(200) % 20 >= 15] = True  # the last 5 ids of every cluster were never counted
    fill = MassFill(index, torch.arange(5), torch.arange(200), unseen)
    h = torch.tensor([0.1, 0.2, 0.3, 2.0, 0.4, 0.5, 0.6, 1.0, 0.7, 0.8])  # rank: 3, 7, 9, 8, 6, 5, 4, 2, 1, 0
    rank = [3, 7, 9, 8, 6, 5, 4, 2, 1, 0]
    ids = fill.ids(h, torch.arange(5), 195).tolist()
    seen = [i for c in rank for i in range(20 * c, 20 * c + 15) if i >= 5]
    assert ids == seen + [i for c in rank for i in range(20 * c + 15, 20 * c + 20)]
    assert fill.ids(h, torch.arange(5), 30).tolist() == seen[:30]  # within budget, no uncounted row at all
    plain = MassFill(index, torch.arange(5), torch.arange(200)).ids(h, torch.arange(5), 40).tolist()
    assert plain == list(range(60, 80)) + list(range(140, 160))


def test_sticky_fill_keeps_last_cycles_clusters_within_the_band_only():
    """``sticky``: a cluster chosen last cycle goes first while it ranks inside the band (clusters holding
    (1 + sticky) x the rows needed); one ranked below the band is dropped; the fill stays well formed."""
    index = _index_over_groups()  # 10 clusters of 20 rows
    core = torch.arange(0)
    sticky = MassFill(index, core, torch.arange(200), sticky=1.0)
    plain = MassFill(index, core, torch.arange(200))
    kept = torch.arange(0)

    def state(*ranked):  # clusters in the given rank order, the rest below them
        h = torch.zeros(10)
        for place, c in enumerate(ranked):
            h[c] = 3.0 - 0.1 * place
        return h

    assert sticky.ids(state(2, 5), kept, 40).tolist() == list(range(40, 60)) + list(range(100, 120))
    # 5 falls to third: within the band (40 rows x 2 = the first 4 clusters), so 2 and 5 stay
    again = sticky.ids(state(2, 7, 5, 1), kept, 40).tolist()
    assert again == list(range(40, 60)) + list(range(100, 120))
    assert plain.ids(state(2, 7, 5, 1), kept, 40).tolist() == list(range(40, 60)) + list(range(140, 160))
    # 5 falls to fifth: outside the band, so the fill follows the ranking again
    assert sticky.ids(state(2, 7, 1, 3, 5), kept, 40).tolist() == list(range(40, 60)) + list(range(140, 160))
    sticky.forget()
    assert sticky.ids(state(7, 2), kept, 40).tolist() == list(range(140, 160)) + list(range(40, 60))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 9), min_size=2, max_size=8), st.lists(st.integers(0, 199), max_size=30, unique=True),
       st.integers(0, 120), st.floats(0.0, 2.0))
def test_sticky_fill_is_distinct_new_ids(targets, kept_ids, room, sticky):
    fill = MassFill(_index_over_groups(), torch.arange(5), torch.arange(200), sticky=sticky)
    kept = torch.tensor(sorted(set(kept_ids) | set(range(5))), dtype=torch.long)
    for target in targets:
        h = torch.zeros(10)
        h[target] = 1.0
        ids = fill.ids(h, kept, room)
        assert ids.numel() == min(room, 200 - kept.numel()) and torch.unique(ids).numel() == ids.numel()
        assert not set(ids.tolist()) & set(kept.tolist())


class _FullOrder(MassFill):
    """The fill with every cluster ranked (the order before ``_ranked`` sorted only the prefix the fill reads)."""

    def _ranked(self, scores, band):
        import numpy as np

        return np.lexsort((np.arange(scores.size), -scores))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.sampled_from([0.0, 0.25, 1.0]), st.integers(1, 900), st.integers(0, 400))
def test_a_fill_ranked_only_as_far_as_it_reads_equals_the_fully_ranked_one(seed, sticky, room, kept_count):
    """Many clusters (1,200, most of them small, some empty), so the partial ranking is what runs; several cycles,
    so the sticky band carries last cycle's clusters."""
    g = torch.Generator().manual_seed(seed)
    vocab, clusters, d = 6000, 1200, 12
    labels = torch.randint(clusters - 40, (vocab,), generator=g)  # the last 40 clusters empty: -inf scores
    means = torch.randn(clusters, d, generator=g)
    sizes = torch.bincount(labels, minlength=clusters).float()
    index = MassIndex(labels, means, torch.where(sizes > 0, sizes.clamp_min(1).log(), torch.full_like(sizes, -torch.inf)),
                      torch.rand(clusters, generator=g) * 0.1)
    core = torch.randperm(vocab, generator=g)[:300]
    order = torch.randperm(vocab, generator=g)
    partial, full = MassFill(index, core, order, sticky=sticky), _FullOrder(index, core, order, sticky=sticky)
    for _ in range(4):
        kept = torch.cat((core, torch.randperm(vocab, generator=g)[:kept_count])).unique()
        h = torch.randn(d, generator=g)
        assert torch.equal(partial.ids(h, kept, room), full.ids(h, kept, room))
