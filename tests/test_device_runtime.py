"""The compiled runtime's GPU path: static cache shapes (checked on CPU), CUDA graphs and uploads (on a GPU)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.bundle.compile import compile_bundle
from evospec.passes.base import CompileSettings
from evospec.runtime.bundle import load_compiled_drafter
from evospec.runtime.device_upload import DeviceUploader
from evospec.train.demo_pair import ASSET_DIR

TARGET, DRAFTER = ASSET_DIR / "target", ASSET_DIR / "drafter"
CUDA = torch.cuda.is_available()
TREE = DecodeSettings(max_new_tokens=40, draft_tree="tree", draft_depth=4, draft_topk=4, draft_tokens=12)


@pytest.fixture(scope="module")
def torch_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("device") / "bundle"
    compile_bundle(TARGET, DRAFTER, out, CompileSettings(backend="torch", buckets=(256, 512), index_dims=0))
    return out


def test_static_past_drafts_exactly_like_the_dynamic_cache(torch_bundle):
    """The trunk over the whole capacity with a mask (the CUDA-graph shape) proposes the same drafts."""
    dynamic = SpeculativeGenerator.from_bundle(torch_bundle, TARGET)
    static = SpeculativeGenerator.from_bundle(torch_bundle, TARGET)
    static.drafter.static_past = True
    prompt = dynamic.encode("def walk(self, node):\n    ")
    a, b = dynamic.generate(prompt, TREE), static.generate(prompt, TREE)
    plain = dynamic.generate(prompt, DecodeSettings(max_new_tokens=40, use_draft=False))
    assert a.token_ids == b.token_ids == plain.token_ids
    assert a.stats.accepted_lengths == b.stats.accepted_lengths and b.stats.mean_accepted_length > 1.5


@pytest.mark.slow  # the static cache drafts like the dynamic one in the default run (test_static_past_drafts_...)
def test_static_cache_starts_empty_on_every_call(torch_bundle):
    """The static (CUDA-graph) cache is kept between calls for its shape, not its contents: twelve consecutive
    calls draft exactly as a fresh generator does, accepted lengths included (a cache that kept growing attended
    to the previous call's keys, lost acceptance, and overflowed on the eleventh call)."""
    static = SpeculativeGenerator.from_bundle(torch_bundle, TARGET)
    static.drafter.static_past = True
    prompts = [static.encode(text) for text in ("def walk(self, node):\n    ", "The court held that ",
                                                "class Parser:\n    def __init__(self):\n        ")]
    first = {}
    for call in range(12):
        prompt = prompts[call % len(prompts)]
        result = static.generate(prompt, TREE)
        key = call % len(prompts)
        if key not in first:
            fresh = SpeculativeGenerator.from_bundle(torch_bundle, TARGET)
            fresh.drafter.static_past = True
            first[key] = fresh.generate(prompt, TREE)
        assert result.token_ids == first[key].token_ids, call
        assert result.stats.accepted_lengths == first[key].stats.accepted_lengths, call


def test_uploader_on_cpu_is_the_identity():
    ids = torch.arange(5)
    assert DeviceUploader("cpu").upload("ids", ids) is ids


class _CopyingUploader(DeviceUploader):
    """A DeviceUploader whose transport is a host copy: ``patch`` takes its device path (what runs on a GPU)
    and every byte it sends is counted, so the delta logic is checked here; the CUDA copy itself is checked
    by the GPU tests below."""

    def __init__(self) -> None:
        super().__init__("cpu")
        self.cuda = True

    def upload(self, name: str, host: torch.Tensor) -> torch.Tensor:
        self.bytes_sent += host.numel() * host.element_size()
        return host.clone()


@pytest.fixture(scope="module")
def patched_drafter(torch_bundle):
    drafter = SpeculativeGenerator.from_bundle(torch_bundle, TARGET).drafter
    drafter._to_map = drafter._to_rows = _CopyingUploader()
    drafter.active_rows.upload = _CopyingUploader()  # its row deltas are counted apart
    drafter._use(drafter.plan)
    return drafter


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.booleans(), st.integers(1, 400), st.integers(0, 30), st.integers(0, 10**6)),
                min_size=1, max_size=6))
