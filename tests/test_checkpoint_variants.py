"""EAGLE-3 checkpoints as EAGLE, SpecForge, vLLM's speculators and DeepSpeed write them: each layout
loads to exactly the weights it holds, and each variant we do not implement is refused by name."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from evospec import CheckpointError
from evospec.runtime.checkpoint import load_drafter, read_config, save_drafter
from evospec.runtime.drafter import Eagle3Drafter
from evospec.testing.tiny import TINY_SHAPES, tiny_drafter, tiny_target


def load(directory, model):
    return load_drafter(directory, target_embeddings=model.get_input_embeddings(),
                        target_hidden_size=model.config.hidden_size, target_vocab_size=model.config.vocab_size)


def edit_config(directory, **changes):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(changes)
    (directory / "config.json").write_text(json.dumps(cfg))


def rewrite(directory, fn):
    weights = load_file(str(directory / "model.safetensors"))
    fn(weights)
    save_file(weights, str(directory / "model.safetensors"))


def same_weights(a: Eagle3Drafter, b: Eagle3Drafter) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_target_hidden_size_is_written_only_when_it_differs(checkpoint_dirs, tmp_path):
    _, drafter_dir, model, drafter = checkpoint_dirs
    assert "target_hidden_size" not in json.loads((drafter_dir / "config.json").read_text())  # upstream EAGLE then
    assert same_weights(load(drafter_dir, model), drafter)                                     # shares the embeddings
    wide = dataclasses.replace(drafter.config, target_hidden_size=2 * drafter.config.hidden_size)
    save_drafter(Eagle3Drafter(wide, has_embeddings=True), tmp_path / "wide")
    written = json.loads((tmp_path / "wide" / "config.json").read_text())
    assert written["target_hidden_size"] == 2 * drafter.config.hidden_size
    assert read_config(tmp_path / "wide").target_hidden_size == 2 * drafter.config.hidden_size


def test_eagle_training_config_architecture_is_read_when_the_weights_are_eagle3(checkpoint_dirs, caplog):
    target_dir, drafter_dir, model, drafter = checkpoint_dirs
    edit_config(drafter_dir, architectures=["LlamaForCausalLM"])
    with caplog.at_level(logging.INFO, logger="evospec.runtime.checkpoint"):
        assert same_weights(load(drafter_dir, model), drafter)
    assert "EAGLE-3-shaped weights" in caplog.text
    with pytest.raises(CheckpointError, match="is not an EAGLE-3 drafter"):  # a plain LM saying the same is refused
        read_config(target_dir)


def test_full_vocabulary_drafter_without_maps_gets_the_identity(tmp_path):
    model = tiny_target(TINY_SHAPES["llama"], seed=2)
    drafter = tiny_drafter(model, draft_vocab=None, seed=3)  # every target id
    save_drafter(drafter, tmp_path / "d")
    rewrite(tmp_path / "d", lambda w: (w.pop("d2t"), w.pop("t2d")))
    loaded = load(tmp_path / "d", model)
    assert torch.equal(loaded.d2t, torch.zeros(model.config.vocab_size, dtype=torch.long)) and bool(loaded.t2d.all())
    assert same_weights(loaded, drafter)


def test_reduced_vocabulary_without_maps_is_an_error(checkpoint_dirs):
    _, drafter_dir, model, _ = checkpoint_dirs
    rewrite(drafter_dir, lambda w: (w.pop("d2t"), w.pop("t2d")))
    with pytest.raises(CheckpointError, match="no d2t/t2d, but draft_vocab_size 48 < vocab_size"):
        load(drafter_dir, model)


@pytest.mark.parametrize("kept", ["d2t", "t2d"])
def test_one_map_implies_the_other(checkpoint_dirs, kept):
    _, drafter_dir, model, drafter = checkpoint_dirs
    rewrite(drafter_dir, lambda w: w.pop("t2d" if kept == "d2t" else "d2t"))
    assert same_weights(load(drafter_dir, model), drafter)


def test_rotary_buffers_are_ignored_other_extra_keys_are_not(checkpoint_dirs, caplog):
    _, drafter_dir, model, drafter = checkpoint_dirs
    rewrite(drafter_dir, lambda w: w.update({"midlayer.self_attn.rotary_emb.inv_freq": torch.ones(4)}))
    with caplog.at_level(logging.INFO, logger="evospec.runtime.checkpoint_weights"):
        assert same_weights(load(drafter_dir, model), drafter)
    assert "rotary_emb.inv_freq" in caplog.text
    rewrite(drafter_dir, lambda w: w.update({"midlayer.extra": torch.ones(4)}))
    with pytest.raises(CheckpointError, match=r"unexpected weights \['midlayer.extra'\]"):
        load(drafter_dir, model)


@pytest.mark.parametrize(("key", "value"), [("norm_output", False), ("fc_norm", True), ("norm_before_fc", True),
                                            ("logit_scale", 2.0), ("use_aux_hidden_state", False)])
@pytest.mark.parametrize("where", ["top", "eagle_config"])
def test_variants_we_do_not_implement_are_refused(checkpoint_dirs, key, value, where):
    _, drafter_dir, model, _ = checkpoint_dirs
    edit_config(drafter_dir, **({key: value} if where == "top" else {"eagle_config": {key: value}}))
    with pytest.raises(CheckpointError, match=f"{key} = {value!r} is an EAGLE-3 variant evospec does not implement"):
        load(drafter_dir, model)


def test_plain_values_of_the_variant_switches_load(checkpoint_dirs):
    _, drafter_dir, model, drafter = checkpoint_dirs
    edit_config(drafter_dir, norm_output=True, fc_norm=False, logit_scale=1.0, use_aux_hidden_state=True)
    assert same_weights(load(drafter_dir, model), drafter)


def test_sharded_checkpoint_loads_and_a_missing_shard_is_named(checkpoint_dirs):
    _, drafter_dir, model, drafter = checkpoint_dirs
    weights = load_file(str(drafter_dir / "model.safetensors"))
    (drafter_dir / "model.safetensors").unlink()
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        save_file({k: weights[k] for k in keys}, str(drafter_dir / shard))
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (drafter_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert same_weights(load(drafter_dir, model), drafter)
    (drafter_dir / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match="lists shard model-00002-of-00002.safetensors, which is missing"):
        load(drafter_dir, model)


def test_sglang_numbered_taps_are_read_as_the_layers_sglang_taps(tmp_path):
    """SpecForge lists taps as SGLang counts them (output of layer i = HF hidden_states[i + 1]): read with
    tap_numbering="output", such a drafter drafts exactly like the same drafter listed in EAGLE's numbering."""
    from evospec import DecodeSettings, SpeculativeGenerator

    model = tiny_target(TINY_SHAPES["llama"], seed=7)  # 4 layers
    model.save_pretrained(tmp_path / "target")
    save_drafter(tiny_drafter(model, draft_vocab=48, seed=8, tap_layers=(1, 2, 3)), tmp_path / "eagle")
    save_drafter(tiny_drafter(model, draft_vocab=48, seed=8, tap_layers=(1, 2, 3)), tmp_path / "specforge")
    edit_config(tmp_path / "specforge", eagle_aux_hidden_state_layer_ids=[0, 1, 2], eagle_config={})
    assert read_config(tmp_path / "specforge", tap_numbering="output").tap_layers == (1, 2, 3)
    assert read_config(tmp_path / "specforge").tap_layers == (0, 1, 2)  # EAGLE's numbering: other layers
    settings = DecodeSettings(max_new_tokens=24, draft_tree="chain")
    runs = {}
    for name, numbering in (("eagle", "input"), ("specforge", "output"), ("misread", "input")):
        directory = tmp_path / ("eagle" if name == "eagle" else "specforge")
        generator = SpeculativeGenerator.from_paths(tmp_path / "target", directory, tap_numbering=numbering)
        result = generator.generate([3, 5, 7], settings)
        runs[name] = (generator.target.tap_layers, result.token_ids, result.stats.accepted_lengths)
    assert runs["specforge"] == runs["eagle"] and runs["eagle"][0] == (1, 2, 3)
    assert runs["misread"][0] == (0, 1, 2)
    read_as_sglang = load_drafter(tmp_path / "specforge", target_embeddings=model.get_input_embeddings(),
                                  target_hidden_size=model.config.hidden_size,
                                  target_vocab_size=model.config.vocab_size, tap_numbering="output")
    save_drafter(read_as_sglang, tmp_path / "rewritten")  # written in EAGLE's and vLLM's numbering
    assert json.loads((tmp_path / "rewritten" / "config.json").read_text())["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
