"""``evospec export``: a drafter that EAGLE, vLLM or SGLang loads unchanged, with a chosen static vocabulary.

The draft vocabulary is the drafter's own (``eagle3``), the K most frequent tokens (``frspec:K``,
FR-Spec's pruning) or the token ids of a file. Its ``lm_head`` rows are the drafter's own where it
has them; from a bundle, the other tokens take the reservoir's rows (synthesised by the
``reservoir`` pass, counted in the summary); from a bare checkpoint they cannot, so ``frspec:K``
picks among the drafter's own tokens there. ``--format vllm --vocab evospec:K`` writes a living
drafter for the EvoSpec vLLM plugin (``evospec.serving``): K resident rows (the policy's initial
set), the reservoir the policy draws from and the statistical index (``serving/living.py``);
``evospec:K+align`` (or ``frspec:K+align``) also turns on the plugin's online alignment of those rows.
Taps are written in the engine's numbering (SGLang counts the output of layer i, the others the
input), ``target_hidden_size`` only when it differs (upstream EAGLE shares the target's embeddings then). ``sglang`` also writes the token list SGLang
takes as ``--speculative-token-map``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from evospec.core.atomic import atomic_directory
from evospec.core.errors import SettingsError
from evospec.runtime.bundle import check_files, load_reservoir, onnx_weight, read_manifest
from evospec.runtime.checkpoint import check_vocab_maps, read_config, write_checkpoint_files
from evospec.runtime.checkpoint_weights import complete_vocab_maps, drop_known_buffers, read_weights
from evospec.runtime.drafter import draft_vocab_target_ids
from evospec.runtime.vocab.frequencies import TokenFrequencies
from evospec.serving.living import ARCHITECTURE, LivingSpec, make_shared_vocabulary, write_living_files

FORMATS = ("eagle", "vllm", "sglang")
TOKEN_MAP_FILE = "speculative_token_map.pt"


@dataclass(frozen=True)
class ExportSummary:
    format: str
    vocab: str
    draft_vocab_size: int
    rows_from_drafter: int
    rows_from_reservoir: int  # synthesised rows, only from a bundle
    tap_ids_written: list[int] | None
    files: list[str]


def read_token_file(path: Path) -> torch.Tensor:
    """Token ids from a JSON list or a ``torch.save``d list/tensor (SGLang's token-map format)."""
    try:
        ids = json.loads(path.read_text()) if path.suffix == ".json" else torch.load(path, weights_only=True)
    except Exception as exc:  # unreadable, not JSON, not a torch file: say which
        raise SettingsError(f"vocabulary file {path}: cannot read token ids ({type(exc).__name__}: {exc})") from None
    return torch.as_tensor(ids, dtype=torch.long).flatten()


def chosen_ids(vocab: str, own: torch.Tensor, vocab_size: int, frequencies: Path | None, any_token: bool) -> torch.Tensor:
    """Sorted target ids of the exported draft vocabulary."""
    if vocab == "eagle3":
        ids = own
    elif vocab.startswith("frspec:"):
        k = vocab.partition(":")[2]
        if not k.isdigit() or int(k) < 1:
            raise SettingsError(f"--vocab {vocab!r}: expected frspec:K with a positive integer K")
        if frequencies is None:
            raise SettingsError("--vocab frspec:K needs --frequencies FILE (`evospec vocab frequencies`) or a bundle "
                                "compiled with --frequencies")
        table = TokenFrequencies.load(frequencies)
        ranked = table.ranked(table.vocab_size, vocab_size)
        if not any_token:  # a bare checkpoint has rows only for its own tokens: prune within them
            ranked = ranked[torch.isin(ranked, own)]
        if int(k) > ranked.numel():
            raise SettingsError(f"--vocab {vocab}: only {ranked.numel()} tokens can be chosen here")
        ids = ranked[: int(k)]
    else:
        ids = read_token_file(Path(vocab))
    ids = ids.unique()  # sorted: EAGLE's d2t order (draft ids in target-id order)
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise SettingsError(f"--vocab {vocab}: token ids must be non-empty and in [0, {vocab_size})")
    if not any_token and not bool(torch.isin(ids, own).all()):
        raise SettingsError(f"--vocab {vocab}: {int((~torch.isin(ids, own)).sum())} tokens are outside the drafter's "
                            "own vocabulary, which has no rows for them; export from a bundle (--bundle) instead")
    return ids


def _head_rows(ids: torch.Tensor, own: torch.Tensor, head: torch.Tensor,
               reservoir: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Head rows of ``ids``: the drafter's own where it has them, else the reservoir's; and which were own."""
    row_of = {int(t): i for i, t in enumerate(own.tolist())}
    from_drafter = torch.tensor([t in row_of for t in ids.tolist()], dtype=torch.bool)
    rows = torch.empty(ids.numel(), head.shape[1], dtype=head.dtype)
    if bool(from_drafter.any()):
        rows[from_drafter] = head[[row_of[int(t)] for t in ids[from_drafter]]]
    if not bool(from_drafter.all()):
        rows[~from_drafter] = reservoir[ids[~from_drafter]].to(head.dtype)
    return rows, from_drafter


def _living_vocabulary(vocab: str, fmt: str, own: torch.Tensor, vocab_size: int, frequencies: Path | None,
                       any_token: bool) -> tuple[LivingSpec, torch.Tensor, torch.Tensor]:
    """The spec, the reservoir ids (every token from a bundle, the drafter's own otherwise) and the
    initial resident set of ``--vocab evospec:K``."""
    if fmt != "vllm":
        raise SettingsError(f"--vocab {vocab}: a living vocabulary runs in the EvoSpec vLLM plugin; use --format vllm")
    if frequencies is None:
        raise SettingsError(f"--vocab {vocab} needs --frequencies FILE with successors (`evospec vocab frequencies "
                            "--successors 8`) or a bundle compiled with --frequencies")
    spec = LivingSpec.parse(vocab)
    reservoir_ids = torch.arange(vocab_size) if any_token else own.sort().values
    table = TokenFrequencies.load(frequencies)
    rows = torch.zeros(reservoir_ids.numel(), 1)  # placeholder rows: only the choice of ids is wanted here
    shared = make_shared_vocabulary(spec, reservoir_ids, rows, table, vocab_size, background=False)
    initial = shared.resident.ids.clone()
    shared.close()
    return spec, reservoir_ids, initial


def export_drafter(out: Path, fmt: str, vocab: str = "eagle3", *, drafter_dir: Path | None = None,
                   bundle_dir: Path | None = None, frequencies: Path | None = None,
                   tap_numbering: str = "input") -> ExportSummary:
    if fmt not in FORMATS:
        raise SettingsError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if (drafter_dir is None) == (bundle_dir is None):
        raise SettingsError("export needs exactly one of --drafter DIR and --bundle DIR")
    reservoir = None
    if bundle_dir is not None:
        if tap_numbering != "input":
            raise SettingsError("--tap-numbering applies to --drafter; a bundle's drafter copy counts taps as EAGLE does")
        manifest = read_manifest(bundle_dir)
        check_files(Path(bundle_dir), manifest)
        drafter_dir = Path(bundle_dir) / "drafter"  # written in EAGLE's numbering by the compile
        reservoir = (load_reservoir(Path(bundle_dir)) if manifest["backend"] == "torch"
                     else onnx_weight(Path(bundle_dir) / manifest["artefacts"]["onnx/head"], "reservoir"))
        if frequencies is None and "statistical_index" in manifest:
            frequencies = Path(bundle_dir) / manifest["statistical_index"]["file"]
    config = read_config(drafter_dir, tap_numbering)
    weights, path = read_weights(Path(drafter_dir))
    weights = complete_vocab_maps(drop_known_buffers(weights, path), config, path)
    check_vocab_maps(weights["d2t"], weights["t2d"], config, path)
    own = draft_vocab_target_ids(weights["d2t"].long())
    head = weights["lm_head.weight"]
    living = None
    if vocab.startswith("evospec:") or vocab.endswith("+align"):  # a living drafter: initial set, reservoir, index
        living, reservoir_ids, ids = _living_vocabulary(vocab, fmt, own, config.vocab_size, frequencies,
                                                        any_token=reservoir is not None)
    else:
        ids = chosen_ids(vocab, own.sort().values, config.vocab_size, frequencies, any_token=reservoir is not None)
    rows, from_drafter = _head_rows(ids, own, head, reservoir)
    t2d = torch.zeros(config.vocab_size, dtype=torch.bool)
    t2d[ids] = True
    weights.update({"lm_head.weight": rows.contiguous(), "d2t": ids - torch.arange(ids.numel()), "t2d": t2d})
    exported = dataclasses.replace(config, draft_vocab_size=int(ids.numel()))
    with atomic_directory(Path(out)) as folder:
        write_checkpoint_files(folder, exported, weights, tap_numbering="output" if fmt == "sglang" else "input")
        if fmt == "sglang":
            torch.save(ids.tolist(), folder / TOKEN_MAP_FILE)  # SGLang's --speculative-token-map, beside the drafter
        if living is not None:
            write_living_files(folder, living, reservoir_ids, _head_rows(reservoir_ids, own, head, reservoir)[0],
                               Path(frequencies))
            written_config = json.loads((folder / "config.json").read_text())
            written_config["architectures"] = [ARCHITECTURE]
            written_config["evospec"] = living.table()
            (folder / "config.json").write_text(json.dumps(written_config, indent=2))
    written = json.loads((Path(out) / "config.json").read_text()).get("eagle_aux_hidden_state_layer_ids")
    return ExportSummary(fmt, vocab, int(ids.numel()), int(from_drafter.sum()), int((~from_drafter).sum()), written,
                         sorted(p.name for p in Path(out).iterdir()))
