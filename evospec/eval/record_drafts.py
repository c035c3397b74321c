"""Record what the Python drafter runtime does, step by step, so the C++ library can be checked
against it (``evospec record-drafts``; tests/test_cpp.py).

The recorder runs the real decoding loop (``SpeculativeGenerator`` from a bundle, greedy) and, at
every draft step, keeps the inputs a C++ service would hand the drafter — the target's tapped
states of the newly committed positions, the newest token, the draft tokens the target accepted —
and what the Python runtime produced from them: the draft tree, the active set in head-column
order, and the rows moved. ``evospec-draft`` replays the inputs through the C++ library.

Layout of a recording directory:
- ``recording.json``: format, bundle, vocab policy, draft settings, prompt, and per step
  ``positions``, ``newest``, ``accepted`` (draft tokens accepted; the next step's tokens but its
  newest), ``tree`` {tokens, parents, depths}, ``active``, ``moved``;
- ``features.safetensors``: ``step_<i>`` float32 [positions, 3 x target hidden size].
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from evospec.core.errors import SettingsError
from evospec.core.settings import DecodeSettings
from evospec.runtime.drafter import DrafterKVCache
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.tree import DraftRequest, DraftTree, draft_tree

RECORDING_FORMAT = "evospec-draft-recording/1"


class RecordingGenerator(SpeculativeGenerator):
    """The decoding loop unchanged, with each draft step's inputs and outputs kept in ``steps``."""

    steps: list[dict]

    def _draft(self, cache, pairs_hidden, pairs_tokens, s, generator, width, budget, costs,
               siblings=0) -> tuple[DraftTree, float, float]:
        tree, root_s, tree_s = super()._draft(cache, pairs_hidden, pairs_tokens, s, generator, width, budget, costs,
                                              siblings)
        self.steps.append({
            "features": pairs_hidden.detach().float().cpu().clone(),  # [T, 3*Dt]
            "tokens": [int(t) for t in pairs_tokens],
            "tree": {"tokens": tree.tokens.tolist(), "parents": tree.parents.tolist(), "depths": tree.depths.tolist()},
            "active": self.drafter.active_ids.cpu().tolist(),
            "moved": int(self.drafter.moved_rows),
        })
        return tree, root_s, tree_s


def draft_settings(s: DecodeSettings) -> dict:
    return {"depth": s.draft_depth, "width": s.tree_width, "budget": s.tree_budget, "siblings": s.draft_siblings,
            "sibling_ratio": s.draft_sibling_ratio}


def record(bundle: Path, target: Path, prompt: list[int] | str, out: Path, settings: DecodeSettings,
           vocab: str | None = None, frequencies: Path | None = None, router: Path | None = None) -> dict:
    """Generate greedily from ``bundle`` with policy ``vocab`` (``router``: a DynaSpec router file)
    and write the recording to ``out``."""
    if settings.temperature != 0:
        raise SettingsError("recordings are greedy (temperature 0): the C++ drafter drafts deterministic trees")
    gen = RecordingGenerator.from_bundle(bundle, target, vocab=vocab, frequencies=frequencies, router=router)
    gen.steps = []
    ids = gen.encode(prompt) if isinstance(prompt, str) else list(prompt)
    result = gen.generate(ids, settings)
    drifts = getattr(gen.policy, "drifts", None)  # topic switches EvoSpec detected (its drift path ran)
    if gen.policy is not None and hasattr(gen.policy, "close"):
        gen.policy.close()
    steps = []
    for i, step in enumerate(gen.steps):
        following = gen.steps[i + 1]["tokens"] if i + 1 < len(gen.steps) else []
        steps.append({"positions": len(step["tokens"]), "newest": step["tokens"][-1], "accepted": following[:-1],
                      "tree": step["tree"], "active": step["active"], "moved": step["moved"]})
    recording = {"format": RECORDING_FORMAT, "bundle": str(bundle), "vocab": vocab,
                 "router": None if router is None else str(router), "settings": draft_settings(settings),
                 "prompt": ids, "new_tokens": result.token_ids, "drifts": drifts, "steps": steps}
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    save_file({f"step_{i}": s["features"].contiguous() for i, s in enumerate(gen.steps)}, str(out / "features.safetensors"))
    (out / "recording.json").write_text(json.dumps(recording))
    return recording


