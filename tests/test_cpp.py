"""The C++ drafter library (runtime/cpp) drafts exactly what the Python runtime drafts.

The library is built once per run in a temporary directory (removed afterwards) with cmake and the
torch wheel's libtorch. The Python runtime generates greedily from a torch bundle and records every
draft step (``evospec record-drafts``); ``evospec-draft`` replays the recorded target features
through the library; trees (tokens, parents, depths) and active sets (in head-column order) must
be equal at every step — on the demo pair shipped in the package and on a tiny pair built here, with
static policies and with EvoSpec's living vocabulary, whose set changes every step. A bad bundle
gives the Python runtime's one-line error.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from evospec.bundle.compile import compile_bundle
from evospec.cli import main
from evospec.core.errors import BundleError
from evospec.core.settings import DecodeSettings
from evospec.eval.cpp_drafter import CppDrafterError, mismatches, recorded_expectations, run_cpp
from evospec.eval.record_drafts import record, replay_python
from evospec.passes.base import CompileSettings
from evospec.runtime.bundle import check_files, read_manifest
from evospec.runtime.checkpoint import save_drafter
from evospec.runtime.vocab.frequencies import count_tokens
from evospec.testing.tiny import TINY_SHAPES, tiny_drafter, tiny_target
from evospec.train.demo_pair import ASSET_DIR

from .cpp_build import build_cpp, toolchain_problem
from .policy_bundle import DEMO_TARGET, compile_demo_policy_bundle

pytestmark = pytest.mark.cpp

TREE = DecodeSettings(max_new_tokens=48, draft_tree="tree", draft_depth=4, draft_topk=4, draft_tokens=12)
CHAIN = DecodeSettings(max_new_tokens=48, draft_tree="chain", draft_depth=5)
CHAIN_SIBLINGS = DecodeSettings(max_new_tokens=48, draft_tree="chain", draft_depth=5, draft_siblings=3,
                                draft_sibling_ratio=3.0)
LONG_TREE = DecodeSettings(max_new_tokens=96, draft_tree="tree", draft_depth=4, draft_topk=4, draft_tokens=12)


@pytest.fixture(scope="module")
def binary():
    """evospec-draft, built from runtime/cpp in a temporary directory that is removed afterwards."""
    problem = toolchain_problem()
    if problem:
        pytest.skip(f"the C++ drafter cannot be built here: {problem}")
    build = Path(tempfile.mkdtemp(prefix="evospec-cpp-build-"))
    try:
        build_cpp(build)
        yield build / "evospec-draft"
    finally:
        shutil.rmtree(build, ignore_errors=True)


@pytest.fixture(scope="module")
def work():
    directory = Path(tempfile.mkdtemp(prefix="evospec-cpp-test-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def demo_bundle(work):
    """The shipped demo pair compiled for torch with the indexes the policies read (``compile_demo_policy_bundle``)."""
    return compile_demo_policy_bundle(work)


@pytest.fixture(scope="module")
def tiny_bundle(work):
    """A tiny Llama pair built in code (a drafter with its own embeddings, 48-token draft vocabulary)."""
    model = tiny_target(TINY_SHAPES["llama"], seed=11)
    drafter = tiny_drafter(model, draft_vocab=48, seed=12, with_embeddings=True)
    model.save_pretrained(work / "tiny-target")
    save_drafter(drafter, work / "tiny-drafter")
    g = torch.Generator().manual_seed(13)
    docs = [torch.randint(0, 96, (64,), generator=g).tolist() for _ in range(32)]
    count_tokens([docs], 96, "random", successors=4).save(work / "tiny-frequencies.json")
    compile_bundle(work / "tiny-target", work / "tiny-drafter", work / "tiny-bundle",
                   CompileSettings(backend="torch", buckets=(16, 32, 96), index_dims=8,
                                   frequencies=str(work / "tiny-frequencies.json")))
    return work / "tiny-target", work / "tiny-bundle"


def check_against_python(binary, bundle, target, recording_dir, prompt, settings, vocab, out) -> dict:
    recording = record(bundle, target, prompt, recording_dir, settings, vocab=vocab)
    assert len(recording["steps"]) >= 5, "too few draft steps to compare"
    cpp = run_cpp(binary, bundle, recording_dir, out, target=target)
    assert mismatches(*recorded_expectations(recording_dir), cpp) == []
    return recording


def changes(recording: dict) -> int:
    steps = recording["steps"]
    return sum(steps[i]["active"] != steps[i - 1]["active"] for i in range(1, len(steps)))


SLOW = pytest.mark.slow  # more of the same check: kept for `make test-all`, out of the default suite's time

@pytest.mark.parametrize(("settings", "vocab"), [
    # the living vocabulary's trees stay in the default run through test_tiny_pair_drafts_equal_python[tree-evospec-sync]
    (CHAIN, None), (CHAIN_SIBLINGS, "frspec:128"), (TREE, "frspec:128"), pytest.param(LONG_TREE, "evospec:64:every-cycle:sync", marks=SLOW),
    pytest.param(CHAIN, "evospec:64", marks=SLOW),
    pytest.param(CHAIN, "evospec:48:core-25", marks=SLOW), pytest.param(TREE, "evospec:64:no-context", marks=SLOW),
    (TREE, "evospec:64"), pytest.param(CHAIN, "evospec:48:frequency-fill:sync", marks=SLOW),
    pytest.param(TREE, "evospec:64:no-sticky", marks=SLOW), (CHAIN, "evospec:64:hold-0"),
], ids=["chain-own-vocab", "chain-siblings-frspec", "tree-frspec", "tree-evospec-sync", "chain-evospec-pipelined", "chain-evospec-core-25",
        "tree-evospec-no-context", "tree-evospec-mass-fill", "chain-evospec-frequency-fill-sync",
        "tree-evospec-no-sticky", "chain-evospec-refresh-gate"])
def test_demo_pair_drafts_equal_python(binary, demo_bundle, work, settings, vocab):
    name = f"demo-{settings.draft_tree}-{settings.draft_siblings}-{vocab}".replace(":", "_")
    recording = check_against_python(binary, demo_bundle, DEMO_TARGET, work / name, "def parse(", settings, vocab,
                                      work / f"{name}.json")
    if settings is CHAIN_SIBLINGS:  # the recorded trees hold siblings, and the binary read them from the recording
        assert any(len(step["tree"]["tokens"]) > max(step["tree"]["depths"], default=0) for step in recording["steps"])
    if vocab == "evospec:64:every-cycle:sync":  # the living vocabulary really lives: a new set at every step
        # (routed and queried every cycle: the chosen settings keep a greedy request's set while it holds),
        assert changes(recording) == len(recording["steps"]) - 1
        assert recording["drifts"] >= 1  # and a topic switch was detected (drift path + boosted semantic query)
    if vocab == "evospec:64" and settings is TREE:  # the mass fill, routed from each root state, moves with the context
        assert changes(recording) >= 0.5 * (len(recording["steps"]) - 1)


@pytest.fixture(scope="module")
def many_clusters_bundle(work, demo_bundle):
    """``demo_bundle`` recompiled with 400 mass clusters: more than the 256 both runtimes rank before they check
    whether the best clusters hold what the fill reads (the partial ranking of mass_fill.cpp and mass_fill.py)."""
    compile_bundle(DEMO_TARGET, ASSET_DIR / "drafter", work / "many-clusters-bundle",
                   CompileSettings(backend="torch", buckets=(64, 128, 512), index_dims=16, mass_clusters=400,
                                   frequencies=str(work / "demo-frequencies.json")))
    return work / "many-clusters-bundle"


def test_a_fill_over_many_clusters_equals_pythons(binary, many_clusters_bundle, work):
    recording = check_against_python(binary, many_clusters_bundle, DEMO_TARGET, work / "many-clusters",
                                      "def parse(", TREE, "evospec:64", work / "many-clusters.json")
    assert changes(recording) >= 0.5 * (len(recording["steps"]) - 1)


@pytest.mark.parametrize(("settings", "vocab"), [(TREE, "evospec:24:sync"), pytest.param(CHAIN, "full", marks=SLOW)],
                         ids=["tree-evospec-sync", "chain-full"])
def test_tiny_pair_drafts_equal_python(binary, tiny_bundle, work, settings, vocab):
    target, bundle = tiny_bundle
    name = f"tiny-{settings.draft_tree}-{vocab}".replace(":", "_")
    recording = check_against_python(binary, bundle, target, work / name, [3, 17, 42, 5, 9], settings, vocab,
                                     work / f"{name}.json")
    if vocab == "evospec:24:sync":  # 44 of 45 steps on 2026-12-03: evidence can leave a set as it was
        assert changes(recording) >= 0.9 * (len(recording["steps"]) - 1)


@pytest.fixture(scope="module")
def demo_router(demo_bundle, work) -> Path:
    """A DynaSpec router for the demo bundle: 16 clusters of its reservoir, 32 hidden units, a few steps on random
    states (enough for sets that move with the root state; not a good router)."""
    from safetensors.torch import load_file

    from evospec.runtime.vocab.dynaspec import cluster_rows, train_router

    reservoir = load_file(str(demo_bundle / "reservoir.safetensors"))["reservoir"]
    g = torch.Generator().manual_seed(0)
    router = train_router(torch.randn(256, 128, generator=g), torch.randint(0, 512, (256, 3), generator=g),
                          cluster_rows(reservoir, 16), 512, hidden=32, steps=30)
    router.backbone_shares = {64: 0.25, 256: 0.5}
    router.save(work / "router.safetensors")
    return work / "router.safetensors"


def test_dynaspec_routed_sets_equal_python(binary, demo_bundle, demo_router, work):
    """DynaSpec's router chooses each cycle's set between trunk and head: the routed sets and trees are the
    Python runtime's."""
    recording_dir = work / "demo-dynaspec"
    recording = record(demo_bundle, DEMO_TARGET, "def parse(", recording_dir, TREE, vocab="dynaspec:96:16",
                       router=demo_router)
    assert changes(recording) >= 5, "the routed set hardly changed: the check would be weak"
    cpp = run_cpp(binary, demo_bundle, recording_dir, work / "dynaspec.json", target=DEMO_TARGET)
    assert mismatches(*recorded_expectations(recording_dir), cpp) == []


