"""The reference build is deterministic: two builds give the same bytes, whatever the ambient torch
state (global seed, thread count), and an interrupted drafter distillation resumes to the same weights.
Also: taps other engines cannot serve are refused at training time, and the shipped demo pair has none."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from evospec.core.errors import SettingsError
from evospec.runtime.target import load_target
from evospec.train.drafter import DrafterRecipe, checked_taps, train_drafter
from evospec.train.recipes import ReferenceRecipe
from evospec.train.reference import build_reference
from evospec.train.target import TargetRecipe

from .conftest import char_tokenizer
from .test_train_target import TEXT

RECIPE = ReferenceRecipe(
    TargetRecipe(hidden_size=32, layers=4, intermediate_size=64, seq_len=32, steps=6, lr=1e-2, negatives=16,
                 valid_windows=2),
    DrafterRecipe(draft_vocab=40, steps=4, batch_size=4, seq_len=24, windows=16, taps=(1, 2, 3)),
)


def _prepared(root, corpus):
    tok = char_tokenizer()
    tok.eos_token = "\n"
    tok.save_pretrained(root / "tokenizer")
    shutil.copytree(corpus, root / "corpus")
    return root


@pytest.fixture
def corpus(tmp_path):
    for domain, text in TEXT.items():
        for split, n in (("train", 30), ("valid", 4)):
            (tmp_path / "src" / domain / split).mkdir(parents=True)
            (tmp_path / "src" / domain / split / "d.txt").write_text(text * n)
    return tmp_path / "src"


def test_two_builds_give_bit_identical_target_and_drafter(tmp_path, corpus):
    threads = torch.get_num_threads()
    a = build_reference(_prepared(tmp_path / "a", corpus), RECIPE, tmp_path / "cache", threads=2)
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()  # restored
    torch.manual_seed(1234)  # a different ambient state: global seed, thread count, a consumed generator
    torch.rand(7)
    torch.set_num_threads(1)
    try:
        b = build_reference(_prepared(tmp_path / "b", corpus), RECIPE, tmp_path / "cache", threads=2)
    finally:
        torch.set_num_threads(threads)
    for stage in ("target", "drafter"):
        first, second = (getattr(p, stage) / "model.safetensors" for p in (a, b))
        assert first.read_bytes() == second.read_bytes(), stage
    assert (a.target / "training.json").read_text() == (b.target / "training.json").read_text()
    record = json.loads(a.build_record.read_text())
    assert set(record["target"]["valid_loss"]) == set(TEXT) and record["drafter"]["taps"] == [1, 2, 3]
    assert record["target"]["environment"]["threads"] == 2
    assert json.loads((a.drafter / "config.json").read_text())["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]


def test_interrupted_drafter_training_resumes_to_the_same_weights(tmp_path, corpus):
    root = build_reference(_prepared(tmp_path / "ref", corpus), RECIPE, tmp_path / "cache").root
    target, tok = load_target(root / "target"), char_tokenizer()
    tok.eos_token = "\n"
    recipe = DrafterRecipe(draft_vocab=40, steps=6, batch_size=4, seq_len=24, windows=16, taps=(1, 2, 3))
    reference, reference_losses = train_drafter(target, tok, str(corpus), recipe)

    class Interrupt(Exception):
        pass

    def stop_at_five(step, loss):
        if step == 4:
            raise Interrupt

    state = tmp_path / "drafter.pt"
    with pytest.raises(Interrupt):
        train_drafter(target, tok, str(corpus), recipe, stop_at_five, state_path=state, save_every=3)
    resumed_steps: list[int] = []
    resumed, losses = train_drafter(target, tok, str(corpus), recipe, lambda step, loss: resumed_steps.append(step),
                                    state_path=state, save_every=3)
    assert resumed_steps == [3, 4, 5] and losses == reference_losses
    for (name, x), (_, y) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(x, y), name
    other = DrafterRecipe(**{**recipe.__dict__, "lr": 1e-3})
    with pytest.raises(SettingsError, match="different recipe"):
        train_drafter(target, tok, str(corpus), other, state_path=state)


@pytest.mark.parametrize(("taps", "layers", "message"), [
    (None, 6, r"taps \(2, 3, 3\) repeat a layer \(EAGLE-3's default for a 6-layer target\)"),
    (None, 4, r"taps \(2, 2, 1\) repeat a layer"),
    ((3, 1, 2), 4, "not in ascending order"),
    ((1, 1, 2), 8, "repeat a layer"),
    ((0, 2, 3), 4, r"leave 1\.\.3"),
    ((1, 2), 4, "exactly three"),
])
def test_train_drafter_refuses_taps_engines_cannot_serve(taps, layers, message):
    with pytest.raises(SettingsError, match=message) as info:
        checked_taps(taps, layers)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("taps", "layers", "chosen"), [(None, 8, (2, 4, 5)), (None, 12, (2, 6, 9)),
                                                         ((1, 3, 5), 6, (1, 3, 5))])
def test_train_drafter_accepts_distinct_ascending_taps(taps, layers, chosen):
    assert checked_taps(taps, layers) == chosen


def test_every_preset_serves_on_every_engine():
    from evospec.train.recipes import PRESETS

    for name, recipe in PRESETS.items():
        checked_taps(recipe.drafter.taps, recipe.target.layers)  # raises where an engine could not serve it


def test_shipped_demo_pair_has_taps_every_engine_serves(caplog):
    from evospec.runtime.checkpoint import read_config
    from evospec.runtime.drafter import tap_problem
    from evospec.train.demo_pair import ASSET_DIR, DemoRecipe, demo_generator

    config = read_config(ASSET_DIR / "drafter")
    assert config.tap_layers == DemoRecipe().taps and tap_problem(config.tap_layers, 6) is None
    with caplog.at_level("WARNING"):
        generator = demo_generator()
    assert generator.target.tap_layers == config.tap_layers
    assert not [r for r in caplog.records if "taps" in r.getMessage()]


def test_reproducible_pins_the_thread_count_that_reductions_depend_on():
    """A float sum over millions of elements is split by thread (1 and 2 threads differ in the last
    bits on this CPU build): inside ``reproducible`` the ambient thread count no longer matters."""
    from evospec.core.determinism import reproducible

    x = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0))
    threads, sums = torch.get_num_threads(), []
    try:
        for ambient in (1, 3):
            torch.set_num_threads(ambient)
            with reproducible(2):
                assert torch.get_num_threads() == 2 and torch.are_deterministic_algorithms_enabled()
                sums.append(x.sum())
            assert torch.get_num_threads() == ambient
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(sums[0], sums[1])


@pytest.mark.slow  # `build-demo` end to end stays in the default run (test_cli.py::test_build_demo_writes_...)
def test_build_demo_can_reuse_a_target_and_distil_only_a_drafter(tmp_path):
    """`build-demo --reuse-target` keeps the pair's target byte for byte and writes the recipe's taps."""
    from evospec.train.demo_pair import ASSET_DIR, DemoRecipe

    from .test_cli import run

    run("build-demo", "--out", str(tmp_path / "pair"), "--reuse-target", str(ASSET_DIR), "--drafter-steps", "2")
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (tmp_path / "pair" / "target" / name).read_bytes() == (ASSET_DIR / "target" / name).read_bytes()
    config = json.loads((tmp_path / "pair" / "drafter" / "config.json").read_text())
    assert tuple(config["eagle_aux_hidden_state_layer_ids"]) == DemoRecipe().taps
    manifest = json.loads((tmp_path / "pair" / "recipe.json").read_text())
    assert manifest["target_reused"]["from"] == str(ASSET_DIR) and manifest["recipe"]["distill"]["steps"] == 2
    proc = run("demo", "--pair", str(tmp_path / "pair"), "--max-new-tokens", "8", "--json")
    assert len(json.loads(proc.stdout.strip().splitlines()[-1])["token_ids"]) == 8
