"""`evospec vocab coverage`: exact shares on a corpus built here, JSON rows, plot, clear errors."""

from __future__ import annotations

import json

import pytest

from evospec.coverage import count_tokens, coverage_rows

from .conftest import char_tokenizer
from .test_cli import run


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    texts = {("general", "train"): "aaaab", ("general", "test"): "aab", ("code", "test"): "abcc"}
    for (domain, split), text in texts.items():
        (root / domain / split).mkdir(parents=True)
        (root / domain / split / "d.txt").write_text(text)
    tok_dir = tmp_path / "tok"
    char_tokenizer().save_pretrained(tok_dir)
    return root, tok_dir


def test_rows_are_exact_shares(corpus):
    root, _ = corpus
    tok = char_tokenizer()
    assert count_tokens(tok, ["aab", "b"]) == {tok.convert_tokens_to_ids("a"): 2, tok.convert_tokens_to_ids("b"): 2}
    rows = {(r.domain, r.k): r.coverage for r in coverage_rows(tok, str(root), ks=(1, 2, 3))}
    # general ranks a (4) then b (1); code has a, b, c, c
    assert rows == {("code", 1): 0.25, ("code", 2): 0.5, ("code", 3): 0.5,
                    ("general", 1): 2 / 3, ("general", 2): 1.0, ("general", 3): 1.0}


def test_cli_table_json_plot(corpus, tmp_path):
    root, tok_dir = corpus
    proc = run("vocab", "coverage", "--corpus", str(root), "--tokenizer", str(tok_dir), "--k", "1,2",
               "--json", str(tmp_path / "c.json"), "--plot", str(tmp_path / "c.png"))
    assert "top-1" in proc.stdout and "code" in proc.stdout
    rows = json.loads((tmp_path / "c.json").read_text())
    assert {(r["domain"], r["k"]) for r in rows} == {("code", 1), ("code", 2), ("general", 1), ("general", 2)}
    assert all(set(r) >= {"domain", "k", "coverage"} for r in rows)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(corpus, tmp_path):
    root, tok_dir = corpus
    (root / "general").rename(root / "other")
    proc = run("vocab", "coverage", "--corpus", str(root), "--tokenizer", str(tok_dir), check=False)
    assert proc.returncode == 2 and "no 'general' domain" in proc.stderr
    proc = run("vocab", "coverage", "--corpus", str(root), "--tokenizer", str(tmp_path / "none"), check=False)
    assert proc.returncode == 2 and "tokenizer directory" in proc.stderr