@pytest.mark.parametrize("vocab", ["evospec:64", "evospec:64:router-fill"], ids=["auto", "router-fill"])
def test_router_fill_sets_equal_python(binary, demo_bundle, demo_router, work, vocab):
    """EvoSpec's tail filled from a DynaSpec router's clusters (greedy sequences with ``fill_source = "auto"`` and a
    router, or every sequence with ``router-fill``): the C++ library serves Python's sets and trees step by step,
    and they are not the mass fill's (else the check could not tell the two fills apart)."""
    name = f"demo-{vocab}".replace(":", "_")
    freq = demo_bundle.parent / "demo-frequencies.json"
    recording = record(demo_bundle, DEMO_TARGET, "def parse(", work / name, TREE, vocab=vocab, frequencies=freq,
                       router=demo_router)
    cpp = run_cpp(binary, demo_bundle, work / name, work / f"{name}.json", target=DEMO_TARGET)
    assert mismatches(*recorded_expectations(work / name), cpp) == []
    by_mass = record(demo_bundle, DEMO_TARGET, "def parse(", work / f"{name}-mass", TREE, vocab="evospec:64:mass-fill",
                     frequencies=freq, router=demo_router)
    differ = sum(a["active"] != b["active"] for a, b in zip(recording["steps"], by_mass["steps"], strict=False))
    assert differ >= len(recording["steps"]) // 2, "the router fill served the mass fill's sets"


