"""DynaSpec: exactly-K shortlists from the fresh root state, recall that training reports and the
router file it stores, and clear errors for router files that cannot be used."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.core.errors import SettingsError
from evospec.runtime.vocab.dynaspec import DynaSpecPolicy, Router, Shortlister, cluster_rows, train_router
from evospec.train.dynaspec_router import depth_targets, frequency_recall, recall, split_blocks


def learnable(seed: int = 0, groups: int = 4, per_group: int = 25, width: int = 16, n: int = 800):
    """Token rows in clear groups; a state's next tokens lie in the group its state points to."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, width, generator=g) * 3
    rows = torch.cat([c + 0.1 * torch.randn(per_group, width, generator=g) for c in centres])
    states = torch.randn(n, width, generator=g)
    group = (states @ centres.T).argmax(-1)
    tokens = torch.stack([per_group * group + torch.randint(per_group, (n,), generator=g) for _ in range(3)], dim=1)
    return rows, states, tokens


def test_router_learns_a_learnable_routing_and_reports_high_recall():
    rows, states, tokens = learnable()
    labels = cluster_rows(rows, 4)
    router = train_router(states[:600], tokens[:600], labels, 100, hidden=32, steps=400, lr=1e-2)
    scores = router.scores(states[600:])
    row = recall(router, scores, torch.cat((tokens[600:], tokens[600:]), 1), 25, 0.0)  # K = one group
    assert row["cluster_depth1"] >= 0.9 and row["shortlist_all_depths"] >= 0.9
    fixed = frequency_recall(router.counts, torch.cat((tokens[600:], tokens[600:]), 1), 25)
    assert fixed["all_depths"] <= 0.5  # a fixed list of one group's size holds about a quarter: routing is what helps
    linear = train_router(states[:600], tokens[:600], labels, 100, hidden=0, steps=400, lr=1e-2)
    assert recall(linear, linear.scores(states[600:]), tokens[600:], 25, 0.0)["cluster_depth1"] >= 0.9


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(2, 60), clusters=st.integers(1, 6), data=st.data())
def test_route_gives_exactly_k_distinct_ids_and_positions_agree(vocab, clusters, data):
    """``Shortlister.positions`` (training's recall) must place tokens exactly where ``ids`` (decoding) does."""
    clusters = min(clusters, vocab)
    seed = data.draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    labels = cluster_rows(torch.randn(vocab, 8, generator=g), clusters)
    counts = torch.randint(0, 3, (vocab,), generator=g)  # zeros and ties
    router = train_router(torch.randn(32, 8, generator=g), torch.randint(vocab, (32, 2), generator=g), labels, vocab,
                          hidden=data.draw(st.sampled_from([0, 4])), steps=3, counts=counts)
    k = data.draw(st.integers(1, vocab))
    share = data.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0]))
    router.backbone_shares = {k: share}
    policy = DynaSpecPolicy(k, router.clusters, router, vocab)
    before = policy.active_ids()
    assert before.numel() == k and torch.unique(before).numel() == k
    states = torch.randn(5, 8, generator=g)
    tokens = torch.arange(vocab).expand(5, vocab)
    inside, _ = Shortlister(router, k, share).positions(router.scores(states), tokens)
    for i, state in enumerate(states):
        ids = policy.route(state)
        assert ids.dtype == torch.long and ids.numel() == k and torch.unique(ids).numel() == k
        assert int(ids.min()) >= 0 and int(ids.max()) < vocab
        member = torch.zeros(vocab, dtype=torch.bool)
        member[ids] = True
        assert torch.equal(member, inside[i]), (k, share)
        assert policy.active_ids() is ids
    policy.reset([1])
    assert torch.equal(policy.active_ids(), before)


def test_unchanged_clusters_hand_back_the_same_tensor():
    rows, states, tokens = learnable(seed=1)
    router = train_router(states, tokens, cluster_rows(rows, 4), 100, hidden=0, steps=200, lr=1e-2)
    policy = DynaSpecPolicy(20, 4, router, 100)
    first = policy.route(states[0])
    assert policy.route(states[0]) is first  # the drafter's set_active then costs nothing


def test_depth_targets_are_the_tokens_after_the_root():
    ids = list(range(100, 112))  # 12 tokens: n = 11 states
    greedy = torch.arange(200, 211)  # greedy[j]: the target's choice for position j + 1
    y = depth_targets(ids, greedy, 3)
    assert y.shape == (8, 6)
    # states[j] sits at the root (position j + 1) and drafts positions j + 2 .. j + 4
    assert y[0].tolist() == [201, 202, 203, 102, 103, 104]
    assert y[7].tolist() == [208, 209, 210, 109, 110, 111]
    assert depth_targets(ids[:3], greedy[:2], 3).shape == (0, 6)


def test_split_blocks_keep_held_out_and_validation_apart():
    split = split_blocks([300, 500, 40])
    assert split.shape == (840,)
    assert set(split.unique().tolist()) == {0, 1, 2}
    assert (split == 2).sum() >= 64 and (split == 1).sum() >= 64 and (split == 0).sum() > 600


