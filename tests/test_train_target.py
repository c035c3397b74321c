"""Reference-target training: exact chunked validation loss, sampled-softmax training lowers it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evospec.core.errors import SettingsError
from evospec.train.drafter import DrafterRecipe
from evospec.train.recipes import PRESETS, load_recipe, recipe_named
from evospec.train.target import TargetRecipe, full_vocab_loss, new_target, train_target

from .conftest import char_tokenizer

TEXT = {
    "code": "def add(a, b):\n    return a + b\n",
    "law": "The licensee shall not sublicense the software. ",
    "general": "To be, or not to be, that is the question. ",
}


@pytest.fixture
def corpus(tmp_path):
    for domain, text in TEXT.items():
        for split, n in (("train", 40), ("valid", 6)):
            (tmp_path / domain / split).mkdir(parents=True)
            (tmp_path / domain / split / "d.txt").write_text(text * n)
    return tmp_path


def test_chunked_full_vocab_loss_is_exact():
    model = new_target(97, TargetRecipe(hidden_size=32, layers=2), eos=0).eval()
    batch = torch.randint(0, 97, (3, 17))
    with torch.no_grad():
        logits = model(input_ids=batch[:, :-1]).logits
    expected = F.cross_entropy(logits.reshape(-1, 97), batch[:, 1:].reshape(-1))
    assert full_vocab_loss(model, batch, chunk=10) == pytest.approx(float(expected), rel=1e-5)


def test_sampled_softmax_training_lowers_full_vocab_loss(corpus):
    tok = char_tokenizer()
    tok.eos_token = "\n"
    recipe = TargetRecipe(hidden_size=32, layers=2, intermediate_size=64, seq_len=32, batch_size=8, steps=80,
                          lr=1e-2, negatives=16, valid_windows=4)
    untrained = TargetRecipe(**{**recipe.__dict__, "steps": 1, "lr": 1e-9})
    _, before = train_target(tok, str(corpus), untrained)
    _, after = train_target(tok, str(corpus), recipe)
    assert set(after) == set(TEXT)
    for domain in TEXT:
        assert after[domain] < before[domain] - 1.0, (before, after)


def test_recipe_files(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[target]\nhidden_size = 48\nsteps = 5\n[drafter]\nsteps = 7\n")
    recipe = load_recipe(path)
    assert recipe.target == TargetRecipe(hidden_size=48, steps=5) and recipe.drafter == DrafterRecipe(steps=7)
    path.write_text("[drafter]\ntaps = [1, 3, 5]\n")
    assert load_recipe(path).drafter.taps == (1, 3, 5)  # TOML lists become the tuple presets hold
    for text, message in (("[target]\nhiden = 1\n", r"\[target\]: unknown keys \['hiden'\]"),
                          ("[trainer]\n", r"unknown tables \['trainer'\]"), ("[target\n", "r.toml")):
        path.write_text(text)
        with pytest.raises(SettingsError, match=message):
            load_recipe(path)
    with pytest.raises(SettingsError, match="no recipe 'huge'"):
        recipe_named("huge")


@pytest.mark.parametrize("size", sorted(PRESETS))
def test_recipe_files_mirror_the_presets(size):
    from pathlib import Path

    assert load_recipe(Path(__file__).parents[1] / "configs" / f"reference-{size}.toml") == PRESETS[size]


def test_interrupted_training_resumes_to_the_same_model(corpus, tmp_path):
    """Killed after its step-4 save, a rerun resumes there and ends with the uninterrupted run's weights."""
    tok = char_tokenizer()
    tok.eos_token = "\n"
    recipe = TargetRecipe(hidden_size=32, layers=2, intermediate_size=64, seq_len=16, batch_size=4, steps=8,
                          lr=1e-2, negatives=16, valid_windows=2)
    reference, _ = train_target(tok, str(corpus), recipe)

    class Interrupt(Exception):
        pass

    def stop_at_six(step, loss):
        if step == 5:
            raise Interrupt

    state = tmp_path / "state.pt"
    with pytest.raises(Interrupt):
        train_target(tok, str(corpus), recipe, stop_at_six, state_path=state, save_every=4)
    assert torch.load(state, weights_only=False)["step"] == 4
    resumed_steps = []
    resumed, _ = train_target(tok, str(corpus), recipe, lambda step, loss: resumed_steps.append(step),
                              state_path=state, save_every=4)
    assert resumed_steps == [4, 5, 6, 7]
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    other = TargetRecipe(**{**recipe.__dict__, "lr": 5e-3})
    with pytest.raises(SettingsError, match="different recipe"):
        train_target(tok, str(corpus), other, state_path=state)
    state.write_bytes(b"garbage")
    with pytest.raises(SettingsError, match="unreadable"):
        train_target(tok, str(corpus), recipe, state_path=state)