def load_recording(directory: Path) -> tuple[dict, list[torch.Tensor]]:
    from safetensors.torch import load_file

    path = Path(directory) / "recording.json"
    if not path.is_file():
        raise SettingsError(f"{directory} is not a draft recording (no recording.json; make one with `evospec record-drafts`)")
    recording = json.loads(path.read_text())
    if recording.get("format") != RECORDING_FORMAT:
        raise SettingsError(f"{path} is not an {RECORDING_FORMAT} file")
    features = load_file(str(Path(directory) / "features.safetensors"))
    return recording, [features[f"step_{i}"] for i in range(len(recording["steps"]))]


@dataclass
class PythonReplay:
    """The Python runtime driven the way the C++ library is: recorded features in, trees out."""

    trees: list[dict]
    active: list[list[int]]
    step_ms: list[float]


@torch.no_grad()
def replay_python(bundle: Path, target: Path, directory: Path, repeat: int = 1,
                  row_updates: dict[str, torch.Tensor] | None = None) -> PythonReplay:
    """Replay a recording through the Python drafter alone (no target forward): per step, the
    policy's observe/choose, the gather-plan update, the drafter's pass over the new positions and
    the tree. ``step_ms``: the best of ``repeat`` replays per step (what ``evospec-draft`` times).
    ``row_updates``: ``step_<i>_ids`` / ``step_<i>_rows`` written into the reservoir before step i
    (as ``evospec-draft --row-updates`` does), then the resident rows refreshed (online alignment's path);
    ``step_<i>_weight:<name>``: fuse/trunk weights written through ``update_trunk_weights``."""
    recording, features = load_recording(directory)
    row_updates = row_updates or {}
    gen = SpeculativeGenerator.from_bundle(bundle, target, vocab=recording["vocab"], router=recording.get("router"))
    drafter, policy = gen.drafter, gen.policy
    routed = policy is not None and hasattr(policy, "route")  # DynaSpec: the set follows the root state
    if routed:
        drafter.on_root_state = lambda state: drafter.set_active(policy.route(state))
    s = recording["settings"]
    prompt = recording["prompt"]
    best = [float("inf")] * len(features)
    trees: list[dict] = []
    active: list[list[int]] = []
    for r in range(max(1, repeat)):
        cache = DrafterKVCache(drafter.config, len(prompt) + 4096, torch.device("cpu"), torch.float32)
        if policy is not None:
            if hasattr(policy, "decoding"):  # recordings are greedy: a greedy fill, and the refresh gate at work
                policy.decoding(True)
            policy.reset(prompt)
        state = None
        for i, step in enumerate(recording["steps"]):
            prefix = f"step_{i}_weight:"
            weights = {k[len(prefix):]: v.float() for k, v in row_updates.items() if k.startswith(prefix)}
            if weights:
                drafter.update_trunk_weights(weights)
            if f"step_{i}_ids" in row_updates:
                ids = row_updates[f"step_{i}_ids"].long()
                drafter.reservoir.index_copy_(0, ids, row_updates[f"step_{i}_rows"].float())
                drafter.rows_changed(ids)
            t0 = time.perf_counter()
            tokens = (prompt[1:] if i == 0 else recording["steps"][i - 1]["accepted"]) + [step["newest"]]
            if policy is not None:
                policy.observe([step["newest"]] if i == 0 else tokens, state)
                if not routed:
                    drafter.set_active(policy.active_ids())
            start, t = cache.length, len(tokens)
            mask = torch.ones(t, start + t, dtype=torch.bool).tril(diagonal=start)
            hidden, logits = drafter(features[i][None], torch.tensor([tokens]), torch.arange(start, start + t)[None],
                                     cache, start, mask)
            cache.length += t
            request = DraftRequest(hidden=hidden[0, -1:], logits=logits[0, -1], committed=cache.length,
                                   width=s["width"], depth=s["depth"], budget=s["budget"],
                                   siblings=s.get("siblings", 0),  # recordings made before siblings have none
                                   sibling_ratio=s.get("sibling_ratio", 0.0))
            tree = draft_tree(drafter, cache, request, torch.Generator())
            state = drafter.context_state
            best[i] = min(best[i], (time.perf_counter() - t0) * 1e3)
            if r == 0:
                trees.append({"tokens": tree.tokens.tolist(), "parents": tree.parents.tolist(), "depths": tree.depths.tolist()})
                active.append(drafter.active_ids.cpu().tolist())
    if routed:
        drafter.on_root_state = None
    if policy is not None and hasattr(policy, "close"):
        policy.close()
    return PythonReplay(trees, active, best)