def test_bad_router_files_give_clear_errors(tmp_path):
    from safetensors.torch import save_file

    rows, states, tokens = learnable()
    router = train_router(states, tokens, cluster_rows(rows, 4), 100, hidden=8, steps=5)
    router.backbone_shares, router.report = {25: 0.25}, {"heldout": [{"k": 25}]}
    router.save(tmp_path / "r.safetensors")
    loaded = Router.load(tmp_path / "r.safetensors")
    assert loaded.backbone_shares == {25: 0.25} and loaded.report == {"heldout": [{"k": 25}]}
    assert torch.equal(loaded.scores(states[:3]), router.scores(states[:3]))
    with pytest.raises(SettingsError, match="does not exist"):
        Router.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(SettingsError, match="not a readable router"):
        Router.load(tmp_path / "junk.safetensors")
    tensors = {"labels": router.labels, "weight": router.w2, "bias": router.b2, "counts": router.counts}
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata={"format": "evospec-dynaspec/1"})
    with pytest.raises(SettingsError, match="older router format: retrain"):
        Router.load(tmp_path / "v1.safetensors")
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(SettingsError, match="not an evospec DynaSpec router"):
        Router.load(tmp_path / "other.safetensors")
    broken = {name: getattr(router, name) for name in ("labels", "w1", "b1", "w2", "b2", "counts")}
    broken["labels"] = broken["labels"] + 10  # clusters that do not exist
    save_file(broken, str(tmp_path / "labels.safetensors"), metadata={"format": "evospec-dynaspec/2"})
    with pytest.raises(SettingsError, match="cluster labels outside"):
        Router.load(tmp_path / "labels.safetensors")
    del broken["w1"]
    save_file(broken, str(tmp_path / "short.safetensors"), metadata={"format": "evospec-dynaspec/2"})
    with pytest.raises(SettingsError, match="lacks tensors w1"):
        Router.load(tmp_path / "short.safetensors")
    with pytest.raises(SettingsError, match="has 4 clusters"):
        DynaSpecPolicy(30, 8, loaded, 100)
    with pytest.raises(SettingsError, match="covers 100 tokens"):
        DynaSpecPolicy(30, 4, loaded, 120)
    with pytest.raises(SettingsError, match="reads states of 16 values"):
        DynaSpecPolicy(30, 4, loaded, 100).route(torch.zeros(12))


@pytest.mark.slow  # `vocab dynaspec` end to end stays in the default run (test_cli_vocab_dynaspec_then_profile)
def test_cli_training_stores_heldout_recall_in_the_router(tmp_path):
    """`vocab dynaspec` on the demo pair: recall printed, in the JSON report and in the router file's metadata."""
    from safetensors import safe_open

    from evospec.bundle.compile import compile_bundle
    from evospec.passes.base import CompileSettings
    from evospec.train.demo_pair import ASSET_DIR

    from .test_cli import run

    target, drafter = ASSET_DIR / "target", ASSET_DIR / "drafter"
    bundle = tmp_path / "bundle"
    compile_bundle(target, drafter, bundle, CompileSettings(backend="torch", buckets=(64, 512), index_dims=0))
    corpus = tmp_path / "corpus"
    texts = ["def add(a, b):\n    return a + b\n\nclass Point:\n    x = 1\n", "The court held that the contract was void.\n"]
    for domain, text in zip(("code", "law"), texts):
        (corpus / domain / "train").mkdir(parents=True)
        for i in range(4):
            (corpus / domain / "train" / f"{i}.txt").write_text(text * (6 + i))
    router = tmp_path / "router.safetensors"
    proc = run("vocab", "dynaspec", "--bundle", str(bundle), "--target", str(target), "--corpus", str(corpus),
               "--clusters", "8", "--tokens", "2048", "--depth", "3", "--hidden", "16", "--steps", "100",
               "--sizes", "32,128", "--out", str(router))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [row["k"] for row in report["heldout"]] == [32, 128]
    for row, fixed in zip(report["heldout"], report["heldout_frequency_list"]):
        assert 0 <= row["shortlist_depth1"] <= 1 and 0 <= row["cluster_all_depths"] <= 1 and 0 <= fixed["depth1"] <= 1
    small, large = report["heldout"]
    assert small["shortlist_all_depths"] <= large["shortlist_all_depths"] + 0.05  # a bigger set holds about as much or more
    assert "K=32: held-out next tokens in the shortlist" in proc.stderr
    with safe_open(str(router), "pt") as f:
        stored = json.loads(f.metadata()["report"])
    assert stored["heldout"] == report["heldout"] and stored["cluster_on"] == "lm-head"
    bad = run("vocab", "dynaspec", "--bundle", str(bundle), "--target", str(target), "--corpus", str(corpus),
              "--sizes", "32,x", "--out", str(router), check=False)
    assert bad.returncode != 0 and "--sizes" in bad.stderr
