"""The C++ library's vocabulary policy for Python's drafter (``--policy-runtime cpp``, runtime/vocab/native_policy.py).

Driven call for call as Python's policy is, it must hand out the same sets (in column order) at every step, so a
generation with it keeps Python's tokens, accepted lengths and rows moved, and greedy output stays the target's
own. What it cannot run (a settings file, the drafter's fixed vocabulary, the C++ drafter) is refused in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from evospec.cli import main
from evospec.core.errors import SettingsError
from evospec.core.settings import DecodeSettings
from evospec.eval.bench import policy_label
from evospec.runtime.generator import SpeculativeGenerator
from evospec.runtime.vocab.native_policy import NativeRoutedPolicy, native_policy
from .policy_bundle import DEMO_TARGET, compile_demo_policy_bundle

pytestmark = pytest.mark.cpp

CHAIN = DecodeSettings(max_new_tokens=40, draft_tree="chain", draft_depth=5)
SAMPLED_CHAIN = DecodeSettings(max_new_tokens=40, draft_tree="chain", draft_depth=5, temperature=0.8, top_p=0.9, seed=3)


@pytest.fixture(scope="module")
def demo_bundle():
    directory = Path(tempfile.mkdtemp(prefix="evospec-native-policy-"))
    try:
        yield compile_demo_policy_bundle(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def frequencies(bundle: Path) -> str:
    return str(bundle.parent / "demo-frequencies.json")


@pytest.fixture(scope="module")
def many_cluster_bundle():
    """The demo bundle with 320 mass clusters: more than the 256 the library's fill ranks first (``ranked`` in
    mass_fill.cpp orders only the best clusters when they hold enough rows; 32 clusters never reach that path)."""
    directory = Path(tempfile.mkdtemp(prefix="evospec-native-policy-clusters-"))
    try:
        yield compile_demo_policy_bundle(directory, mass_clusters=320)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.parametrize("vocab", ["evospec:64", "evospec:64:sync", "evospec:48:no-sticky"])
def test_sets_equal_pythons_call_for_call(cpp_library, demo_bundle, vocab):
    """Random root states and committed tokens, fed to both policies in the decoding loop's order (a topic switch
    half way): the same set, in the same order, at every step, and it changes as it goes."""
    _assert_sets_equal_pythons(demo_bundle, vocab)


def test_sets_equal_pythons_when_only_the_best_clusters_are_ordered(cpp_library, many_cluster_bundle):
    """As above over 320 clusters, where the library orders only the clusters the fill can reach."""
    _assert_sets_equal_pythons(many_cluster_bundle, "evospec:64")


def test_refresh_gated_sets_equal_pythons_call_for_call(cpp_library, demo_bundle):
    """The refresh gate (``hold-0``: a set kept from the cycle after a route) on a greedy sequence: committed tokens from the served set keep it (the
    library hands back no new set), one outside it routes again; Python's gate and the library's agree step by
    step, and both kept and changed sets occur."""
    kept = _assert_sets_equal_pythons(demo_bundle, "evospec:64:hold-0", greedy=True)
    assert kept >= 10


def _assert_sets_equal_pythons(bundle: Path, vocab: str, greedy: bool = False) -> int:
    """Feeds both policies the same steps and checks their sets; returns how many steps kept the set before."""
    generator = SpeculativeGenerator.from_bundle(bundle, DEMO_TARGET, vocab=vocab, frequencies=frequencies(bundle))
    python, drafter = generator.policy, generator.drafter
    native = native_policy(vocab, bundle, drafter.config.vocab_size, drafter.config.hidden_size, frequencies(bundle))
    assert isinstance(native, NativeRoutedPolicy) and hasattr(python, "route")
    g = torch.Generator().manual_seed(1)
    prompt = torch.randint(0, 512, (24,), generator=g).tolist()
    for policy in (python, native):
        policy.decoding(greedy)
        policy.reset(prompt)
        policy.observe([prompt[-1]])
    changed, kept, last = 0, 0, None
    for step in range(40):
        state = 2 * torch.randn(drafter.config.hidden_size, generator=g)
        ours, theirs = native.route(state), python.route(state)
        assert torch.equal(ours, theirs), f"step {step}"
        changed += last is not None and not torch.equal(ours, last)
        kept += last is not None and ours is last  # the same tensor: the library said nothing changed
        last = ours
        high = 512 if step < 20 else 64  # a topic switch: the drift path
        committed = torch.randint(0, high, (3,), generator=g).tolist()
        if greedy and step % 3:  # most steps commit tokens of the set (no miss), every third one need not
            committed = ours[torch.randint(0, ours.numel(), (3,), generator=g)].tolist()
        after = torch.randn(drafter.config.hidden_size, generator=g)
        for policy in (python, native):
            if hasattr(policy, "start_pending"):  # a pipelined policy's job starts as the target's pass would
                policy.start_pending()
            policy.observe(committed, after)
    assert changed >= 10
    native.close()
    return kept


@pytest.mark.parametrize(("settings", "vocab"), [(CHAIN, "evospec:64"), (SAMPLED_CHAIN, "evospec:64"),
                                               (CHAIN, "evospec:64:hold-0")], ids=["greedy", "sampled", "greedy-gate-hold-0"])
def test_generations_equal_pythons(cpp_library, demo_bundle, settings, vocab):
    """Consecutive generations: the same tokens, accepted lengths and rows moved as with Python's policy; greedy
    output is the target's own."""
    prompts = [list(range(5, 37)), [7, 8, 9, 10, 11, 12]]
    runs = {}
    for runtime in ("python", "cpp"):
        generator = SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab=vocab,
                                                     frequencies=frequencies(demo_bundle), policy_runtime=runtime)
        runner = "the C++ library's policy" if runtime == "cpp" else "Python's policy"
        assert policy_label(generator) == f"vocabulary {vocab} by {runner}"  # what bench's rows say
        runs[runtime] = [generator.generate(prompt, settings) for prompt in prompts]
    for python, cpp in zip(runs["python"], runs["cpp"], strict=True):
        assert cpp.token_ids == python.token_ids
        assert cpp.stats.accepted_lengths == python.stats.accepted_lengths and sum(cpp.stats.accepted_lengths) > 0
        assert cpp.stats.active_rows_moved == python.stats.active_rows_moved > 0
    if settings.temperature == 0:
        plain = SpeculativeGenerator.from_paths(DEMO_TARGET)
        for prompt, cpp in zip(prompts, runs["cpp"], strict=True):
            expected = plain.generate(prompt, DecodeSettings(max_new_tokens=settings.max_new_tokens, use_draft=False))
            assert cpp.token_ids == expected.token_ids


