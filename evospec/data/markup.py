"""Plain text out of the markup that registry packages ship prose in: roff manual pages, the
GCIDE dictionary's dictd format, and fortune files.

The corpora measure which tokens real text uses, so markup must go (a ``\\fB`` or ``[1913
Webster]`` on every line would be frequent tokens no user writes) while every word stays. These
converters are deliberately simple: they keep the text of every line and drop what is layout.
"""

from __future__ import annotations

import re
import shlex
import unicodedata

# --- roff (man(7) and mdoc(7) pages) -------------------------------------------------------------

# groff special characters (\(xx, \[xx]) that carry text; unknown ones are dropped
_ROFF_CHARS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "bu": "•", "co": "©", "rg": "®", "tm": "™", "de": "°",
    "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’", "Fo": "«", "Fc": "»", "fo": "‹",
    "fc": "›", "<=": "≤", ">=": "≥", "mu": "×", "di": "÷", "+-": "±", "->": "→", "<-": "←", "ha": "^",
    "ti": "~", "ga": "`", "aa": "´", "rs": "\\", "sl": "/", "ba": "|", "br": "|", "lB": "[", "rB": "]",
    "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩", "ss": "ß", "ae": "æ", "AE": "Æ", "o/": "ø", "O/": "Ø",
    "r!": "¡", "r?": "¿", "pc": "·", "sc": "§", "ps": "¶", "Eu": "€", "eu": "€", "Po": "£", "Ye": "¥",
    "ct": "¢", "dg": "†", "at": "@", "sh": "#", "Do": "$", "dd": "‡", "fm": "′", "sd": "″",
}
_ROFF_STRINGS = {"R": "®", "Tm": "™", "lq": "“", "rq": "”", "Lq": "“", "Rq": "”", "Aq": "'", "dq": '"'}
_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", ":": "\u0308", "~": "\u0303", ",": "\u0327"}

_ESCAPE = re.compile(
    r"""\\(?:
      (?P<font>f(?:\[[^\]]*\]|\(..|.))            # font changes
    | (?P<size>s(?:[+-]?\d+|\[[^\]]*\]|\(..|'[^']*'))  # size changes
    | (?P<char>\((?P<c2>..)|\[(?P<cn>[^\]]*)\])   # special characters
    | (?P<str>\*(?:\[(?P<sn>[^\]]*)\]|\((?P<s2>..)|(?P<s1>.)))  # string registers
    | (?P<reg>[nkgmM](?:\[[^\]]*\]|\(..|.))        # number registers, colours, marks
    | (?P<arg>[hvwoXlLDZbxRSCN]'[^']*')           # motions, widths, drawing, device controls
    | (?P<one>.)                                   # everything else: one character
    )""",
    re.VERBOSE | re.DOTALL,
)
_ONE = {"-": "-", "e": "\\", "\\": "\\", " ": " ", "~": " ", "0": " ", "'": "´", "`": "`", ".": ".",
        "t": " ", "E": "\\"}
_DROP_ONE = set("&|^c%:/,)!{}dupratz") | {"\n"}


def _named_char(name: str) -> str:
    if name in _ROFF_CHARS:
        return _ROFF_CHARS[name]
    if re.fullmatch(r"u[0-9A-Fa-f]{4,6}(_[0-9A-Fa-f]{4,6})*", name):
        return unicodedata.normalize("NFC", "".join(chr(int(part.lstrip("u"), 16)) for part in name.split("_")))
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():  # \('e and friends
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    return ""


def _unescape(match: re.Match) -> str:
    if match.group("char"):
        return _named_char(match.group("c2") or match.group("cn") or "")
    if match.group("str"):
        return _ROFF_STRINGS.get(match.group("sn") or match.group("s2") or match.group("s1") or "", "")
    one = match.group("one")
    if one is not None:
        return _ONE.get(one, "" if one in _DROP_ONE else one)
    return ""


def roff_escapes(line: str) -> str:
    """A roff text line with its escapes resolved to the characters they print."""
    return _ESCAPE.sub(_unescape, line)