def test_row_updates_from_cpp_equal_python(binary, demo_bundle, work):
    """Rows overwritten before each step (the drafted tokens' rows negated, so the drafts change)
    through Drafter::update_rows draft like the Python runtime's reservoir update + rows_changed."""
    from safetensors.torch import load_file, save_file

    recording_dir = work / "demo-updates"
    short = DecodeSettings(max_new_tokens=24, draft_tree="tree", draft_depth=3, draft_topk=4, draft_tokens=8)
    recording = record(demo_bundle, DEMO_TARGET, "def parse(", recording_dir, short, vocab="evospec:64:sync")
    reservoir = load_file(str(demo_bundle / "reservoir.safetensors"))["reservoir"]
    updates = {}
    for i, step in enumerate(recording["steps"]):
        ids = torch.tensor(sorted(set(step["tree"]["tokens"])), dtype=torch.long)
        updates[f"step_{i}_ids"], updates[f"step_{i}_rows"] = ids, -reservoir[ids]
    save_file(updates, str(work / "updates.safetensors"))
    python = replay_python(demo_bundle, DEMO_TARGET, recording_dir, row_updates=updates)
    cpp = run_cpp(binary, demo_bundle, recording_dir, work / "updates.json", target=DEMO_TARGET,
                  row_updates=work / "updates.safetensors")
    assert mismatches(python.trees, python.active, cpp) == []
    assert python.trees != [s["tree"] for s in recording["steps"]], "the updates changed no draft: the check is vacuous"