def test_what_the_library_cannot_run_is_refused(cpp_library, demo_bundle, tmp_path):
    freq = frequencies(demo_bundle)
    with pytest.raises(SettingsError, match="eagle3 is the drafter's own vocabulary"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="eagle3", policy_runtime="cpp")
    with pytest.raises(SettingsError, match="for Python's drafter"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64", frequencies=freq,
                                         drafter_runtime="cpp", policy_runtime="cpp")
    config = tmp_path / "evospec.toml"
    config.write_text("[policy]\ncore_share = 0.25\n")
    with pytest.raises(SettingsError, match="built-in settings"):
        SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64", frequencies=freq,
                                         evospec_config=config, policy_runtime="cpp")
    with pytest.raises(SettingsError, match="unknown vocabulary policy"):
        native_policy("nonsense:3", demo_bundle, 512, 128, freq)
    native = native_policy("evospec:64", demo_bundle, 512, 128, freq)
    native.decoding(False)
    native.reset([1, 2, 3])
    with pytest.raises(SettingsError, match="a drafter state of width 7; this policy's drafter has 128"):
        native.route(torch.zeros(7))
    with pytest.raises(SettingsError, match="token id 900 is outside the vocabulary"):
        native.observe([900])


def test_the_library_knows_every_python_variant(cpp_library, demo_bundle):
    """Each of Python's named variants is run by the library or refused with its reason; none is unknown to it (the
    two lists are kept by hand)."""
    from evospec.runtime.vocab.evospec_settings import VARIANTS

    freq = frequencies(demo_bundle)
    for name in VARIANTS:
        try:
            native_policy(f"evospec:64:{name}", demo_bundle, 512, 128, freq).close()
        except SettingsError as exc:
            assert "is not in built-in settings" not in str(exc), name


