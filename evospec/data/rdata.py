"""Read character vectors out of an R package's lazy-load database (``data/Rdata.rdx`` + ``.rdb``).

R data packages (Debian's ``r-cran-*``) ship their data sets in this form, not as text files. The
index (``.rdx``) is a gzip-compressed serialized R list whose ``variables`` map each object's name
to an (offset, length) blob in the ``.rdb`` file; a blob is a 4-byte big-endian uncompressed size
and a zlib stream (R's default compression type 1) of one serialized object. Only the XDR
serialization format and the object types that data sets of text need are read here; anything
else is a clear ``RDataError`` rather than a guess.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from dataclasses import dataclass

from evospec.core.errors import EvoSpecError

# SEXP types (R Internals, "Serialization Formats")
NILSXP, SYMSXP, LISTSXP, CHARSXP, LGLSXP, INTSXP, REALSXP, STRSXP, VECSXP = 0, 1, 2, 9, 10, 13, 14, 16, 19
REFSXP, NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP = 255, 254, 253, 242, 241
_SPECIAL_NULLS = (NILVALUE_SXP, GLOBALENV_SXP, EMPTYENV_SXP, BASEENV_SXP)
_NA_INT = -(2**31)


class RDataError(EvoSpecError):
    """An R serialization stream this reader does not understand."""


@dataclass
class RObject:
    """A deserialized R vector: ``values`` (a list) and its attributes (``names`` among them)."""

    type: int
    values: list
    attributes: dict[str, object]


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.refs: list[object] = []

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise RDataError("serialized R object ends early")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def length(self) -> int:
        n = self.int()
        if n == -1:  # long vector: two more words
            hi, lo = self.int(), self.int()
            n = (hi << 32) + lo
        return n

    def header(self) -> None:
        if self.take(2) != b"X\n":
            raise RDataError("not an XDR-format R serialization (expected 'X\\n')")
        version = self.int()
        self.int(), self.int()  # writer R version, minimal reader version
        if version == 3:
            self.take(self.int())  # native encoding name
        elif version != 2:
            raise RDataError(f"R serialization version {version} is not supported (2 or 3)")

    def item(self) -> object:
        flags = self.int()
        kind = flags & 0xFF
        has_attr, has_tag = bool(flags & (1 << 9)), bool(flags & (1 << 10))
        if kind in _SPECIAL_NULLS:
            return None
        if kind == REFSXP:
            index = flags >> 8 or self.int()
            return self.refs[index - 1]
        if kind == SYMSXP:
            name = self.item()
            self.refs.append(name)
            return name
        if kind == CHARSXP:
            n = self.int()
            if n == -1:
                return None  # NA_character_
            latin1 = (flags >> 12) & (1 << 2)  # LATIN1_MASK in the levels field
            return self.take(n).decode("latin-1" if latin1 else "utf-8", errors="replace")
        if kind == LISTSXP:  # pairlist: attributes and tags
            out: dict[str, object] = {}
            while kind == LISTSXP:
                if has_attr:
                    self.item()
                tag = self.item() if has_tag else str(len(out))
                out[str(tag)] = self.item()
                flags = self.int()
                kind, has_attr, has_tag = flags & 0xFF, bool(flags & (1 << 9)), bool(flags & (1 << 10))
            if kind not in _SPECIAL_NULLS:
                raise RDataError(f"pairlist ends with SEXP type {kind}")
            return out
        if kind in (LGLSXP, INTSXP):
            n = self.length()
            values = [None if v == _NA_INT else v for v in struct.unpack(f">{n}i", self.take(4 * n))]
        elif kind == REALSXP:
            n = self.length()
            values = list(struct.unpack(f">{n}d", self.take(8 * n)))
        elif kind in (STRSXP, VECSXP):
            values = [self.item() for _ in range(self.length())]
        else:
            raise RDataError(f"SEXP type {kind} is not supported by this reader (text data sets only)")
        attributes = self.item() if has_attr else {}
        return RObject(kind, values, attributes if isinstance(attributes, dict) else {})


def unserialize(data: bytes) -> object:
    """One object from an XDR R serialization stream (``saveRDS`` content after decompression)."""
    reader = _Reader(data)
    reader.header()
    return reader.item()


def _decompress_blob(blob: bytes) -> bytes:
    if len(blob) < 6:
        raise RDataError("lazy-load blob too short")
    size = struct.unpack(">I", blob[:4])[0]
    body = blob[4:]
    try:
        if body[:1] in (b"Z", b"2", b"X", b"0"):  # compression types 2/3 carry a method byte
            method, body = body[:1], body[1:]
            out = {b"Z": zlib.decompress, b"2": bz2.decompress, b"X": lzma.decompress, b"0": bytes}[method](body)
        else:  # type 1: zlib
            out = zlib.decompress(body)
    except (zlib.error, OSError, lzma.LZMAError) as exc:
        raise RDataError(f"cannot decompress a lazy-load blob ({exc})") from None
    if len(out) != size:
        raise RDataError(f"lazy-load blob decompressed to {len(out)} bytes, expected {size}")
    return out


def lazyload_index(rdx: bytes) -> dict[str, tuple[int, int]]:
    """Each variable's (offset, length) in the ``.rdb`` file, from the index as shipped (gzip)."""
    try:
        data = gzip.decompress(rdx) if rdx[:2] == b"\x1f\x8b" else rdx
    except (OSError, EOFError) as exc:
        raise RDataError(f"cannot decompress the lazy-load index ({exc})") from None
    index = unserialize(data)
    if not isinstance(index, RObject) or index.type != VECSXP:
        raise RDataError("lazy-load index is not an R list")
    names = index.attributes.get("names")
    fields = dict(zip(names.values, index.values)) if isinstance(names, RObject) else {}
    variables = fields.get("variables")
    var_names = variables.attributes.get("names") if isinstance(variables, RObject) else None
    if not isinstance(var_names, RObject):
        raise RDataError("lazy-load index has no named 'variables'")
    out = {}
    for name, where in zip(var_names.values, variables.values):
        if not isinstance(where, RObject) or len(where.values) != 2:
            raise RDataError(f"lazy-load index entry {name!r} is not an (offset, length) pair")
        out[name] = (int(where.values[0]), int(where.values[1]))
    return out


def lazyload_objects(rdx: bytes, rdb: bytes) -> dict[str, object]:
    """Every variable of a lazy-load database, by name."""
    return {name: unserialize(_decompress_blob(rdb[offset : offset + length]))
            for name, (offset, length) in lazyload_index(rdx).items()}