def test_trunk_weight_updates_from_cpp_equal_python(binary, demo_bundle, work):
    """Fuse/trunk weights changed before each step through Drafter::update_weight (named as the Python
    runtime's trunk_weights) draft like Python's update_trunk_weights, and the drafts change."""
    from safetensors.torch import load_file, save_file

    recording_dir = work / "demo-weights"
    short = DecodeSettings(max_new_tokens=24, draft_tree="tree", draft_depth=3, draft_topk=4, draft_tokens=8)
    recording = record(demo_bundle, DEMO_TARGET, "import ", recording_dir, short, vocab="frspec:128")
    weights = load_file(str(demo_bundle / "drafter" / "model.safetensors"))
    updates = {}
    for i in range(len(recording["steps"])):
        fc, o_proj = weights["fc.weight"].float(), weights["midlayer.self_attn.o_proj.weight"].float()
        updates[f"step_{i}_weight:norm.weight"] = weights["norm.weight"].float() * (1.0 + 0.5 * (i % 3))
        updates[f"step_{i}_weight:layer.self_attn.o_proj.weight"] = o_proj * (1 - 0.1 * i)
        updates[f"step_{i}_weight:fc.weight"] = (fc.flip(0) if i % 2 else fc).clone()
    save_file(updates, str(work / "weights.safetensors"))
    python = replay_python(demo_bundle, DEMO_TARGET, recording_dir, row_updates=updates)
    cpp = run_cpp(binary, demo_bundle, recording_dir, work / "weights.json", target=DEMO_TARGET,
                  row_updates=work / "weights.safetensors")
    assert mismatches(python.trees, python.active, cpp) == []
    assert python.trees != [s["tree"] for s in recording["steps"]], "the updates changed no draft: the check is vacuous"


@pytest.mark.parametrize("vocab", ["evospec:64", "evospec:64:hold-0"])
def test_python_replay_reproduces_the_recording(demo_bundle, work, vocab):
    """What `evospec profile cpp` times on the Python side (the drafter driven from recorded features,
    no target) drafts what the decoding loop drafted: so both sides of the timing do the same work, the
    refresh gate's kept sets included (the replay drafts a greedy sequence, as the recording did).
    Needs no C++ toolchain."""
    recording_dir = work / f"demo-replay-{vocab.replace(':', '_')}"
    recording = record(demo_bundle, DEMO_TARGET, "import ", recording_dir, TREE, vocab=vocab)
    python = replay_python(demo_bundle, DEMO_TARGET, recording_dir)
    assert python.trees == [s["tree"] for s in recording["steps"]]
    assert python.active == [s["active"] for s in recording["steps"]]


def python_error(bundle: Path) -> str:
    with pytest.raises(BundleError) as caught:
        check_files(bundle, read_manifest(bundle))
    return str(caught.value)


