"""Reference-target training: exact chunked validation loss, sampled-softmax training lowers it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evospec.errors import SettingsError
from evospec.train_target import TargetRecipe, full_vocab_loss, new_target, train_target

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
    path.write_text("[target]\nhidden_size = 48\nsteps = 5\n")
    assert TargetRecipe.from_toml(path) == TargetRecipe(hidden_size=48, steps=5)
    path.write_text("[target]\nhiden = 1\n")
    with pytest.raises(SettingsError, match="unknown"):
        TargetRecipe.from_toml(path)


def test_tiny_recipe_file_matches_the_default():
    from pathlib import Path

    assert TargetRecipe.from_toml(Path(__file__).parents[1] / "configs" / "reference-tiny.toml") == TargetRecipe()


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
    assert set(_json.loads((tmp_path / "t" / "training.json").read_text())["valid_loss"]) == set(TEXT)
    proc = run("train", "drafter", "--target", str(tmp_path / "t"), "--corpus", str(corpus), "--out", str(tmp_path / "d"),
               "--draft-vocab", "40", "--steps", "30", "--seq-len", "24", "--windows", "32")
    first, last = (float(x) for x in proc.stdout.split("loss ")[1].split(";")[0].split(" -> "))
    assert last < first
    generator = SpeculativeGenerator.from_paths(tmp_path / "t", tmp_path / "d")
    assert generator.drafter.config.draft_vocab_size == 40
    prompt = generator.encode("def add(")
    result = generator.generate(prompt, DecodeSettings(max_new_tokens=24, draft_tree="tree", draft_depth=3))
    assert result.token_ids == hf_greedy(generator.target.model, prompt, 24)