# macros whose arguments are text (man(7): B, I, SH, ...; mdoc(7): Nm, Nd, Fl, ...)
_TEXT_MACROS = {"SH", "SS", "B", "I", "SM", "SB", "Sh", "Ss", "Nm", "Nd", "Ar", "Pa", "Cm", "Dv", "Ev", "Va",
                "Em", "Sy", "Li", "Ql", "Dl", "Xr", "It", "Op", "Oo", "Oc", "Dq", "Sq", "Pq", "Ic", "Ad",
                "Ft", "Fn", "Fa", "Fd", "Er", "Tn", "Ux", "At", "Bx", "Ms", "Lk", "Mt", "UR", "MT", "OP", "TQ"}
_ALTERNATING = {"BR", "RB", "BI", "IB", "IR", "RI"}
# mdoc macros that may be called inside another's arguments (``.Op Fl v Ar file``): their names are layout
_MDOC_CALLABLE = {"Ac", "Ad", "An", "Ao", "Ap", "Aq", "Ar", "At", "Bc", "Bo", "Bq", "Brc", "Bro", "Brq", "Bx",
                  "Cm", "Dc", "Do", "Dq", "Dv", "Ec", "Em", "En", "Eo", "Er", "Es", "Ev", "Fa", "Fc", "Fl", "Fn",
                  "Fo", "Ft", "Ic", "Li", "Lk", "Ms", "Mt", "Nm", "No", "Ns", "Oc", "Oo", "Op", "Pa", "Pc", "Pf",
                  "Po", "Pq", "Qc", "Ql", "Qo", "Qq", "Sc", "So", "Sq", "Sx", "Sy", "Tn", "Ux", "Va", "Vt", "Xc",
                  "Xo", "Xr"}
_BREAKS = {"PP", "LP", "P", "Pp", "sp", "br", "TP", "IP", "HP", "RS", "RE", "Bl", "El", "Bd", "Ed", "SH",
           "SS", "Sh", "Ss", "It", "TS", "TE", "EX", "EE", "nf", "fi", "in", "ti"}
_NOFILL_ON, _NOFILL_OFF = {"nf", "EX"}, {"fi", "EE"}


def _wide(ch: str) -> bool:
    return unicodedata.east_asian_width(ch) in ("W", "F")


def _join(lines: list[str]) -> str:
    """Filled text: lines joined with spaces, except between two wide (CJK) characters."""
    out = ""
    for line in lines:
        if out and line and not (_wide(out[-1]) and _wide(line[0])):
            out += " "
        out += line
    return out


def _macro_args(rest: str) -> list[str]:
    try:
        return shlex.split(rest, posix=True)
    except ValueError:  # an unbalanced quote: take the words as they are
        return rest.split()


def roff_to_text(source: str) -> str:
    """The text of a roff manual page, paragraphs separated by blank lines.

    Comments, definitions (``.de``/``.ig`` blocks), conditionals and layout requests are dropped;
    text lines and the arguments of text macros (``.SH``, ``.B``, ``.BR``, ``.Nm``, ...) are kept
    with their escapes resolved. Filled paragraphs become one line each; ``.nf``/``.EX`` blocks
    keep their lines.
    """
    paragraphs: list[str] = []
    current: list[str] = []
    nofill = False
    skip_until: str | None = None
    in_table_spec = False

    def flush() -> None:
        text = "\n".join(current).strip("\n") if nofill else _join(current).strip()
        if text.strip():
            paragraphs.append(text)
        current.clear()

    for raw in source.splitlines():
        line = re.sub(r'\\".*$', "", raw) if '\\"' in raw else raw  # comments
        if skip_until is not None:
            if line.strip() == skip_until:
                skip_until = None
            continue
        if in_table_spec:  # tbl: options and format lines end with '.'
            if line.rstrip().endswith("."):
                in_table_spec = False
            continue
        if line[:1] in (".", "'"):
            parts = line[1:].strip().split(None, 1)
            if not parts:
                continue
            macro, rest = parts[0], parts[1] if len(parts) > 1 else ""
            if macro in ("de", "de1", "am", "ig"):
                skip_until = ".."
                continue
            if macro in _BREAKS:
                flush()
                nofill = (nofill or macro in _NOFILL_ON) and macro not in _NOFILL_OFF
                in_table_spec = macro == "TS"
            if macro in _TEXT_MACROS or macro == "IP":
                args = _macro_args(rest)
                if macro == "IP":
                    args = args[:1]
                elif macro[:1].isupper() and macro[1:2].islower():  # mdoc
                    args = [a for a in args if a not in _MDOC_CALLABLE]
                if args:
                    current.append(roff_escapes(" ".join(args)))
                if macro in ("SH", "SS", "Sh", "Ss"):
                    flush()
            elif macro in _ALTERNATING:
                current.append(roff_escapes("".join(_macro_args(rest))))
            continue
        text = roff_escapes(line.replace("\t", " ")).rstrip()
        if not text.strip():
            flush()
        else:
            current.append(text if nofill else text.strip())
    flush()
    return "\n\n".join(paragraphs)


