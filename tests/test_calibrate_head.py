"""Head calibration: only the never-trained output rows move, the full-vocabulary loss falls, the trunk is untouched."""

from __future__ import annotations

import json

import pytest
import torch

from evospec.train.calibrate_head import HeadCalibration, calibrate_head
from evospec.train.target import TargetRecipe, train_target

from .conftest import char_tokenizer
from .test_train_target import TEXT

RECIPE = TargetRecipe(hidden_size=32, layers=2, intermediate_size=64, seq_len=32, batch_size=8, steps=40,
                      lr=1e-2, negatives=8, valid_windows=4)
SETTINGS = HeadCalibration(steps=30, windows=8, seq_len=32, positions=64, lr=5e-2, valid_windows=4, valid_every=10)


def _tokenizer():
    tok = char_tokenizer()
    tok.eos_token = "\n"
    return tok


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    for domain, text in TEXT.items():
        for split, n in (("train", 40), ("valid", 6)):
            (root / domain / split).mkdir(parents=True)
            (root / domain / split / "d.txt").write_text(text * n)
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A sampled-softmax target saved as an HF folder (trained once for the module)."""
    tok = _tokenizer()
    model, _ = train_target(tok, str(corpus), RECIPE)
    folder = tmp_path_factory.mktemp("target")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def test_only_unseen_rows_move_and_full_vocab_loss_falls(corpus, trained):
    from transformers import AutoModelForCausalLM

    tok = _tokenizer()
    model = AutoModelForCausalLM.from_pretrained(trained).eval()
    embed_before = model.model.embed_tokens.weight.detach().clone()
    head_before = model.lm_head.weight.detach().clone()
    seen = sorted({t for text in TEXT.values() for t in tok(text * 40, add_special_tokens=False)["input_ids"]} | {tok.eos_token_id})
    probe = torch.tensor([tok("def add(a, b):", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        seen_logp_before = torch.log_softmax(model(input_ids=probe).logits[0][:, seen], -1)

    report = calibrate_head(model, tok, str(corpus), SETTINGS)

    head = model.lm_head.weight.detach()
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    assert not model.config.tie_word_embeddings
    assert torch.equal(model.model.embed_tokens.weight, embed_before)  # the trunk reads the same inputs
    assert torch.equal(head[seen], head_before[seen])  # seen rows frozen
    unseen = [t for t in range(head.shape[0]) if t not in set(seen)]
    assert report["rows_fitted"] == len(unseen) > 0
    assert not torch.equal(head[unseen], head_before[unseen])
    with torch.no_grad():  # the distribution over seen tokens, renormalised, is unchanged
        seen_logp_after = torch.log_softmax(model(input_ids=probe).logits[0][:, seen], -1)
    torch.testing.assert_close(seen_logp_after, seen_logp_before, rtol=0, atol=1e-5)
    for domain in TEXT:
        assert report["valid_loss_after"][domain] < report["valid_loss_before"][domain] - 0.05, report


def test_calibrate_head_cli_end_to_end(corpus, trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from .test_cli import run

    proc = run("train", "calibrate-head", "--target", str(trained), "--corpus", str(corpus),
               "--out", str(tmp_path / "c"), "--steps", "20")
    assert "unseen rows" in proc.stdout and not list(tmp_path.glob(".c.*"))
    report = json.loads((tmp_path / "c" / "calibration.json").read_text())
    assert report["settings"]["steps"] == 20 and set(report["valid_loss_after"]) == set(TEXT)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "c")
    assert not loaded.config.tie_word_embeddings
    assert not torch.equal(loaded.lm_head.weight, loaded.model.embed_tokens.weight)


@pytest.mark.parametrize("what", ["missing", "not-a-model"])
def test_calibrate_head_refuses_bad_targets(corpus, tmp_path, what):
    from .test_cli import run

    target = tmp_path / "t"
    if what == "not-a-model":
        _tokenizer().save_pretrained(target)  # a tokenizer but no weights
    proc = run("train", "calibrate-head", "--target", str(target), "--corpus", str(corpus), "--out",
               str(tmp_path / "c"), check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert str(target) in proc.stderr and not (tmp_path / "c").exists()
