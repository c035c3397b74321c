"""The EvoSpec vLLM plugin without a server: the resident-row map, the shared vocabulary, the living export
and the plugin's registration metadata (vLLM itself: tests/test_serve.py)."""

from __future__ import annotations

import json
from importlib.metadata import entry_points

import pytest
import torch
from safetensors.torch import load_file

from evospec.bundle.export import export_drafter
from evospec.core.errors import CheckpointError, SettingsError
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.serving.living import (
    ARCHITECTURE,
    FORMAT,
    LivingSpec,
    load_shared_vocabulary,
    make_shared_vocabulary,
    policy_size,
)
from evospec.serving.resident_rows import ResidentRows
from evospec.train.demo_pair import ASSET_DIR

V, D = 64, 4


def reservoir(n: int = V) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(n)
    return ids, torch.arange(n, dtype=torch.float32)[:, None].repeat(1, D)  # row of token t is all t


def head_for(resident: ResidentRows) -> tuple[torch.Tensor, torch.Tensor]:
    weight, d2t = torch.empty(resident.k, D), torch.empty(resident.k, dtype=torch.long)
    resident.load_into(weight, d2t)
    return weight, d2t


def check_head(resident: ResidentRows, weight: torch.Tensor, d2t: torch.Tensor) -> None:
    """vLLM's reading: draft id k scores weight[k] and stands for target id k + d2t[k]."""
    targets = torch.arange(resident.k) + d2t
    assert torch.equal(targets, resident.ids)
    assert torch.equal(weight[:, 0], targets.float())  # each column holds its own token's row
    assert targets.unique().numel() == resident.k


def test_a_change_copies_only_entering_rows_into_leaving_columns_in_place():
    resident = ResidentRows(*reservoir(), initial=torch.tensor([3, 7, 9, 20]))
    weight, d2t = head_for(resident)
    storage = weight.data_ptr(), d2t.data_ptr()
    change = resident.plan(torch.tensor([40, 9, 3, 41]))  # 7 and 20 leave, 40 and 41 enter
    assert len(change) == 2 and sorted(change.ids.tolist()) == [40, 41] and sorted(change.cols.tolist()) == [1, 3]
    resident.apply(change, weight, d2t)
    check_head(resident, weight, d2t)
    assert resident.ids[[0, 2]].tolist() == [3, 9]  # retained tokens kept their columns
    assert (weight.data_ptr(), d2t.data_ptr()) == storage and weight.shape == (4, D)
    assert len(resident.plan(torch.tensor([3, 9, 40, 41]))) == 0  # the same set in another order: nothing to copy


def test_random_sequences_of_sets_keep_the_map_a_consistent_permutation():
    g = torch.Generator().manual_seed(0)
    resident = ResidentRows(*reservoir(), initial=torch.randperm(V, generator=g)[:16])
    weight, d2t = head_for(resident)
    for _ in range(50):
        wanted = torch.randperm(V, generator=g)[:16]
        change = resident.plan(wanted)
        expected = int((~torch.isin(wanted, resident.ids)).sum())
        resident.apply(change, weight, d2t)
        assert len(change) == expected
        assert set(resident.ids.tolist()) == set(wanted.tolist())
        check_head(resident, weight, d2t)


def test_bad_sets_are_refused_by_name():
    resident = ResidentRows(torch.tensor([1, 2, 3, 5, 8]), torch.zeros(5, D), initial=torch.tensor([1, 2]))
    with pytest.raises(SettingsError, match="exactly K=2"):
        resident.plan(torch.tensor([1, 2, 3]))
    with pytest.raises(SettingsError, match="repeat"):
        resident.plan(torch.tensor([2, 2]))
    with pytest.raises(SettingsError, match="no reservoir row"):
        resident.plan(torch.tensor([1, 4]))


def frequencies(successors: dict[int, list[int]] | None = None) -> TokenFrequencies:
    counts = torch.arange(V, 0, -1)  # token 0 most frequent
    return TokenFrequencies(V, counts, 1, "unit", successors={} if successors is None else successors)