def test_generate_command_with_the_native_policy(cpp_library, demo_bundle):
    runner = CliRunner()
    args = ["generate", "--target", str(DEMO_TARGET), "--prompt-ids", "5,6,7,8,9", "--max-new-tokens", "24", "--json"]
    plain = runner.invoke(main, args + ["--no-draft"])
    native = runner.invoke(main, args + ["--bundle", str(demo_bundle), "--policy-runtime", "cpp", "--vocab", "evospec:64",
                                         "--frequencies", frequencies(demo_bundle), "--draft-tree", "chain"])
    assert plain.exit_code == 0 and native.exit_code == 0, native.output
    last = lambda result: json.loads(result.stdout.strip().splitlines()[-1])  # noqa: E731 (stdout: no progress bars)
    assert last(native)["token_ids"] == last(plain)["token_ids"]
    refused = runner.invoke(main, args + ["--drafter", str(DEMO_TARGET.parent / "drafter"), "--policy-runtime", "cpp"])
    assert refused.exit_code == 2 and "--policy-runtime cpp needs --bundle" in refused.output


def _thread_nice_values() -> dict[int, int]:
    """Each thread of this process and its nice value (/proc/self/task/*/stat, field 19)."""
    values = {}
    for task in Path("/proc/self/task").iterdir():
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        values[int(task.name)] = int(fields[16])  # fields after the name start at the state (field 3)
    return values


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to read thread priorities")
@pytest.mark.parametrize(("setting", "increment"), [(None, 10), ("0", 0), ("3", 3)])
def test_the_policys_worker_yields_to_the_decoding_thread(cpp_library, demo_bundle, monkeypatch, setting, increment):
    """The pipelined policy's worker thread runs WORKER_NICE (10) above the process's nice value, or what
    EVOSPEC_WORKER_NICE says: on a small host its job no longer takes the decoding thread's core when it starts."""
    if setting is None:
        monkeypatch.delenv("EVOSPEC_WORKER_NICE", raising=False)
    else:
        monkeypatch.setenv("EVOSPEC_WORKER_NICE", setting)
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if base + increment > 19:
        pytest.skip(f"this process already runs at nice {base}")
    before = set(_thread_nice_values())
    generator = SpeculativeGenerator.from_bundle(demo_bundle, DEMO_TARGET, vocab="evospec:64",
                                                 frequencies=frequencies(demo_bundle), policy_runtime="cpp")
    generator.generate(list(range(5, 37)), CHAIN)  # its first start_pending starts the worker
    new = {tid: nice for tid, nice in _thread_nice_values().items() if tid not in before}
    assert base + increment in new.values(), f"threads started by the policy: {new} (process nice {base})"
    if increment:
        assert threading.get_native_id() not in new and os.getpriority(os.PRIO_PROCESS, 0) == base
    else:  # kept at the process's own: no thread of the policy's lowered
        assert all(nice == base for nice in new.values()), f"threads started by the policy: {new} (process nice {base})"
    generator.policy.close()


@pytest.mark.parametrize("bad", ["high", "-3", "40", "2.5"])
def test_a_bad_worker_priority_is_refused_in_one_line(cpp_library, demo_bundle, monkeypatch, bad):
    monkeypatch.setenv("EVOSPEC_WORKER_NICE", bad)
    with pytest.raises(SettingsError, match=f"EVOSPEC_WORKER_NICE must be a whole number from 0 to 39 .*got '{bad}'"):
        native_policy("evospec:64", demo_bundle, 512, 128, frequencies(demo_bundle))
