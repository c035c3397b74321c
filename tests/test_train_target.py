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
