"""EAGLE-3 checkpoints in the official layout: round trip, and a clear error for each bad input."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from evospec import CheckpointError, CompatibilityError, SpeculativeGenerator
from evospec.runtime.checkpoint import load_drafter, read_config, save_drafter
from evospec.runtime.drafter import DrafterKVCache
from evospec.testing.tiny import TINY_SHAPES, TinyShape, tiny_drafter, tiny_target


def drafter_logits(drafter, d: int) -> torch.Tensor:
    torch.manual_seed(0)
    hidden = torch.randn(1, 5, 3 * d)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    cache = DrafterKVCache(drafter.config, 8, torch.device("cpu"), torch.float32)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    with torch.no_grad():
        return drafter(hidden, ids, torch.arange(5)[None], cache, 0, mask)[1]


def load(directory, model):
    return load_drafter(
        directory,
        target_embeddings=model.get_input_embeddings(),
        target_hidden_size=model.config.hidden_size,
        target_vocab_size=model.config.vocab_size,
    )


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("with_embeddings", [False, True])
def test_round_trip_gives_same_logits(tmp_path, safetensors, with_embeddings):
    model = tiny_target(TINY_SHAPES["llama"], seed=1)
    drafter = tiny_drafter(model, draft_vocab=40, seed=2, with_embeddings=with_embeddings)
    save_drafter(drafter, tmp_path / "d", safetensors=safetensors)
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == ["config.json", "model.safetensors" if safetensors else "pytorch_model.bin"]
    config = json.loads((tmp_path / "d" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLMEagle3"] and config["draft_vocab_size"] == 40
    loaded = load(tmp_path / "d", model)
    assert torch.equal(drafter_logits(drafter, 32), drafter_logits(loaded, 32))
    assert torch.equal(loaded.d2t, drafter.d2t) and torch.equal(loaded.t2d, drafter.t2d)


def test_official_key_names(checkpoint_dirs):
    _, drafter_dir, _, _ = checkpoint_dirs
    keys = set(load_file(str(drafter_dir / "model.safetensors")))
    expected = {
        "fc.weight", "norm.weight", "lm_head.weight", "d2t", "t2d",
        "midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight", "midlayer.post_attention_layernorm.weight",
        "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight",
        "midlayer.self_attn.v_proj.weight", "midlayer.self_attn.o_proj.weight",
        "midlayer.mlp.gate_proj.weight", "midlayer.mlp.up_proj.weight", "midlayer.mlp.down_proj.weight",
    }
    assert keys == expected


def test_tap_layers_from_config(tmp_path, checkpoint_dirs):
    _, drafter_dir, _, _ = checkpoint_dirs
    cfg = json.loads((drafter_dir / "config.json").read_text())
    cfg["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [1, 2, 3]}
    (drafter_dir / "config.json").write_text(json.dumps(cfg))
    assert read_config(drafter_dir).tap_layers == (1, 2, 3)


def rewrite(path, fn):
    weights = load_file(str(path))
    fn(weights)
    save_file(weights, str(path))


def edit_config(directory, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def bad_d2t_range(w):
    w["d2t"][3] = 10_000


def bad_t2d(w):
    w["t2d"] = torch.zeros_like(w["t2d"])


def duplicate_target(w):
    w["d2t"][1] = w["d2t"][0] - 1  # draft ids 0 and 1 map to the same target id


CASES = {
    "missing-dir": (lambda d: __import__("shutil").rmtree(d), CheckpointError, "does not exist"),
    "missing-config": (lambda d: (d / "config.json").unlink(), CheckpointError, "config.json"),
    "bad-json": (lambda d: (d / "config.json").write_text("{"), CheckpointError, "not valid JSON"),
    "not-eagle3": (lambda d: edit_config(d, architectures=["GPT2LMHeadModel"]), CheckpointError, "not an EAGLE-3"),
    "no-weights": (lambda d: (d / "model.safetensors").unlink(), CheckpointError, "no weights found"),
    "truncated": (
        lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
        CheckpointError, "cannot read weights",
    ),
    "missing-key": (lambda d: rewrite(d / "model.safetensors", lambda w: w.pop("fc.weight")), CheckpointError, "missing weights ['fc.weight']"),
    "extra-key": (
        lambda d: rewrite(d / "model.safetensors", lambda w: w.update(extra=torch.zeros(1))),
        CheckpointError, "unexpected weights ['extra']",
    ),
    "wrong-shape": (
        lambda d: rewrite(d / "model.safetensors", lambda w: w.update({"lm_head.weight": torch.zeros(7, 32)})),
        CheckpointError, "'lm_head.weight' has shape (7, 32)",
    ),
    "d2t-out-of-range": (lambda d: rewrite(d / "model.safetensors", bad_d2t_range), CheckpointError, "outside [0, 96)"),
    "t2d-inconsistent": (lambda d: rewrite(d / "model.safetensors", bad_t2d), CheckpointError, "must be the same set"),
    "d2t-duplicate": (lambda d: rewrite(d / "model.safetensors", duplicate_target), CheckpointError, "same target id"),
    "hidden-size-not-a-number": (lambda d: edit_config(d, hidden_size="big"), CheckpointError, "'hidden_size' must be an integer, got 'big'"),
    "eps-not-a-number": (lambda d: edit_config(d, rms_norm_eps="tiny"), CheckpointError, "'rms_norm_eps' must be a number, got 'tiny'"),
    "vocab-mismatch": (lambda d: edit_config(d, vocab_size=100), CompatibilityError, "vocab_size 100"),
    "hidden-mismatch": (lambda d: edit_config(d, target_hidden_size=48), CompatibilityError, "target hidden size 48"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_checkpoint_gives_clear_error(checkpoint_dirs, case):
    _, drafter_dir, model, _ = checkpoint_dirs
    corrupt, error, message = CASES[case]
    corrupt(drafter_dir)
    with pytest.raises(error) as info:
        load(drafter_dir, model)
    assert message in str(info.value)
    if case not in ("missing-dir",):
        assert str(drafter_dir) in str(info.value)


def test_tap_layers_out_of_range(checkpoint_dirs):
    target_dir, drafter_dir, _, _ = checkpoint_dirs
    edit_config(drafter_dir, eagle_aux_hidden_state_layer_ids=[1, 2, 9])
    with pytest.raises(CompatibilityError, match="target has 4 layers"):
        SpeculativeGenerator.from_paths(target_dir, drafter_dir)


def test_target_errors(tmp_path, checkpoint_dirs):
    _, drafter_dir, _, _ = checkpoint_dirs
    with pytest.raises(CheckpointError, match="does not exist"):
        SpeculativeGenerator.from_paths(tmp_path / "nope", drafter_dir)
    with pytest.raises(CheckpointError, match="drafter checkpoint"):
        SpeculativeGenerator.from_paths(drafter_dir, drafter_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        SpeculativeGenerator.from_paths(tmp_path / "empty", None)


def test_bad_target_weights(checkpoint_dirs):
    target_dir, drafter_dir, _, _ = checkpoint_dirs
    weights = target_dir / "model.safetensors"
    tensors = load_file(str(weights))
    tensors.pop("model.layers.1.mlp.up_proj.weight")
    save_file(tensors, str(weights))
    with pytest.raises(CheckpointError, match=r"missing keys: \['model.layers.1.mlp.up_proj.weight'\]"):
        SpeculativeGenerator.from_paths(target_dir, drafter_dir)
    weights.write_bytes(weights.read_bytes()[:64])
    with pytest.raises(CheckpointError, match="cannot load this causal LM"):
        SpeculativeGenerator.from_paths(target_dir, drafter_dir)


@pytest.mark.parametrize("family", ["qwen2", pytest.param("qwen3", marks=pytest.mark.slow),
                                    pytest.param("mistral", marks=pytest.mark.slow)])  # all four decode in test_greedy_exactness
def test_loads_other_target_families(tmp_path, family):
    model = tiny_target(TINY_SHAPES[family], seed=3)
    model.save_pretrained(tmp_path / "t")
    save_drafter(tiny_drafter(model, draft_vocab=32, seed=4), tmp_path / "d")
    generator = SpeculativeGenerator.from_paths(tmp_path / "t", tmp_path / "d")
    assert type(generator.target.model).__name__.lower().startswith(family)
    assert len(generator.generate([1, 2, 3]).token_ids) == 64


def test_hidden_size_mismatch_with_other_target(tmp_path, checkpoint_dirs):
    _, drafter_dir, _, _ = checkpoint_dirs
    other = tiny_target(TinyShape(hidden_size=48, heads=4, kv_heads=2), seed=1)
    other.save_pretrained(tmp_path / "wide")
    with pytest.raises(CompatibilityError, match="target hidden size 32, the target has 48"):
        SpeculativeGenerator.from_paths(tmp_path / "wide", drafter_dir)


def test_tokenizer_that_does_not_match_the_target(checkpoint_dirs):
    """A tokenizer with more tokens than the model has embedding rows is refused at load time."""
    from evospec.runtime.target import load_target

    from .conftest import char_tokenizer

    target_dir, _, model, _ = checkpoint_dirs
    tok = char_tokenizer()  # 97 tokens; the tiny target has 96 rows
    assert len(tok) > model.get_input_embeddings().weight.shape[0]
    tok.save_pretrained(target_dir)
    with pytest.raises(CheckpointError, match="tokenizer has 97 tokens but the model's embedding has 96 rows"):
        load_target(target_dir)


@pytest.mark.parametrize(("taps", "layers", "problem"), [
    ((2, 3, 3), None, "repeat a layer"), ((2, 2, 1), None, "repeat a layer"), ((3, 1, 2), None, "ascending"),
    ((0, 2, 3), 4, "leave 1..3"), ((1, 2, 4), 4, "leave 1..3"), ((1, 2, 3), 4, None), ((2, 4, 5), 8, None),
])
def test_tap_problem(taps, layers, problem):
    from evospec.runtime.drafter import tap_problem

    found = tap_problem(taps, layers)
    assert found is None if problem is None else problem in found


def test_unservable_taps_warn_on_load_naming_file_and_taps(tmp_path, caplog):
    """EvoSpec loads them (they decode here), but says which file and taps other engines would fail on."""
    model = tiny_target(TINY_SHAPES["llama"], seed=1)  # 4 layers: default taps (2, 2, 1)
    for name, taps in (("dup", (2, 3, 3)), ("unordered", (3, 1, 2)), ("good", (1, 2, 3)), ("default", None)):
        save_drafter(tiny_drafter(model, draft_vocab=40, seed=2, tap_layers=taps), tmp_path / name)
    cfg = json.loads((tmp_path / "good" / "config.json").read_text())
    assert cfg["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]  # where vLLM reads them first
    assert cfg["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    assert "eagle_aux_hidden_state_layer_ids" not in json.loads((tmp_path / "default" / "config.json").read_text())

    def warnings(name, layers=None):
        caplog.clear()
        with caplog.at_level("WARNING", logger="evospec.runtime.checkpoint"):
            load_drafter(tmp_path / name, target_embeddings=model.get_input_embeddings(), target_hidden_size=32,
                         target_vocab_size=96, target_num_layers=layers)
        return [r.getMessage() for r in caplog.records]

    (dup,) = warnings("dup")
    assert str(tmp_path / "dup" / "config.json") in dup and "(2, 3, 3) repeat a layer" in dup and "vLLM" in dup
    assert "not in ascending order" in warnings("unordered")[0]
    assert warnings("good", 4) == [] and warnings("default") == []  # no layer count: the default is unknown
    (default,) = warnings("default", 4)
    assert "(2, 2, 1) repeat a layer (EAGLE-3's default for 4 layers)" in default


def test_generator_warns_on_default_taps_that_repeat(checkpoint_dirs, caplog):
    target_dir, drafter_dir, _, _ = checkpoint_dirs  # 4-layer target, drafter without explicit taps
    with caplog.at_level("WARNING", logger="evospec.runtime.checkpoint"):
        SpeculativeGenerator.from_paths(target_dir, drafter_dir)
    assert any("(2, 2, 1) repeat a layer" in r.getMessage() for r in caplog.records)