def test_frspec_is_static_and_does_no_work():
    shared = make_shared_vocabulary(LivingSpec("frspec:8"), *reservoir(), frequencies(), V, background=False)
    assert shared.static and sorted(shared.resident.ids.tolist()) == list(range(8))
    shared.observe([[60, 61, 62]])
    assert shared.next_change() is None


def test_evospec_brings_a_requests_context_into_the_shared_set():
    shared = make_shared_vocabulary(LivingSpec("evospec:8"), *reservoir(), frequencies({50: [51]}), V,
                                    background=False)
    before = set(shared.resident.ids.tolist())
    assert before == set(range(8))  # no evidence yet: the most frequent tokens
    weight, d2t = head_for(shared.resident)
    shared.observe([[40, 41], [50]])  # two requests of one batch: each one's tokens and what follows 50
    change = shared.next_change()
    shared.resident.apply(change, weight, d2t)
    after = set(shared.resident.ids.tolist())
    assert {40, 41, 50, 51} <= after and len(after) == 8
    assert after >= set(range(4))  # the frequency core (half of K) stays
    check_head(shared.resident, weight, d2t)
    assert shared.counters.rows_copied == len(change) == 4


def test_tokens_without_a_row_are_never_chosen():
    ids, rows = torch.arange(0, V, 2), torch.zeros(V // 2, D)  # only even tokens have rows
    shared = make_shared_vocabulary(LivingSpec("evospec:8"), ids, rows, frequencies(), V, background=False)
    shared.observe([[41, 43, 44]])
    shared.resident.apply(shared.next_change(), torch.zeros(8, D), None)
    assert all(t % 2 == 0 for t in shared.resident.ids.tolist()) and 44 in shared.resident.ids.tolist()


def test_the_worker_thread_plans_without_blocking_the_step():
    shared = make_shared_vocabulary(LivingSpec("evospec:8"), *reservoir(), frequencies(), V, background=True)
    try:
        shared.observe([[40, 41, 42]])
        shared._job.result(timeout=30)  # let the worker finish; next_change itself never waits
        change = shared.next_change()
        assert change is not None and {40, 41, 42} <= set(change.ids.tolist())
        assert shared.next_change() is None  # nothing new observed: no change
    finally:
        shared.close()


@pytest.mark.parametrize("policy", ["evospec", "frspec:8:x", "evospec:1", "evospec:K"])
def test_bad_policy_names_are_refused(policy):
    with pytest.raises(SettingsError, match="living vocabulary"):
        policy_size(policy)


@pytest.fixture
def successor_frequencies(tmp_path):
    counts = torch.randint(1, 1000, (512,), generator=torch.Generator().manual_seed(0))
    path = tmp_path / "freq.json"
    TokenFrequencies(512, counts, documents=1, source="test", successors={5: [6, 7]}).save(path)
    return path


def test_export_writes_a_living_drafter_the_plugin_reads(tmp_path, successor_frequencies):
    summary = export_drafter(tmp_path / "living", "vllm", "evospec:96", drafter_dir=ASSET_DIR / "drafter",
                             frequencies=successor_frequencies)
    config = json.loads((tmp_path / "living" / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and config["draft_vocab_size"] == 96 == summary.draft_vocab_size
    assert config["evospec"]["format"] == FORMAT and config["evospec"]["policy"] == "evospec:96"
    assert sorted(p.name for p in (tmp_path / "living").glob("*.safetensors")) == ["model.safetensors"]
    weights = load_file(str(tmp_path / "living" / "model.safetensors"))
    original = load_file(str(ASSET_DIR / "drafter" / "model.safetensors"))
    own = torch.arange(original["d2t"].numel()) + original["d2t"]
    stored = load_file(str(tmp_path / "living" / "evospec" / "reservoir.safetensors"))
    assert torch.equal(stored["ids"], own.sort().values)  # a bare drafter: its own rows are the reservoir
    row_of = {int(t): i for i, t in enumerate(own.tolist())}
    assert torch.equal(stored["rows"], original["lm_head.weight"][[row_of[int(t)] for t in stored["ids"]]])
    shared = load_shared_vocabulary(tmp_path / "living", background=False)
    exported_ids = torch.arange(96) + weights["d2t"]
    assert torch.equal(shared.resident.ids, exported_ids)  # the plugin starts from the exported rows
    assert torch.equal(weights["lm_head.weight"], stored["rows"][[int((stored["ids"] == t).nonzero()) for t in exported_ids]])


def test_living_export_errors_are_one_line(tmp_path, successor_frequencies):
    with pytest.raises(SettingsError, match="--format vllm"):
        export_drafter(tmp_path / "x", "eagle", "evospec:96", drafter_dir=ASSET_DIR / "drafter",
                       frequencies=successor_frequencies)
    with pytest.raises(SettingsError, match="needs --frequencies"):
        export_drafter(tmp_path / "x", "vllm", "evospec:96", drafter_dir=ASSET_DIR / "drafter")
    with pytest.raises(SettingsError, match="reservoir has rows for 384"):
        export_drafter(tmp_path / "x", "vllm", "evospec:400", drafter_dir=ASSET_DIR / "drafter",
                       frequencies=successor_frequencies)
    with pytest.raises(CheckpointError, match="not a living-vocabulary drafter"):
        load_shared_vocabulary(ASSET_DIR / "drafter")


def test_the_plugin_is_registered_for_vllm_in_the_package_metadata():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["entry-points"]["vllm.general_plugins"] == {
        "evospec": "evospec.serving.vllm_plugin:register"}
    assert "vllm" in pyproject["project"]["optional-dependencies"]
    assert not any("vllm" in d for d in pyproject["project"]["dependencies"])
    found = [e for e in entry_points(group="vllm.general_plugins") if e.name == "evospec"]
    if found:  # an install made after the entry point was added (a stale editable install lacks it)
        assert found[0].value == "evospec.serving.vllm_plugin:register"


def test_the_soak_mix_is_seeded_and_holds_every_kind_of_request():
    from evospec.eval.soak import MALFORMED, SoakSettings, request_mix

    settings = SoakSettings(requests=400, max_tokens=32, seed=3)
    mix = request_mix(settings, prompts=5, count=400)
    assert mix == request_mix(settings, prompts=5, count=400)  # the same seed, the same requests
    malformed = [r for r in mix if r.malformed]
    cancelled = [r for r in mix if r.cancel_after is not None]
    sampled = [r for r in mix if r.temperature > 0]
    assert {r.malformed for r in malformed} == set(MALFORMED)
    assert 0.02 < len(malformed) / 400 < 0.1 and 0.05 < len(cancelled) / 400 < 0.16 and len(sampled) > 60
    assert not any(r.malformed and (r.cancel_after or r.temperature) for r in mix)
    assert all(1 <= r.max_tokens <= 32 and 0 <= r.prompt < 5 for r in mix)
    assert [r.index for r in request_mix(settings, 5, 3, first=50)] == [50, 51, 52]


def test_prometheus_counters_are_summed_over_replicas():
    from evospec.eval.loadtest import speculation_counters

    lines = (
        "# HELP vllm:spec_decode_num_drafts_total Number of drafts.",
        'vllm:spec_decode_num_drafts_total{engine="0",model_name="t"} 10.0',
        'vllm:spec_decode_num_drafts_total{engine="1",model_name="t"} 5.0',
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="t",position="0"} 8.0',
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="t",position="0"} 4.0',
        'vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="t",position="1"} 3.0',
        'vllm:spec_decode_num_drafts_created{engine="0",model_name="t"} 1.7e9',
    )
    assert speculation_counters("\n".join(lines)) == (15.0, {0: 12.0, 1: 3.0})


def test_the_worker_plans_against_the_ids_resident_when_its_change_is_applied():
    shared = make_shared_vocabulary(LivingSpec("evospec:8"), *reservoir(), frequencies(), V, background=True)
    weight, d2t = head_for(shared.resident)
    try:
        for step, tokens in enumerate(([40, 41], [42, 43, 44], [50, 51], [52], [60, 61, 62, 63])):
            change = shared.next_change()
            if change is not None:
                shared.resident.apply(change, weight, d2t)
                check_head(shared.resident, weight, d2t)
            shared.observe([tokens])
            assert shared._job is not None  # submitted after the apply, with the ids now resident
            planned = shared._job.result(timeout=30)
            assert torch.equal(planned.against, shared.resident.ids), step
    finally:
        shared.close()
