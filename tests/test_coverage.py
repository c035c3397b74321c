"""`evospec vocab coverage` and `vocab frequencies`: exact shares on a corpus built here, for FR-Spec's
general-text list and the in-domain one, the list used stated in table and JSON, frequency files
that record what they counted, plot, clear errors."""

from __future__ import annotations

import json

import pytest

from evospec.data.coverage import corpus_frequencies, coverage_rows, frequency_list, list_domains
from evospec.runtime.vocab.frequencies import TokenFrequencies

from .conftest import char_tokenizer
from .test_cli import run


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    texts = {("general", "train"): "aaaab", ("general", "test"): "aab", ("code", "train"): "cccb", ("code", "test"): "abcc"}
    for (domain, split), text in texts.items():
        (root / domain / split).mkdir(parents=True)
        (root / domain / split / "d.txt").write_text(text)
    tok_dir = tmp_path / "tok"
    char_tokenizer().save_pretrained(tok_dir)
    return root, tok_dir


def test_rows_are_exact_shares(corpus):
    root, _ = corpus
    tok = char_tokenizer()
    counts = corpus_frequencies(tok, str(root), ("general",), "test").counts
    assert counts[tok.convert_tokens_to_ids("a")] == 2 and counts[tok.convert_tokens_to_ids("b")] == 1
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


def test_frequency_file_records_what_it_counted(corpus, tmp_path):
    root, tok_dir = corpus
    tok = char_tokenizer()
    table = corpus_frequencies(tok, root, ("general",), "train")
    table.save(tmp_path / "f.json")
    loaded = TokenFrequencies.load(tmp_path / "f.json")
    assert loaded.counted == table.counted == {"corpus": str(root), "split": "train", "domains": ["general"]}
    assert frequency_list(loaded, len(tok)).ranked == [tok.convert_tokens_to_ids("a"), tok.convert_tokens_to_ids("b")]
    assert list_domains(root, "all") == ("code", "general")
    for domains, expected in (("general", ["general"]), ("all", ["code", "general"])):
        out = tmp_path / f"{domains}.json"
        proc = run("vocab", "frequencies", "--corpus", str(root), "--tokenizer", str(tok_dir), "--out", str(out),
                   "--domains", domains, "--successors", "0")
        assert TokenFrequencies.load(out).counted == {"corpus": str(root), "split": "train", "domains": expected}
        assert proc.stdout.strip().startswith(f"{','.join(expected)} train:")
    proc = run("vocab", "frequencies", "--corpus", str(root), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "x"),
               "--domains", "general,legal", check=False)
    assert proc.returncode == 2 and "no 'legal' domain" in proc.stderr


@pytest.mark.slow  # `vocab coverage` end to end stays in the default run (test_cli_table_json_plot, test_cli_errors)
def test_coverage_states_the_list_used(corpus, tmp_path):
    root, tok_dir = corpus
    common = ("vocab", "coverage", "--corpus", str(root), "--tokenizer", str(tok_dir), "--k", "1,2,3")
    proc = run(*common, "--json", str(tmp_path / "general.json"))
    assert proc.stdout.strip().splitlines()[0] == "list: top-K of general train split, 5 tokens (fewer distinct tokens than K: top-3 has 2)"
    rows = json.loads((tmp_path / "general.json").read_text())
    assert {(r["list_domains"][0], r["list_split"], r["list_tokens"], r["list_file"]) for r in rows} == {
        ("general", "train", 5, None)}
    # the in-domain list: general + code train splits count a 4, c 3, b 2 -> ranked a, c, b
    proc = run(*common, "--list-domains", "all", "--json", str(tmp_path / "all.json"))
    assert proc.stdout.strip().splitlines()[0] == "list: top-K of code+general train split, 9 tokens"
    rows = {(r["domain"], r["k"]): r for r in json.loads((tmp_path / "all.json").read_text())}
    assert {key: r["coverage"] for key, r in rows.items()} == {
        ("code", 1): 0.25, ("code", 2): 0.75, ("code", 3): 1.0,
        ("general", 1): 2 / 3, ("general", 2): 2 / 3, ("general", 3): 1.0}
    assert all(r["list_domains"] == ["code", "general"] and r["list_size"] == r["k"] for r in rows.values())
    # the same list from a frequency file: same shares, and the file named
    run("vocab", "frequencies", "--corpus", str(root), "--tokenizer", str(tok_dir), "--out", str(tmp_path / "f.json"))
    proc = run(*common, "--frequencies", str(tmp_path / "f.json"), "--json", str(tmp_path / "file.json"))
    from_file = json.loads((tmp_path / "file.json").read_text())
    assert {(r["domain"], r["k"]): r["coverage"] for r in from_file} == {key: r["coverage"] for key, r in rows.items()}
    assert all(r["list_file"] == str(tmp_path / "f.json") and r["list_domains"] == ["code", "general"] for r in from_file)
    assert f"(from {tmp_path / 'f.json'})" in proc.stdout.strip().splitlines()[0]
    proc = run(*common, "--frequencies", str(tmp_path / "f.json"), "--list-domains", "general", check=False)
    assert proc.returncode == 2 and "not both" in proc.stderr
