"""Typed settings for speculative decoding, one dataclass per concern.

Defaults are named constants so that configs, the CLI and the Python API agree.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from evospec.core.errors import SettingsError

DEFAULT_DRAFT_DEPTH = 5
DEFAULT_DRAFT_TOPK = 8
DEFAULT_DRAFT_TOKENS = 32
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_THREADS = 2  # training threads: the machine kind README's figures come from; any fixed value reproduces itself

DraftTreeKind = Literal["chain", "tree"]
DraftBudgetKind = Literal["fixed", "auto"]
TreeChildrenKind = Literal["auto", "sampled", "topk"]
VerifierKind = Literal["auto", "python", "native"]

# What each annotation accepts: an int field takes no bool and no float; a float field takes an int.
_ACCEPTS = {"int": (int,), "float": (int, float), "bool": (bool,), "DraftTreeKind": (str,), "DraftBudgetKind": (str,),
            "TreeChildrenKind": (str,), "VerifierKind": (str,)}


def check_field_types(settings: object) -> None:
    """Type-check a settings dataclass as loaded (TOML, CLI or Python), naming the field and the value:
    ``max_new_tokens = "many"`` or ``3.5`` and ``use_draft = "no"`` are errors here, not crashes later."""
    for field in dataclasses.fields(settings):
        accepts = _ACCEPTS.get(str(field.type))
        value = getattr(settings, field.name)
        if accepts is None:
            continue
        wrong = not isinstance(value, accepts) or (bool not in accepts and isinstance(value, bool))
        if wrong:
            raise SettingsError(f"{field.name} must be {field.type}, got {type(value).__name__} {value!r}")


def read_toml(path: str | Path, what: str = "config file") -> dict:
    """The TOML document at ``path``, or a one-line SettingsError saying what is wrong with the file."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SettingsError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise SettingsError(f"{what} {path} is a directory, not a TOML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"{what} {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{what} {path} is not valid TOML: {exc}") from None