def test_bad_bundles_give_pythons_error(binary, demo_bundle, work):
    recording_dir = work / "demo-chain-None"  # any recording: the bundle is what is wrong
    if not recording_dir.is_dir():
        record(demo_bundle, DEMO_TARGET, "def parse(", recording_dir, CHAIN)
    cases = {}
    cases["missing"] = work / "no-such-bundle"
    (work / "empty").mkdir(exist_ok=True)
    cases["no manifest"] = work / "empty"

    def variant(name: str, change) -> None:
        path = work / f"bad-{name.replace(' ', '-')}"
        shutil.copytree(demo_bundle, path)
        change(path)
        cases[name] = path

    def old_format(p: Path) -> None:
        manifest = json.loads((p / "manifest.json").read_text())
        (p / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))

    def truncated(p: Path) -> None:
        data = (p / "reservoir.safetensors").read_bytes()
        (p / "reservoir.safetensors").write_bytes(data[:-16])

    def altered(p: Path) -> None:
        data = bytearray((p / "drafter" / "model.safetensors").read_bytes())
        data[-1] ^= 0xFF
        (p / "drafter" / "model.safetensors").write_bytes(bytes(data))

    variant("old format", old_format)
    variant("truncated", truncated)
    variant("altered", altered)
    variant("missing file", lambda p: (p / "index" / "semantic.usearch").unlink())
    for name, bundle in cases.items():
        expected = python_error(bundle)
        with pytest.raises(CppDrafterError) as caught:
            run_cpp(binary, bundle, recording_dir, work / "bad.json", target=DEMO_TARGET)
        assert str(caught.value) == expected, name

    # Not a torch bundle: the C++ library says what to compile instead.
    ort = work / "bad-backend"
    shutil.copytree(demo_bundle, ort)
    manifest = json.loads((ort / "manifest.json").read_text())
    (ort / "manifest.json").write_text(json.dumps({**manifest, "backend": "ort"}))
    with pytest.raises(CppDrafterError, match="compile with --backend torch"):
        run_cpp(binary, ort, recording_dir, work / "bad.json", target=DEMO_TARGET)


def test_record_and_profile_commands(binary, demo_bundle, work):
    """`evospec record-drafts` then `evospec profile cpp`: both runtimes agree with the recording, timed."""
    runner = CliRunner()
    out = work / "cli-recording"
    done = runner.invoke(main, ["record-drafts", "--bundle", str(demo_bundle), "--target", str(DEMO_TARGET),
                                "--out", str(out), "--prompt", "import ", "--vocab", "evospec:64:sync",
                                "--max-new-tokens", "24", "--draft-depth", "3", "--draft-topk", "2",
                                "--draft-tokens", "6"])
    assert done.exit_code == 0, done.output
    assert (out / "recording.json").is_file() and (out / "features.safetensors").is_file()
    done = runner.invoke(main, ["profile", "cpp", "--bundle", str(demo_bundle), "--target", str(DEMO_TARGET),
                                "--recording", str(out), "--binary", str(binary), "--repeat", "1",
                                "--json", str(work / "profile.json")])
    assert done.exit_code == 0, done.output
    row = json.loads((work / "profile.json").read_text())[0]
    assert row["cpp_mismatches_vs_recording"] == [] and row["python_replay_mismatches_vs_recording"] == []
    assert row["cpp_step_ms_median"] > 0 and row["python_step_ms_median"] > 0
    assert "c++" in done.output and "python" in done.output


# --- The library inside Python's decoding loop (runtime/native_drafter.py, `--drafter-runtime cpp`) ---

# top-k children in both runtimes (Python's drafter would sample a tree's children by default: runtime/sampled_tree.py)
# one verifier for both runtimes (``auto`` would verify the library's drafts in C++: other numbers, the same law)
SAMPLED_TREE = DecodeSettings(max_new_tokens=48, draft_tree="tree", draft_depth=4, draft_topk=4, draft_tokens=12,
                              temperature=0.8, top_p=0.9, seed=5, tree_children="topk", verifier="python")
SAMPLED_CHAIN = DecodeSettings(max_new_tokens=48, draft_tree="chain", draft_depth=5, temperature=0.8, top_p=0.9, seed=5,
                               verifier="python")
# both runtimes verified by the library: its verifier takes the generator's numbers whoever drafted
SAMPLED_CHAIN_NATIVE = dataclasses.replace(SAMPLED_CHAIN, verifier="native")


@pytest.fixture
def library(binary, monkeypatch):
    monkeypatch.setenv("EVOSPEC_CPP_LIBRARY", str(binary.parent / "libevospec_drafter.so"))
    return binary.parent / "libevospec_drafter.so"