def test_train_target_and_drafter_end_to_end(corpus, tmp_path):
    """CLI: train a target, train its drafter, load both through the official loaders, decode exactly."""
    import json as _json

    from evospec import DecodeSettings, SpeculativeGenerator

    from .conftest import hf_greedy
    from .test_cli import run

    tok = char_tokenizer()
    tok.eos_token = "\n"
    tok.save_pretrained(tmp_path / "tok")
    recipe = tmp_path / "r.toml"
    recipe.write_text("[target]\nhidden_size = 32\nlayers = 4\nintermediate_size = 64\nseq_len = 32\n"
                      "steps = 40\nlr = 1e-2\nnegatives = 16\nvalid_windows = 2\n")
    run("train", "target", "--corpus", str(corpus), "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "t"),
        "--recipe", str(recipe))
    assert (tmp_path / "t" / "tokenizer.json").exists() and not list(tmp_path.glob(".t.*"))
    assert set(_json.loads((tmp_path / "t" / "training.json").read_text())["valid_loss"]) == set(TEXT)
    drafter_args = ("train", "drafter", "--target", str(tmp_path / "t"), "--corpus", str(corpus), "--out",
                    str(tmp_path / "d"), "--draft-vocab", "40", "--steps", "30", "--seq-len", "24", "--windows", "32")
    refused = run(*drafter_args, check=False)  # 4 layers: EAGLE-3's default taps (2, 2, 1) repeat a layer
    assert refused.returncode == 2 and not (tmp_path / "d").exists()
    assert refused.stderr.strip().count("\n") == 0 and "taps (2, 2, 1) repeat a layer" in refused.stderr
    assert "--taps 1,2,3" in refused.stderr
    proc = run(*drafter_args, "--taps", "1,2,3")
    assert _json.loads((tmp_path / "d" / "config.json").read_text())["eagle_aux_hidden_state_layer_ids"] == [1, 2, 3]
    first, last = (float(x) for x in proc.stdout.split("loss ")[1].split(";")[0].split(" -> "))
    assert last < first
    generator = SpeculativeGenerator.from_paths(tmp_path / "t", tmp_path / "d")
    assert generator.drafter.config.draft_vocab_size == 40
    prompt = generator.encode("def add(")
    result = generator.generate(prompt, DecodeSettings(max_new_tokens=24, draft_tree="tree", draft_depth=3))
    assert result.token_ids == hf_greedy(generator.target.model, prompt, 24)


def test_reference_build_end_to_end_and_resume(corpus, tmp_path):
    """`reference build` trains the stages that are missing, prints their paths as JSON last, and refuses
    to mix recipes in one folder. (Tokenizer and corpus are given, so nothing is downloaded.)"""
    import json as _json

    from evospec import DecodeSettings, SpeculativeGenerator

    from .conftest import hf_greedy
    from .test_cli import run

    out = tmp_path / "ref"
    tok = char_tokenizer()
    tok.eos_token = "\n"
    tok.save_pretrained(out / "tokenizer")
    for domain in TEXT:
        __import__("shutil").copytree(corpus / domain, out / "corpus" / domain)
    recipe = tmp_path / "r.toml"
    recipe.write_text("[target]\nhidden_size = 32\nlayers = 4\nintermediate_size = 64\nseq_len = 32\nsteps = 30\n"
                      "lr = 1e-2\nnegatives = 16\nvalid_windows = 2\n"
                      "[drafter]\ndraft_vocab = 40\nsteps = 20\nbatch_size = 8\nseq_len = 24\nwindows = 32\n"
                      "taps = [1, 2, 3]\n")
    proc = run("reference", "build", "--size", str(recipe), "--out", str(out))
    paths = _json.loads(proc.stdout.strip().splitlines()[-1])
    assert paths == {k: str(out / k) for k in ("corpus", "tokenizer", "target", "drafter")}
    assert "target 30/30" in proc.stderr and "drafter 20/20" in proc.stderr
    record = _json.loads((out / "build.json").read_text())
    assert set(record["target"]["valid_loss"]) == set(TEXT) and record["drafter"]["taps"] == [1, 2, 3]
    for domain, loss in record["target"]["valid_loss"].items():
        assert f"valid loss {domain}: {loss:.3f}" in proc.stderr
    assert not (out / "target.train-state.pt").exists()
    generator = SpeculativeGenerator.from_paths(paths["target"], paths["drafter"])
    prompt = generator.encode("def add(")
    result = generator.generate(prompt, DecodeSettings(max_new_tokens=16, draft_tree="chain", draft_depth=3))
    assert result.token_ids == hf_greedy(generator.target.model, prompt, 16)

    stamp = (out / "target" / "config.json").stat().st_mtime_ns
    __import__("shutil").rmtree(out / "drafter")
    proc = run("reference", "build", "--size", str(recipe), "--out", str(out))
    assert (out / "target" / "config.json").stat().st_mtime_ns == stamp  # complete stages are kept
    assert "drafter 20/20" in proc.stderr and "target" not in proc.stderr.replace(str(out), "")
    assert set(_json.loads((out / "build.json").read_text())) == {"target", "drafter"}  # the target's entry kept
    recipe.write_text(recipe.read_text().replace("steps = 30", "steps = 31"))
    proc = run("reference", "build", "--size", str(recipe), "--out", str(out), check=False)
    assert proc.returncode == 2 and "built with another recipe" in proc.stderr


@pytest.mark.parametrize("steps", [1, 20])
def test_short_runs_train(corpus, steps):
    """OneCycleLR's 5% warm-up is zero steps long at 20 steps (a division by zero): short runs warm up longer."""
    tok = char_tokenizer()
    tok.eos_token = "\n"
    recipe = TargetRecipe(hidden_size=16, layers=2, intermediate_size=32, seq_len=8, batch_size=2, steps=steps,
                          negatives=8, valid_windows=1)
    _, valid = train_target(tok, str(corpus), recipe)
    assert set(valid) == set(TEXT)
