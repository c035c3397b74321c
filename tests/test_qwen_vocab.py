"""Qwen's tiktoken ranks as an HF tokenizer: identical ids to tiktoken, round trips, clear errors."""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

from evospec.data.qwen_tokenizer import (
    QWEN_PATTERN,
    QWEN_SPECIAL,
    TokenizerError,
    creating_merge,
    default_ranks_file,
    read_ranks,
)

from .test_cli import run

SAMPLES = [
    "Héllo wörld — 你好，世界！ 🎉🎉 1234567 \n\n\t  spaces   end ",
    "<|im_start|>user\nWhat does GDPR Article 17 say?<|im_end|>\n<|endoftext|>",
    "Patient presents with bilateral sensorineural hearing loss (HP:0008619); ÉÊË ß ø.",
    "x" * 300 + "  \r\n\r\n" + "0" * 41,
]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    import tiktoken
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tok") / "qwen"
    run("tokenizer", "--out", str(out))
    ranks = read_ranks(default_ranks_file())
    specials = {name: len(ranks) + i for i, name in enumerate(QWEN_SPECIAL)}
    reference = tiktoken.Encoding("qwen", pat_str=QWEN_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    return AutoTokenizer.from_pretrained(out), reference


def stdlib_texts(n: int) -> list[str]:
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return [p.read_text(errors="replace") for p in files[:: max(1, len(files) // n)][:n]]


def test_identical_ids_and_round_trip(tokenizers):
    hf, reference = tokenizers
    assert len(hf) == 151_643 + len(QWEN_SPECIAL)
    assert hf.eos_token_id == 151_643
    for text in SAMPLES + stdlib_texts(12):
        ids = hf.encode(text)
        assert ids == reference.encode(text, allowed_special="all")
        assert hf.decode(ids) == text


def test_creating_merge_follows_rank_order():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4, b"abc": 5}
    assert creating_merge(b"abc", ranks) == (b"a", b"bc")  # bc (rank 3) merges before ab (rank 4)
    assert creating_merge(b"ab", ranks) == (b"a", b"b")
    with pytest.raises(TokenizerError, match="not reachable"):
        creating_merge(b"abc", {b"a": 0, b"b": 1, b"c": 2, b"abc": 3})


def test_bad_ranks_files(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("YQ== 0\nnot-base64!! 1\n")
    with pytest.raises(TokenizerError, match="bad.tiktoken:2"):
        read_ranks(bad)
    gap = tmp_path / "gap.tiktoken"
    gap.write_text("YQ== 0\nYg== 2\n")
    with pytest.raises(TokenizerError, match="without gaps"):
        read_ranks(gap)
    with pytest.raises(TokenizerError, match="does not exist"):
        read_ranks(tmp_path / "none.tiktoken")
    proc = run("tokenizer", "--out", str(tmp_path / "t"), "--ranks", str(gap), check=False)
    assert proc.returncode == 2 and "without gaps" in proc.stderr


@pytest.mark.slow
def test_identical_ids_on_every_corpus_document(tokenizers, tmp_path):
    """Downloads the corpus sources (about 25 MB; run with -m slow): HF ids equal tiktoken's and
    decode back to the text, for every document of every domain and split."""
    from evospec.data.corpus import corpus_domains, read_documents

    hf, reference = tokenizers
    run("data", "build", "--out", str(tmp_path / "c"), "--cache", str(tmp_path / "cache"))
    checked = 0
    for domain in corpus_domains(tmp_path / "c"):
        for split in ("train", "valid", "test"):
            if not any((tmp_path / "c" / domain / split).glob("*")):
                continue  # the topic-switch domain is test text only
            documents = read_documents(tmp_path / "c", domain, split)
            for text, ids in zip(documents, hf(documents, add_special_tokens=False)["input_ids"]):
                assert ids == reference.encode(text, allowed_special="all"), (domain, split, text[:80])
                assert hf.decode(ids) == text, (domain, split, text[:80])
                checked += 1
    assert checked > 1000