# default: the greedy chain; the trees (deterministic top-k, sampled or not) and the living vocabulary are the same
# drafter steps test_demo_pair_drafts_equal_python and test_tiny_pair_drafts_equal_python compare in the default run
@pytest.mark.parametrize(("settings", "vocab"), [(CHAIN, None), pytest.param(LONG_TREE, "evospec:64:sync", marks=SLOW),
                                                 pytest.param(SAMPLED_TREE, "frspec:64", marks=SLOW),
                                                 pytest.param(CHAIN, "evospec:64", marks=SLOW),
                                                 (SAMPLED_CHAIN, "evospec:64"), pytest.param(SAMPLED_CHAIN, None, marks=SLOW),
                                                 (SAMPLED_CHAIN_NATIVE, "evospec:64")],
                         ids=["greedy-chain-own-vocab", "greedy-tree-evospec", "sampled-tree-frspec", "chain-evospec",
                              "sampled-chain-evospec", "sampled-chain-own-vocab", "sampled-chain-evospec-native-verifier"])
def test_decoding_with_the_cpp_drafter_equals_decoding_with_pythons(library, demo_bundle, settings, vocab):
    """Same tokens, same accepted length at every step and the same rows moved as the Python drafter (whose
    drafts tests above show equal step by step); greedy output equals the target's own. Sampled: the trees are
    deterministic top-k, and a sampled chain's tokens are drawn by the library with the numbers Python's drafter
    would draw (one a level, from the same generator), so with the same seed verification draws the same numbers
    and the outputs match."""
    from evospec.runtime.generator import SpeculativeGenerator

    prompt = list(range(5, 37))
    freq = {"frequencies": str(demo_bundle.parent / "demo-frequencies.json")} if vocab else {}
    results = {}
    for runtime in ("python", "cpp"):
        generator = SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab=vocab, drafter_runtime=runtime, **freq)
        results[runtime] = generator.generate(prompt, settings)
    python, cpp = results["python"], results["cpp"]
    assert cpp.token_ids == python.token_ids and len(cpp.token_ids) == settings.max_new_tokens
    assert cpp.stats.accepted_lengths == python.stats.accepted_lengths and sum(cpp.stats.accepted_lengths) > 0
    assert cpp.stats.active_rows_moved == python.stats.active_rows_moved
    if vocab == "evospec:64:sync":
        assert cpp.stats.active_rows_moved > cpp.stats.steps  # the set changed as decoding went
    if settings.temperature == 0:
        plain = SpeculativeGenerator.from_paths(DEMO_TARGET).generate(prompt, DecodeSettings(
            max_new_tokens=settings.max_new_tokens, use_draft=False))
        assert cpp.token_ids == plain.token_ids


def test_pipelined_policy_jobs_across_generations_equal_pythons(library, demo_bundle):
    """The C++ pipelined policy runs its job on a thread of its own, started as propose() returns. Consecutive
    generations with one drafter start each new sequence while the last one's job may still run (start() drains
    it): every generation keeps Python's tokens, accepted lengths and rows moved."""
    from evospec.runtime.generator import SpeculativeGenerator

    prompts = [list(range(5, 37)), [7, 8, 9, 10, 11, 12], list(range(40, 60))]
    freq = str(demo_bundle.parent / "demo-frequencies.json")
    runs = {}
    for runtime in ("python", "cpp"):
        generator = SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64",
                                                     drafter_runtime=runtime, frequencies=freq)
        runs[runtime] = [generator.generate(prompt, CHAIN) for prompt in prompts]
    for python, cpp in zip(runs["python"], runs["cpp"], strict=True):
        assert cpp.token_ids == python.token_ids
        assert cpp.stats.accepted_lengths == python.stats.accepted_lengths
        assert cpp.stats.active_rows_moved == python.stats.active_rows_moved > 0


