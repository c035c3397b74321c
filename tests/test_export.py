"""`evospec export`: drafters for EAGLE, vLLM and SGLang with a chosen static vocabulary, read back exactly."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from evospec import DecodeSettings, SettingsError, SpeculativeGenerator
from evospec.bundle.compile import compile_bundle
from evospec.bundle.export import TOKEN_MAP_FILE, export_drafter
from evospec.passes.base import CompileSettings
from evospec.runtime.bundle import load_reservoir
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.train.demo_pair import ASSET_DIR

from .test_cli import run

TARGET, DRAFTER = ASSET_DIR / "target", ASSET_DIR / "drafter"
SETTINGS = DecodeSettings(max_new_tokens=24, draft_tree="chain")
PROMPT = [5, 17, 33, 2]


def run_pair(drafter_dir, tap_numbering="input"):
    generator = SpeculativeGenerator.from_paths(TARGET, drafter_dir, tap_numbering=tap_numbering)
    result = generator.generate(PROMPT, SETTINGS)
    return generator.target.tap_layers, result.token_ids, result.stats.accepted_lengths


def draft_ids(directory):
    weights = load_file(str(directory / "model.safetensors"))
    return torch.arange(weights["d2t"].numel()) + weights["d2t"], weights


@pytest.fixture(scope="module")
def frequencies(tmp_path_factory):
    counts = torch.randint(1, 1000, (512,), generator=torch.Generator().manual_seed(0))
    path = tmp_path_factory.mktemp("freq") / "freq.json"
    TokenFrequencies(512, counts, documents=1, source="test").save(path)
    return path


@pytest.mark.parametrize("fmt", ["eagle", "vllm", "sglang"])
def test_own_vocabulary_exports_draft_exactly_like_the_original(tmp_path, fmt):
    summary = export_drafter(tmp_path / fmt, fmt, drafter_dir=DRAFTER)
    config = json.loads((tmp_path / fmt / "config.json").read_text())
    original = json.loads((DRAFTER / "config.json").read_text())["eagle_aux_hidden_state_layer_ids"]
    expected = [t - 1 for t in original] if fmt == "sglang" else original  # SGLang counts layer outputs
    assert config["eagle_aux_hidden_state_layer_ids"] == expected == summary.tap_ids_written
    assert "target_hidden_size" not in config
    assert run_pair(tmp_path / fmt, "output" if fmt == "sglang" else "input") == run_pair(DRAFTER)
    if fmt == "sglang":
        assert torch.load(tmp_path / fmt / TOKEN_MAP_FILE) == draft_ids(DRAFTER)[0].tolist()
    else:
        assert not (tmp_path / fmt / TOKEN_MAP_FILE).exists()


def test_frspec_pruning_keeps_the_most_frequent_own_tokens_and_their_rows(tmp_path, frequencies):
    summary = export_drafter(tmp_path / "fr", "vllm", "frspec:100", drafter_dir=DRAFTER, frequencies=frequencies)
    own, original = draft_ids(DRAFTER)
    kept, exported = draft_ids(tmp_path / "fr")
    ranked = TokenFrequencies.load(frequencies).ranked(512)
    assert kept.tolist() == sorted(ranked[torch.isin(ranked, own)][:100].tolist())
    row = {int(t): i for i, t in enumerate(own)}
    assert torch.equal(exported["lm_head.weight"], original["lm_head.weight"][[row[int(t)] for t in kept]])
    assert (summary.draft_vocab_size, summary.rows_from_drafter, summary.rows_from_reservoir) == (100, 100, 0)
    generator = SpeculativeGenerator.from_paths(TARGET, tmp_path / "fr")
    plain = generator.generate(PROMPT, DecodeSettings(max_new_tokens=24, use_draft=False)).token_ids
    assert generator.generate(PROMPT, SETTINGS).token_ids == plain  # still exact


def test_from_a_bundle_tokens_outside_the_drafter_take_reservoir_rows(tmp_path, frequencies):
    bundle = tmp_path / "bundle"
    compile_bundle(TARGET, DRAFTER, bundle, CompileSettings(backend="torch", buckets=(512,), index_dims=0))
    summary = export_drafter(tmp_path / "fr", "eagle", "frspec:450", bundle_dir=bundle, frequencies=frequencies)
    kept, exported = draft_ids(tmp_path / "fr")
    assert kept.tolist() == sorted(TokenFrequencies.load(frequencies).ranked(450).tolist())
    assert summary.rows_from_reservoir == int((~torch.isin(kept, draft_ids(DRAFTER)[0])).sum()) > 0
    assert torch.equal(exported["lm_head.weight"], load_reservoir(bundle)[kept])


def test_bad_vocabularies_say_what_is_wrong(tmp_path):
    outside = tmp_path / "outside.json"
    own = set(draft_ids(DRAFTER)[0].tolist())
    outside.write_text(json.dumps([t for t in range(512) if t not in own][:3]))
    with pytest.raises(SettingsError, match="3 tokens are outside the drafter's own vocabulary"):
        export_drafter(tmp_path / "a", "vllm", str(outside), drafter_dir=DRAFTER)
    (tmp_path / "range.json").write_text("[1, 2, 9999]")
    with pytest.raises(SettingsError, match=r"token ids must be non-empty and in \[0, 512\)"):
        export_drafter(tmp_path / "b", "vllm", str(tmp_path / "range.json"), drafter_dir=DRAFTER)
    with pytest.raises(SettingsError, match="frspec:K needs --frequencies"):
        export_drafter(tmp_path / "c", "vllm", "frspec:10", drafter_dir=DRAFTER)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside.json", "range.json"]  # nothing half-written


def test_cli_export(tmp_path):
    proc = run("export", "--drafter", str(DRAFTER), "--out", str(tmp_path / "d"), "--format", "sglang")
    assert "384 draft tokens" in proc.stdout and TOKEN_MAP_FILE in proc.stdout
    bad = run("export", "--drafter", str(tmp_path / "missing"), "--out", str(tmp_path / "e"), "--format", "vllm",
              check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "does not exist" in bad.stderr