@dataclass(frozen=True)
class DecodeSettings:
    """How one generation call drafts, verifies and samples.

    Attributes:
        max_new_tokens: Number of new tokens to produce (fewer if EOS is produced).
        temperature: 0 selects greedy verification (output equals the target's greedy output);
            > 0 selects exact speculative sampling from the target's tempered distribution.
        top_p: Nucleus filter applied to the target's distribution when sampling (1.0 = off).
        seed: Seed of the generator used for drafting samples and acceptance tests.
        draft_tree: ``chain`` drafts one token per depth; ``tree`` drafts EAGLE's dynamic tree.
        draft_depth: Number of draft levels per step.
        draft_topk: Children expanded per node and frontier width of the dynamic tree.
        draft_tokens: Nodes kept in the dynamic tree (best cumulative log-probability).
        draft_budget: ``fixed`` keeps ``draft_tokens`` nodes (a chain: ``draft_depth``); ``auto`` keeps the
            nodes whose path probability pays for their verified row under costs measured online, and
            drafts levels only while they can pay (at most the fixed tree: runtime/tree.py); on a tree it also
            drafts the chain of ``draft_depth`` on steps where chains have lately delivered more tokens per ms
            (runtime/shape_choice.py).
        draft_spine: With ``auto`` on a tree: draft the first-choice path to ``draft_depth`` whatever it is
            worth, so the tree holds the chain, and let the value rule add only the nodes off it. False: the
            rule prices the path too, and may cut it short (runtime/tree.py, ``StepCosts.spine``).
        draft_siblings: With a greedy chain: also verify the drafter's second choice at each of the first
            ``draft_siblings`` levels, as a leaf beside the chain's node there (runtime/tree.py). The drafter has
            computed those levels' logits for the chain already, so a sibling costs one more verified row and no
            drafter call; where the first choice is wrong and the second right, the step delivers one more
            token. 0 drafts the plain chain. With ``draft_budget = "auto"``, each step drafts the plain chain or
            the chain with its siblings, whichever delivered more tokens per ms lately, compared on the same text
            (runtime/shape_choice.py: a chain with siblings holds the chain, so its steps say what the chain would
            have emitted); no value rule cuts the chain then.
        draft_sibling_ratio: With ``draft_siblings``: keep a level's second choice only where the drafter's first
            choice there is less than this many times as likely as its second (a confident first choice is rarely
            wrong, and a second choice beside it is rarely the target's: README, issue 18, stop 47). 0 keeps every
            level's; otherwise it must exceed 1.
        tree_children: How a tree picks each node's children when sampling (temperature > 0): ``sampled`` draws
            them from the drafter's distribution without replacement and verifies them by recursive rejection
            (runtime/sampled_tree.py), ``topk`` takes the drafter's likeliest, verified as point masses (what the
            C++ library drafts); ``auto``: sampled with Python's drafter, top-k with the C++ library. Greedy
            decoding always takes the top-k.
        verifier: Who verifies sampled steps (temperature > 0): ``python`` (runtime/verify.py) or ``native``, the C++
            library's verifier (runtime/native_verify.py: the same law in a few passes a row; ``make cpp``); ``auto``:
            native when the C++ library drafts, Python otherwise. The two draw different numbers from the seed's
            generator, so one seed gives different samples of the same law. Greedy decoding is verified in Python.
        plain_fallback: Take a plain step (verify the root alone, draft nothing) wherever plain steps have lately
            delivered more tokens per ms than speculative ones, measured online (runtime/speculation_gate.py);
            False speculates every step.
        use_draft: False decodes autoregressively through the same code (a tree of no nodes).
        stop_on_eos: Stop after the target's EOS token, as ``transformers.generate`` does.
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    draft_tree: DraftTreeKind = "tree"
    draft_depth: int = DEFAULT_DRAFT_DEPTH
    draft_topk: int = DEFAULT_DRAFT_TOPK
    draft_tokens: int = DEFAULT_DRAFT_TOKENS
    draft_budget: DraftBudgetKind = "fixed"
    draft_spine: bool = True
    draft_siblings: int = 0
    draft_sibling_ratio: float = 0.0
    tree_children: TreeChildrenKind = "auto"
    verifier: VerifierKind = "auto"
    plain_fallback: bool = False
    use_draft: bool = True
    stop_on_eos: bool = True

    def __post_init__(self) -> None:
        check_field_types(self)
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.temperature >= 0.0, "temperature must be >= 0"),
            (0.0 < self.top_p <= 1.0, "top_p must be in (0, 1]"),
            (self.draft_tree in ("chain", "tree"), "draft_tree must be 'chain' or 'tree'"),
            (self.draft_depth >= 1, "draft_depth must be >= 1"),
            (self.draft_topk >= 1, "draft_topk must be >= 1"),
            (self.draft_tokens >= 1, "draft_tokens must be >= 1"),
            (self.draft_budget in ("fixed", "auto"), "draft_budget must be 'fixed' or 'auto'"),
            (0 <= self.draft_siblings <= self.draft_depth, "draft_siblings must be between 0 and draft_depth"),
            (self.draft_siblings == 0 or self.draft_tree == "chain",
             "draft_siblings adds second choices to a chain (draft_tree = 'chain'); a tree has its own children"),
            (self.draft_siblings == 0 or self.temperature == 0.0,
             ("draft_siblings needs greedy decoding (temperature 0): a sibling is the drafter's second choice, a "
              "fixed token beside a sampled node, which the sampled chain's acceptance test does not cover")),
            (self.draft_sibling_ratio == 0 or self.draft_sibling_ratio > 1,
             "draft_sibling_ratio must be 0 (every level's second choice) or > 1"),
            (self.draft_sibling_ratio == 0 or self.draft_siblings > 0,
             "draft_sibling_ratio chooses among a chain's siblings: it needs draft_siblings > 0"),
            (self.tree_children in ("auto", "sampled", "topk"), "tree_children must be 'auto', 'sampled' or 'topk'"),
            (self.verifier in ("auto", "python", "native"), "verifier must be 'auto', 'python' or 'native'"),
        ]
        for ok, message in checks:
            if not ok:
                field = message.split()[0]
                raise SettingsError(f"{message} (got {field} = {getattr(self, field)!r})")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sampled_verifier(self, native_drafter: bool) -> str:
        """Who verifies sampled steps, ``python`` or ``native``, when the C++ library drafts (``native_drafter``)
        or not; greedy steps are always verified in Python."""
        if self.greedy:
            return "python"
        if self.verifier == "auto":
            return "native" if native_drafter else "python"
        return self.verifier

    @property
    def tree_width(self) -> int:
        """Children per node: 1 for a chain."""
        return 1 if self.draft_tree == "chain" else self.draft_topk

    @property
    def tree_budget(self) -> int:
        """Draft nodes verified per step (with ``draft_budget = "auto"``: at most)."""
        return self.draft_depth if self.draft_tree == "chain" else self.draft_tokens

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: object) -> DecodeSettings:
        """Load the ``[decode]`` table of a TOML config, then apply non-None overrides."""
        path = Path(path)
        table = read_toml(path).get("decode", {})
        if not isinstance(table, dict):
            raise SettingsError(f"config file {path}: [decode] must be a table, got {type(table).__name__} {table!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(table) - known)
        if unknown:
            raise SettingsError(f"config file {path}: unknown [decode] keys {unknown}; known: {sorted(known)}")
        table.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**table)