def test_plain_steps_keep_the_cpp_drafter_and_pythons_in_step(library, demo_bundle):
    """``plain_fallback`` with the same scripted steps (``ScriptedGate``) and EvoSpec's pipelined living vocabulary:
    the C++ library takes the plain steps' tokens with its next propose() (commit), Python's worker merges their
    observations into one job (``PipelinedPolicy.hold``). Tokens, accepted lengths and rows moved stay equal
    step by step, and the output is the target's own."""
    from evospec.runtime.generator import SpeculativeGenerator
    from evospec.testing.scripted_gate import ScriptedGate

    prompt = list(range(5, 37))
    settings = DecodeSettings(max_new_tokens=48, draft_tree="chain", draft_depth=5, plain_fallback=True)
    runs = {}
    for runtime in ("python", "cpp"):
        generator = SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64", drafter_runtime=runtime,
                                                     frequencies=str(demo_bundle.parent / "demo-frequencies.json"))
        generator.gate = ScriptedGate((False, False, True, False, True))
        runs[runtime] = [generator.generate(prompt, settings), generator.generate(prompt[:12], settings)]
    plain = SpeculativeGenerator.from_paths(DEMO_TARGET)
    for i, (python, cpp) in enumerate(zip(runs["python"], runs["cpp"], strict=True)):
        assert cpp.token_ids == python.token_ids == plain.generate(prompt if i == 0 else prompt[:12], DecodeSettings(
            max_new_tokens=48, use_draft=False)).token_ids
        assert cpp.stats.accepted_lengths == python.stats.accepted_lengths and sum(cpp.stats.accepted_lengths) > 0
        assert cpp.stats.plain_steps == python.stats.plain_steps >= 8
        assert cpp.stats.active_rows_moved == python.stats.active_rows_moved > 0


def test_router_fill_follows_the_kind_of_each_sequence_as_pythons(library, demo_bundle, demo_router):
    """With a router, ``evospec:128`` fills greedy sequences from the router's clusters and sampled ones by mass: one
    C++ drafter and one Python drafter, greedy then sampled then greedy, keep equal tokens, accepted lengths, rows
    moved and final sets (the kind reaches the library through ``start``); greedy output is the target's own. A
    short prompt leaves the fill room, so the kinds' sets differ (checked against the one-fill variants)."""
    from evospec.runtime.generator import SpeculativeGenerator

    prompt = [5, 6, 7, 8, 9]
    kinds = (TREE, SAMPLED_TREE, TREE)

    def run(runtime: str, vocab: str, count: int) -> list[tuple]:
        generator = SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab=vocab, drafter_runtime=runtime,
                                                     frequencies=str(demo_bundle.parent / "demo-frequencies.json"),
                                                     router=demo_router)
        out = []
        for settings in kinds[:count]:
            result = generator.generate(prompt, settings)
            final = generator.native.active()[0] if runtime == "cpp" else generator.drafter.active_ids.tolist()
            out.append((result, final))
        return out

    python, cpp = run("python", "evospec:128", 3), run("cpp", "evospec:128", 3)
    for (p, p_set), (c, c_set) in zip(python, cpp, strict=True):
        assert c.token_ids == p.token_ids and c_set == p_set
        assert c.stats.accepted_lengths == p.stats.accepted_lengths and sum(c.stats.accepted_lengths) > 0
        assert c.stats.active_rows_moved == p.stats.active_rows_moved > 0
    assert cpp[0][0].token_ids == cpp[2][0].token_ids == SpeculativeGenerator.from_paths(DEMO_TARGET).generate(
        prompt, DecodeSettings(max_new_tokens=TREE.max_new_tokens, use_draft=False)).token_ids
    assert run("python", "evospec:128:mass-fill", 1)[0][1] != python[0][1], "greedy: the router's sets are the mass fill's"
    assert run("python", "evospec:128:router-fill", 2)[1][1] != python[1][1], "sampled: the mass fill's sets are the router's"


def test_cpp_drafter_warns_once_that_its_trees_are_top_k_when_sampling(library, demo_bundle, caplog):
    """At T > 0 the library drafts top-k trees (rarely accepted there): ``--tree-children auto`` says so once per
    generator, not once a prompt; a chain (sampled in the library) and greedy trees say nothing."""
    from evospec.runtime.generator import SpeculativeGenerator

    generator = SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, drafter_runtime="cpp")

    def warnings_for(settings: DecodeSettings) -> list[str]:
        caplog.clear()
        with caplog.at_level("WARNING", logger="evospec.runtime.generator"):
            generator.generate([5, 6, 7], settings)
        return [r.getMessage() for r in caplog.records if "top-k trees" in r.getMessage()]

    assert warnings_for(DecodeSettings(max_new_tokens=4, draft_tree="chain", temperature=1.0)) == []
    assert warnings_for(DecodeSettings(max_new_tokens=4, draft_tree="tree")) == []
    sampled_tree = DecodeSettings(max_new_tokens=4, draft_tree="tree", temperature=1.0)
    assert len(warnings_for(sampled_tree)) == 1
    assert warnings_for(sampled_tree) == []  # once per generator