# --- GCIDE (dictd format) --------------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_GCIDE_ACCENTS = {"`": "\u0300", "'": "\u0301", "^": "\u0302", "~": "\u0303", "=": "\u0304", "\"": "\u0308",
                  ".": "\u0307", "u": "\u0306", "v": "\u030c", ",": "\u0327"}
_GCIDE_ENTITIES = {"deg": "°", "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ", "frac12": "½", "frac14": "¼",
                   "frac34": "¾", "min": "′", "sec": "″", "root": "√", "th": "þ", "eth": "ð", "ng": "ŋ",
                   "sect": "§", "para": "¶", "pound": "£", "cent": "¢", "dagger": "†", "times": "×",
                   "divide": "÷", "middot": "·", "hand": "☞", "prime": "′", "Prime": "″"}


def dictd_number(text: str) -> int:
    """A dictd index offset or length (base 64, most significant digit first)."""
    value = 0
    for ch in text:
        value = value * 64 + _B64.index(ch)
    return value


def dictd_index(index: str) -> list[tuple[str, int, int]]:
    """(headword, offset, length) of every line of a dictd ``.index`` file."""
    rows = []
    for line in index.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3:
            rows.append((parts[0], dictd_number(parts[1]), dictd_number(parts[2])))
    return rows


def _gcide_entity(match: re.Match) -> str:
    inner = match.group(1)
    if len(inner) == 2 and inner[0] in _GCIDE_ACCENTS and inner[1].isalpha():
        return unicodedata.normalize("NFC", inner[1] + _GCIDE_ACCENTS[inner[0]])
    return _GCIDE_ENTITIES.get(inner, match.group(0))  # unknown: text such as [Colloq] stays


def gcide_text(entry: str) -> str:
    """One GCIDE entry as prose: headword, etymology and definitions, without pronunciation marks,
    source tags (``[1913 Webster]``), cross-reference braces or accent codes."""
    text = re.sub(r"^\s*\[[^\]]*(Webster|WordNet|PJC|Century|Chambers|Source)[^\]]*\]\s*$", "", entry, flags=re.M)
    text = re.sub(r"\\[^\\\n]*\\", "", text)  # \Ca*lor"ic\ pronunciation
    text = re.sub(r"\(([^()]*\*[^()]*)\)", "", text)  # (k[.a]*l[o^]r...) respellings
    text = re.sub(r"\[([`'^~=\".uv,][A-Za-z]|[A-Za-z][A-Za-z0-9]*)\]", _gcide_entity, text)
    text = text.replace("{", "").replace("}", "")
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paragraphs if p)


# --- fortune files -------------------------------------------------------------------------------


def fortunes(text: str) -> list[str]:
    """The entries of a fortune file (separated by lines holding only ``%``), stripped, non-empty."""
    return [entry.strip("\n") for entry in re.split(r"^%\s*$", text, flags=re.M) if entry.strip()]
