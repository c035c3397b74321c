"""The living-vocabulary drafter directory: what ``export --format vllm --vocab evospec:K`` writes and
the plugin reads.

The directory is an ordinary EAGLE-3 drafter (config.json, model.safetensors with K ``lm_head`` rows
and ``d2t``) whose config names the plugin's architecture and carries an ``evospec`` table::

    "architectures": ["Eagle3EvoSpecLlamaForCausalLM"],
    "evospec": {"format": "evospec-living-vocabulary/1", "policy": "evospec:K",
                "reservoir": "evospec/reservoir.safetensors", "frequencies": "evospec/frequencies.json",
                "align": {"lr": 0.001, ...}}

``align`` (written by ``--vocab evospec:K+align``; absent: off) turns on online alignment of the
resident rows (``serving/alignment.py``), with its settings.

The reservoir (``ids`` [N], ``rows`` [N, d]) is every head row the policy may bring in: the drafter's
own rows from a bare checkpoint, every target token's row from a bundle. It lives in a subfolder
because vLLM loads every top-level ``*.safetensors`` file as model weights.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from evospec.core.errors import CheckpointError, SettingsError
from evospec.runtime.vocab.base import PolicyInputs, VocabPolicy
from evospec.runtime.vocab.evospec_policy import EvoSpecPolicy
from evospec.runtime.vocab.evospec_settings import EvoSpecConfig
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.runtime.vocab.static import frspec_policy
from evospec.serving.alignment import ResidentAlignSettings
from evospec.serving.resident_rows import ResidentRows
from evospec.serving.shared_vocabulary import SharedVocabulary

ARCHITECTURE = "Eagle3EvoSpecLlamaForCausalLM"  # vLLM's eagle3 method keeps names that start with Eagle3
FORMAT = "evospec-living-vocabulary/1"
RESERVOIR_FILE = "evospec/reservoir.safetensors"
FREQUENCIES_FILE = "evospec/frequencies.json"
POLICIES = ("frspec:K", "evospec:K", "evospec:K:VARIANT")
ALIGN = "+align"  # a policy's suffix: train the resident rows online (as the runtime's evospec:K+align)


@dataclass(frozen=True)
class LivingSpec:
    """The ``evospec`` table of a living drafter's config.json.

    Attributes:
        policy: ``frspec:K`` (static) or ``evospec:K[:VARIANT]`` (living); K is the resident row count.
        reservoir: file of the reservoir rows, relative to the drafter directory.
        frequencies: the statistical index (token frequencies with successors), relative likewise.
        align: online alignment's settings, or None: off.
    """

    policy: str
    reservoir: str = RESERVOIR_FILE
    frequencies: str = FREQUENCIES_FILE
    align: ResidentAlignSettings | None = field(default=None)

    @classmethod
    def parse(cls, vocab: str) -> LivingSpec:
        """``evospec:K[:VARIANT]`` or ``frspec:K``, with ``+align`` for online alignment (default settings)."""
        policy, align = (vocab[: -len(ALIGN)], True) if vocab.endswith(ALIGN) else (vocab, False)
        policy_size(policy)
        return cls(policy, align=ResidentAlignSettings() if align else None)

    def table(self) -> dict:
        """The ``evospec`` table of config.json."""
        table = {"format": FORMAT, "policy": self.policy, "reservoir": self.reservoir, "frequencies": self.frequencies}
        return table if self.align is None else {**table, "align": self.align.table()}

    @property
    def k(self) -> int:
        return policy_size(self.policy)


def policy_size(policy: str) -> int:
    """K of ``frspec:K`` / ``evospec:K[:VARIANT]``; anything else is refused by name."""
    name, _, rest = policy.partition(":")
    k = rest.partition(":")[0]
    if name not in ("frspec", "evospec") or not k.isdigit() or int(k) < 2 or (name == "frspec" and ":" in rest):
        raise SettingsError(f"living vocabulary {policy!r}: expected one of {', '.join(POLICIES)} with K >= 2, "
                            f"optionally with {ALIGN}")
    return int(k)


def make_shared_vocabulary(spec: LivingSpec, reservoir_ids: torch.Tensor, reservoir_rows: torch.Tensor,
                           frequencies: TokenFrequencies, vocab_size: int, background: bool = True) -> SharedVocabulary:
    """The policy of ``spec`` over the reservoir, with its initial K rows resident."""
    k = spec.k
    if k > reservoir_ids.numel():
        raise SettingsError(f"{spec.policy}: K={k} but the reservoir has rows for {reservoir_ids.numel()} tokens only")
    policy: VocabPolicy
    if spec.policy.startswith("frspec:"):
        policy = frspec_policy(PolicyInputs(vocab_size, reservoir_ids), k, frequencies)
    else:
        # one set serves the whole batch, so there is no single root state to route a mass fill from: the
        # tail's unused budget fills by frequency here (README, "Serving with vLLM")
        settings = replace(EvoSpecConfig.builtin().for_policy(spec.policy).policy, mass_fill=False)
        policy = EvoSpecPolicy(k, frequencies, vocab_size, settings, name=spec.policy)
    has_row = torch.zeros(vocab_size, dtype=torch.bool)
    has_row[reservoir_ids.long()] = True
    ranked = frequencies.ranked(vocab_size, vocab_size)
    fill = ranked[has_row[ranked]]
    placeholder = ResidentRows(reservoir_ids, reservoir_rows, fill[:k])
    shared = SharedVocabulary(policy, placeholder, fill, background)
    shared.resident = ResidentRows(reservoir_ids, reservoir_rows, shared.fit(policy.active_ids()))
    return shared


def write_living_files(folder: Path, spec: LivingSpec, reservoir_ids: torch.Tensor, reservoir_rows: torch.Tensor,
                       frequencies: Path) -> None:
    """The reservoir and the frequency file into ``folder`` (the export's temporary directory)."""
    (folder / spec.reservoir).parent.mkdir(parents=True, exist_ok=True)
    save_file({"ids": reservoir_ids.long().contiguous(), "rows": reservoir_rows.contiguous()}, str(folder / spec.reservoir))
    shutil.copyfile(frequencies, folder / spec.frequencies)


def read_spec(directory: Path) -> tuple[LivingSpec, dict]:
    """The living spec and the whole config of a drafter directory; a clear error for anything else."""
    path = Path(directory) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist: not a drafter directory") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    table = config.get("evospec")
    if not isinstance(table, dict) or table.get("format") != FORMAT:
        raise CheckpointError(f"{directory}: not a living-vocabulary drafter (config.json has no evospec table of "
                              f"format {FORMAT}); write one with `evospec export --format vllm --vocab evospec:K`")
    align = table.get("align")
    if align is not None and not isinstance(align, dict):
        raise CheckpointError(f"{path}: evospec.align must be a table of alignment settings (got {align!r})")
    return LivingSpec(str(table["policy"]), str(table.get("reservoir", RESERVOIR_FILE)),
                      str(table.get("frequencies", FREQUENCIES_FILE)),
                      None if align is None else ResidentAlignSettings.from_table(align)), config


def load_shared_vocabulary(directory: Path, background: bool = True) -> SharedVocabulary:
    """What the plugin builds at drafter load: the policy, the reservoir and the initial resident set."""
    spec, config = read_spec(directory)
    if int(config.get("draft_vocab_size", -1)) != spec.k:
        raise CheckpointError(f"{directory}: draft_vocab_size {config.get('draft_vocab_size')} != K of {spec.policy}")
    try:
        reservoir = load_file(str(Path(directory) / spec.reservoir))
    except FileNotFoundError:
        raise CheckpointError(f"{directory}: reservoir {spec.reservoir} is missing") from None
    frequencies = TokenFrequencies.load(Path(directory) / spec.frequencies)
    return make_shared_vocabulary(spec, reservoir["ids"], reservoir["rows"], frequencies, int(config["vocab_size"]),
                                  background)