def test_cpp_drafter_refuses_what_it_cannot_draft(library, demo_bundle, work):
    from evospec.core.errors import SettingsError
    from evospec.runtime.generator import SpeculativeGenerator

    generator = SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, drafter_runtime="cpp")
    with pytest.raises(SettingsError, match="--draft-budget auto with a sampled chain from the C\\+\\+ drafter"):
        generator.generate([5, 6, 7], DecodeSettings(max_new_tokens=4, draft_tree="chain", temperature=1.0,
                                                     draft_budget="auto"))
    native = generator.native
    native.start([5, 6, 7])
    features = torch.zeros(3, 3 * native.target_hidden_size)
    with pytest.raises(SettingsError, match="uniforms must lie in \\[0, 1\\)"):
        native.propose_sampled_chain(features, 8, 3, 1.0, [0.5, 1.0, 0.2])
    with pytest.raises(SettingsError, match="a sampled chain of 3 needs 3 uniforms, got 2"):
        native.propose_sampled_chain(features, 8, 3, 1.0, [0.5, 0.2])
    with pytest.raises(SettingsError, match="needs temperature > 0"):
        native.propose_sampled_chain(features, 8, 3, 0.0, [0.5, 0.2, 0.1])
    with pytest.raises(SettingsError, match="a tree with sampled children"):
        generator.generate([5, 6, 7], DecodeSettings(max_new_tokens=4, draft_tree="tree", temperature=1.0,
                                                     tree_children="sampled"))
    with pytest.raises(SettingsError, match=r"\+align with the C\+\+ drafter"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64+align", drafter_runtime="cpp")
    with pytest.raises(SettingsError, match="unseen-last' .* not implemented in the C\\+\\+ drafter library"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64:unseen-last", drafter_runtime="cpp")
    with pytest.raises(SettingsError, match="prior-half' .* not implemented in the C\\+\\+ drafter library"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64:prior-half", drafter_runtime="cpp")
    with pytest.raises(SettingsError, match="rank-max' .* not implemented in the C\\+\\+ drafter library"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64:rank-max", drafter_runtime="cpp")
    with pytest.raises(SettingsError, match="router-fill' fills its tail from a DynaSpec router's clusters: give --router"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64:router-fill", drafter_runtime="cpp")
    with pytest.raises(SettingsError, match="is not an evospec DynaSpec router"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64", drafter_runtime="cpp",
                                         router=demo_bundle / "reservoir.safetensors")
    with pytest.raises(SettingsError, match="built-in settings"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64", drafter_runtime="cpp",
                                         evospec_config=Path(__file__).resolve().parent.parent / "configs" / "evospec.toml")
    ort = work / "native-ort-bundle"
    shutil.copytree(demo_bundle, ort, dirs_exist_ok=True)
    manifest = json.loads((ort / "manifest.json").read_text())
    (ort / "manifest.json").write_text(json.dumps({**manifest, "backend": "ort"}))
    from evospec.runtime.native_drafter import NativeDrafter

    with pytest.raises(BundleError, match="compile with --backend torch"):
        NativeDrafter(ort)


def test_generate_command_with_the_cpp_drafter(library, demo_bundle):
    runner = CliRunner()
    args = ["generate", "--target", str(DEMO_TARGET), "--prompt-ids", "5,6,7,8,9", "--max-new-tokens", "24", "--json"]
    plain = runner.invoke(main, args + ["--no-draft"])
    native = runner.invoke(main, args + ["--bundle", str(demo_bundle), "--drafter-runtime", "cpp",
                                         "--vocab", "evospec:64:sync", "--draft-tree", "chain"])
    assert plain.exit_code == 0 and native.exit_code == 0, native.output
    last = lambda result: json.loads(result.stdout.strip().splitlines()[-1])  # noqa: E731 (stdout: no progress bars)
    assert last(native)["token_ids"] == last(plain)["token_ids"]