def test_device_id_maps_follow_each_plan_by_its_delta(patched_drafter, steps):
    """On a GPU the id map and bias of a changed plan go up as the changed columns only (same bucket and
    size), the bias not at all; whatever the sequence of sets, the device copies equal the host plan."""
    drafter, vocab = patched_drafter, patched_drafter.config.vocab_size
    current = drafter.plan.ids[: drafter.plan.size]
    for keep_size, size, swaps, seed in steps:
        g = torch.Generator().manual_seed(seed)
        if keep_size:  # a few ids leave, as many enter: the delta path
            size = current.numel()
            outside = torch.ones(vocab, dtype=torch.bool)
            outside[current] = False
            leaving = torch.randperm(size, generator=g)[: min(swaps, size)]
            entering = torch.nonzero(outside).flatten()[torch.randperm(int(outside.sum()), generator=g)[: leaving.numel()]]
            current = current.clone()
            current[leaving] = entering
        else:
            current = torch.randperm(vocab, generator=g)[:size]
        before, sent = drafter.plan, drafter._to_map.bytes_sent
        drafter.set_active(current)
        plan = drafter.plan
        assert torch.equal(drafter._id_map, plan.ids[: plan.size]) and torch.equal(drafter._bias, plan.bias)
        assert torch.equal(drafter.active_rows.rows, drafter.active_rows.reservoir[plan.ids])
        if plan.bucket == before.bucket and plan.size == before.size:
            assert drafter._to_map.bytes_sent - sent == 2 * 8 * drafter.moved_rows  # columns and ids, int64
        else:
            assert drafter._to_map.bytes_sent - sent >= 8 * plan.size  # a new shape: the whole map


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device; torch sees none")
def test_uploads_arrive_in_order_on_the_gpu():
    uploader = DeviceUploader("cuda")
    outs = [uploader.upload("ids", torch.arange(i, i + 1000)) for i in range(20)]  # the staging ring wraps 5 times
    for i, out in enumerate(outs):
        assert out.device.type == "cuda" and torch.equal(out.cpu(), torch.arange(i, i + 1000))
    base = uploader.upload("map", torch.arange(1000))
    new = torch.arange(1000)
    new[[3, 500]] = torch.tensor([7000, 7001])
    sent = uploader.bytes_sent
    out = uploader.patch("map", base, new, torch.tensor([3, 500]))
    assert torch.equal(out.cpu(), new) and torch.equal(base.cpu(), torch.arange(1000))  # the old map is kept
    assert uploader.bytes_sent - sent == 4 * 8  # two columns and two ids


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device; torch sees none")
def test_cuda_graph_runtime_is_exact_and_replays(torch_bundle):
    generator = SpeculativeGenerator.from_bundle(torch_bundle, TARGET, device="cuda")
    drafter = generator.drafter
    assert drafter.static_past and drafter.reservoir.device.type == "cuda"
    prompt = generator.encode("class Parser:\n    def __init__(self):\n        ")
    first = generator.generate(prompt, TREE)
    captures = {name: r.captures for name, r in drafter.runners.items()}
    second = generator.generate(prompt, TREE)
    plain = generator.generate(prompt, DecodeSettings(max_new_tokens=40, use_draft=False))
    assert first.token_ids == second.token_ids == plain.token_ids
    assert first.stats.accepted_lengths == second.stats.accepted_lengths  # the second call starts from an empty cache
    on_cpu = SpeculativeGenerator.from_bundle(torch_bundle, TARGET).generate(prompt, TREE)
    assert first.stats.accepted_lengths == on_cpu.stats.accepted_lengths  # drafts like the eager CPU drafter
    assert captures["trunk"] > 0 and captures["head_active"] > 0
    assert drafter.runners["trunk"].borrowed == {"new_keys", "new_values", "normed"}  # the rest are cloned
    assert {name: r.captures for name, r in drafter.runners.items()} == captures  # the second call only replays
    eager, _ = load_compiled_drafter(torch_bundle, generator.target, cuda_graphs=False)
    assert not eager.static_past


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device; torch sees none")
def test_cuda_graph_cache_starts_empty_on_every_call(torch_bundle):
    """The bug the issue found on the graphed runtime: its static cache grew across calls, acceptance fell and the
    eleventh call failed. Twelve consecutive graphed calls over three prompts draft as each prompt's first call
    did (accepted lengths, not only tokens), and every output is plain decoding's."""
    generator = SpeculativeGenerator.from_bundle(torch_bundle, TARGET, device="cuda")
    assert generator.drafter.static_past
    prompts = [generator.encode(text) for text in ("def walk(self, node):\n    ", "The court held that ",
                                                   "class Parser:\n    def __init__(self):\n        ")]
    plain = [generator.generate(p, DecodeSettings(max_new_tokens=40, use_draft=False)).token_ids for p in prompts]
    first: dict[int, tuple[list[int], list[int]]] = {}
    for call in range(12):
        key = call % len(prompts)
        result = generator.generate(prompts[key], TREE)
        seen = (result.token_ids, result.stats.accepted_lengths)
        first.setdefault(key, seen)
        assert result.token_ids == plain[key], call
        assert seen == first[key], call
