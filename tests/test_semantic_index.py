"""The semantic (USearch) index: compile pass, load checks, queries, and its use by the evospec policy."""

from __future__ import annotations

import shutil

import pytest
import torch

from evospec.bundle.compile import compile_bundle
from evospec.core.errors import BundleError
from evospec.passes.base import CompileSettings
from evospec.runtime.vocab.evospec_policy import DriftSettings, EvoSpecPolicy, PolicySettings
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.runtime.vocab.semantic import INDEX_FILE, PROJECTION_FILE, SemanticIndex
from evospec.train.demo_pair import ASSET_DIR

pytest.importorskip("usearch", reason="the semantic index needs usearch (pip install 'evospec[index]')")

TARGET, DRAFTER = ASSET_DIR / "target", ASSET_DIR / "drafter"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("sem") / "bundle"
    manifest = compile_bundle(TARGET, DRAFTER, out, CompileSettings(backend="torch", buckets=(64, 512), index_dims=32))
    return out, manifest


def test_compile_records_the_index_and_its_recall(bundle):
    out, manifest = bundle
    report = manifest["semantic_index"]
    assert report["dims"] == 32 and report["rows"] == 512 and report["metric"] == "ip"
    assert report["recall_at_64_vs_projected"] >= 0.9  # approximate search loses little at this size
    assert 0 < report["recall_at_64_vs_head"] <= 1
    assert {INDEX_FILE, PROJECTION_FILE} <= set(manifest["files"])


def test_loaded_index_answers_like_an_exact_projected_search(bundle):
    out, _ = bundle
    index = SemanticIndex.load(out, 512, 128)
    from safetensors.torch import load_file

    rows = load_file(str(out / "reservoir.safetensors"))["reservoir"]
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        state = rows[torch.randint(0, 512, (4,), generator=g)].sum(0)  # states the head would score
        exact = set(((rows @ index.projection) @ (state @ index.projection)).topk(16).indices.tolist())
        assert len(set(index.query(state, 16)) & exact) >= 14


@pytest.mark.parametrize("case", ["missing", "corrupt", "rows", "width", "projection"])
def test_bad_index_errors(bundle, tmp_path, case):
    out, _ = bundle
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    vocab, width = 512, 128
    if case == "missing":
        (copy / INDEX_FILE).unlink()
        message = "semantic.usearch is missing"
    elif case == "corrupt":
        (copy / INDEX_FILE).write_bytes(b"not an index" * 100)
        message = "not a readable USearch index"
    elif case == "rows":
        vocab, message = 600, "indexes 512 rows but the reservoir has 600"
    elif case == "width":
        width, message = 96, "does not fit a drafter of width 96"
    else:
        (copy / PROJECTION_FILE).write_bytes(b"\x00" * 20)
        message = "not a readable projection"
    with pytest.raises(BundleError, match=message):
        SemanticIndex.load(copy, vocab, width)


def test_bundle_load_checks_the_index_file(bundle, tmp_path):
    from evospec.runtime.generator import SpeculativeGenerator

    out, _ = bundle
    copy = tmp_path / "b"
    shutil.copytree(out, copy)
    generator = SpeculativeGenerator.from_bundle(copy, TARGET)
    assert generator.drafter.semantic_index is not None
    with (copy / INDEX_FILE).open("r+b") as handle:  # same size, different bytes: the fingerprint catches it
        handle.seek(100)
        handle.write(b"\xff\xfe\xfd")
    with pytest.raises(BundleError, match="semantic.usearch"):
        SpeculativeGenerator.from_bundle(copy, TARGET)


class FixedIndex:
    def __init__(self, ids):
        self.ids, self.calls = ids, []

    def query(self, state, count):
        self.calls.append(count)
        return self.ids[:count]


def _frequencies(vocab=200):
    counts = torch.ones(vocab)
    counts[:20] = 100
    return TokenFrequencies(vocab, counts, 1, "unit", successors={})


def test_policy_adds_semantic_neighbours_of_the_state():
    index = FixedIndex([150, 151, 152])
    policy = EvoSpecPolicy(40, _frequencies(), 200, PolicySettings(semantic_count=3), semantic=index)
    policy.reset([1, 2])
    policy.observe([3], state=torch.zeros(8))
    assert {150, 151, 152} <= set(policy.active_ids().tolist()) and index.calls == [3]
    policy.observe([4])  # no state (an eager drafter): no query
    assert index.calls == [3]


def test_drift_fires_on_a_topic_switch_and_refreshes_the_tail():
    index = FixedIndex(list(range(100, 200)))
    policy = EvoSpecPolicy(60, _frequencies(), 200, PolicySettings(
        semantic_count=2, drift=DriftSettings(warmup=4, boost=8, keep_steps=0)), semantic=index)
    policy.reset([])
    topic_a, topic_b = [30, 31, 32, 33], [60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71]
    for step in range(20):  # one topic: its tokens repeat, the set holds them, no drift
        policy.active_ids()
        policy.observe(topic_a[step % 2 * 2 : step % 2 * 2 + 2], state=torch.zeros(8))
    assert policy.drifts == 0
    for step in range(4):  # a new topic: every token is new
        policy.active_ids()
        policy.observe(topic_b[3 * step : 3 * step + 3], state=torch.zeros(8))
    assert policy.drifts >= 1
    assert 16 in index.calls  # the boosted query after the drift
    assert 30 not in policy.stamp  # the old topic's evidence was dropped
