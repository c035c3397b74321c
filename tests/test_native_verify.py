"""The C++ library's sampling verifier (``--verifier native``, runtime/native_verify.py) decides as Python's does.

From the same generator state both verifiers take the same numbers in the same order, so on random trees (chains,
sampled trees with laws over head columns, point-mass children, laws over the whole vocabulary) and random rows
(ties, flat and peaked, temperatures, top-p) they must return the same verdicts; a verifier given a slightly
different temperature must not (the comparison has the power to see a small change of law). The law each row is
verified against equals ``sampling_weights`` (the same nucleus, probabilities to float32 rounding). Through the generator, the joint law of the first tokens
with the native verifier equals the target's (the statistical test of tests/test_sampling_exactness.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.cli import main
from evospec.core.errors import SettingsError
from evospec.runtime.sampled_tree import draws_without_replacement
from evospec.runtime.sampling import sampling_weights
from evospec.runtime.tree import DraftTree
from evospec.runtime.verify import verify_sampling
from evospec.testing.tiny import TinyShape, tiny_drafter, tiny_target
from evospec.train.demo_pair import ASSET_DIR

from .test_sampling_exactness import (ERRORS, assert_joint_matches, equal_halves, exact_joint, halves_samples,
                                      sample_joint)

pytestmark = pytest.mark.cpp


@pytest.fixture(scope="module")
def verifier(cpp_library):
    from evospec.runtime.native_verify import NativeVerifier

    return NativeVerifier(cpp_library)


def random_row(g: torch.Generator, vocab: int, case: int) -> torch.Tensor:
    scale = [0.3, 1.0, 3.0, 8.0][case % 4]
    row = torch.randn(vocab, generator=g) * scale
    if case % 5 == 0:
        row = torch.round(row * 2) / 2  # many exact ties
    return row


@pytest.mark.parametrize("vocab", [7, 300, 151_936])
def test_the_law_equals_sampling_weights(verifier, vocab):
    """The same nucleus, token for token, and the same probabilities to float32 rounding (the library's weights are
    exp(x - max x) from its own expf, within 2 ulp of torch's softmax once both are normalised)."""
    g = torch.Generator().manual_seed(vocab)
    for case in range(20 if vocab > 1000 else 60):
        row = random_row(g, vocab, case)
        temperature, top_p = [1.0, 0.7, 1.3][case % 3], [0.9, 0.5, 0.99, 1.0, 0.2][case % 5]
        weights, total = sampling_weights(row, temperature, top_p)
        native, native_total = verifier.weights(row, temperature, top_p)
        assert np.array_equal(weights.numpy() > 0, native > 0), (case, temperature, top_p)
        p, q = weights.numpy() / total, native / native_total
        assert np.allclose(q, p, rtol=1e-6, atol=0), (case, float(np.max(np.abs(q - p) / np.maximum(p, 1e-45))))
        assert abs(float(native.astype(np.float64).sum()) - native_total) <= 1e-9 * native_total


def test_masked_and_far_tokens_get_no_weight(verifier):
    row = torch.tensor([0.0, -float("inf"), -84.0, -86.0, 2.0])
    weights, _ = verifier.weights(row, 1.0, 1.0)
    assert weights[1] == 0 and weights[3] == 0  # -inf (a masked token) and e^-88 of the top token
    assert weights[2] > 0 and weights[4] == 1.0  # e^-86: kept; the top token's weight is exactly 1
    with pytest.raises(SettingsError, match="no finite maximum"):
        verifier.weights(torch.full((4,), -float("inf")), 1.0, 1.0)


def random_step(g: torch.Generator, vocab: int, case: int) -> tuple[DraftTree, torch.Tensor]:
    """A tree of one of four kinds and its [1 + N, V] logits (some strided, as a skinny head's)."""
    kind = case % 4
    depth = 1 + case % 4
    if kind == 0:  # a sampled chain, laws over head columns (a padded set: id 0 repeated with q = 0)
        width = 40
        columns = torch.cat((torch.randperm(vocab, generator=g)[: width - 4], torch.zeros(4, dtype=torch.long)))
        q = torch.softmax(torch.randn(depth, width, generator=g) * 2, -1)
        q[:, width - 4:] = 0
        q = q / q.sum(-1, keepdim=True)
        tokens = [int(columns[torch.multinomial(q[i], 1, generator=g)]) for i in range(depth)]
        tree = DraftTree(tokens=torch.tensor(tokens), parents=torch.arange(-1, depth - 1),
                         depths=torch.arange(1, depth + 1), proposals=q.float(), proposal_ids=columns)
    elif kind == 1:  # a sampled root of 2-3 siblings, laws over the vocabulary
        q = torch.softmax(torch.randn(vocab, generator=g) * 2, -1).double()
        ids, laws = draws_without_replacement(q, 2 + case % 2, g)
        n = len(ids)
        tree = DraftTree(tokens=torch.tensor(ids), parents=torch.full((n,), -1), depths=torch.ones(n, dtype=torch.long),
                         proposals=laws.float())
    else:  # point masses: a top-k tree (root with 3 children, one of them with 2)
        tokens = torch.randint(vocab, (5,), generator=g)
        tree = DraftTree(tokens=tokens, parents=torch.tensor([-1, -1, -1, 0, 0]),
                         depths=torch.tensor([1, 1, 1, 2, 2]))
    rows = torch.stack([random_row(g, vocab, case + r) for r in range(tree.size + 1)])
    # the target likes the drafted tokens now and then, so walks go past the root
    for i, token in enumerate(tree.tokens.tolist()):
        if (case + i) % 2 == 0:
            rows[tree.parents[i] + 1, token] = rows[tree.parents[i] + 1].max() + 0.5
    if case % 3 == 0:
        rows = rows.T.contiguous().T  # a transposed view: token stride N + 1
    return tree, rows


def both_verdicts(verifier, tree, logits, temperature, top_p, seed, native_temperature=None):
    python = verify_sampling(tree, logits, temperature, top_p, torch.Generator().manual_seed(seed))
    native = verifier.verify(tree, logits, native_temperature or temperature, top_p,
                             torch.Generator().manual_seed(seed))
    return (python.accepted_nodes, python.bonus), (native.accepted_nodes, native.bonus)


@pytest.mark.parametrize("vocab", [50, 2_000, 151_936])
def test_verdicts_equal_pythons_from_the_same_generator_state(verifier, vocab):
    g = torch.Generator().manual_seed(vocab)
    cases = 24 if vocab > 10_000 else 200
    accepted = 0
    for case in range(cases):
        tree, logits = random_step(g, vocab, case)
        temperature, top_p = [1.0, 0.8, 1.5][case % 3], [0.9, 1.0, 0.6, 0.95][case % 4]
        python, native = both_verdicts(verifier, tree, logits, temperature, top_p, seed=case)
        assert native == python, (case, tree.tokens.tolist(), temperature, top_p)
        accepted += len(python[0])
    assert accepted >= cases // 4, "the walks must accept drafts often enough to test the tree walk"


def test_a_slightly_different_law_gives_different_verdicts(verifier):
    """Negative control: the comparison above sees a 2% change of temperature."""
    g = torch.Generator().manual_seed(5)
    differ = 0
    for case in range(200):
        tree, logits = random_step(g, 50, case)
        python, native = both_verdicts(verifier, tree, logits, 1.0, 0.9, seed=case, native_temperature=1.02)
        differ += python != native
    assert differ >= 3


def test_bad_input_is_refused_in_one_line(verifier):
    tree = DraftTree(tokens=torch.tensor([3]), parents=torch.tensor([-1]), depths=torch.tensor([1]))
    g = torch.Generator().manual_seed(0)
    with pytest.raises(SettingsError, match=r"logits of shape \(3, 8\) for a tree of 1 nodes"):
        verifier.verify(tree, torch.zeros(3, 8), 1.0, 1.0, g)
    with pytest.raises(SettingsError, match="float64 target's law is float64"):
        verifier.verify(tree, torch.zeros(2, 8, dtype=torch.float64), 1.0, 1.0, g)
    far = DraftTree(tokens=torch.tensor([9]), parents=torch.tensor([-1]), depths=torch.tensor([1]))
    with pytest.raises(SettingsError, match="node 0 drafts token 9, outside the target's vocabulary of 8"):
        verifier.verify(far, torch.zeros(2, 8), 1.0, 1.0, g)
    with pytest.raises(SettingsError, match="temperature > 0"):
        verifier.verify(tree, torch.zeros(2, 8), 0.0, 1.0, g)


def float32_pair():
    """tests/test_sampling_exactness.py's end-to-end pair with a float32 target (the native law is float32's)."""
    shape = TinyShape(vocab_size=6, hidden_size=16, layers=4, heads=2, kv_heads=1, intermediate_size=32)
    model = tiny_target(shape, seed=11, init_std=0.8, dtype=torch.float32)
    return model, tiny_drafter(model, seed=12, draft_ids=torch.tensor([2, 3, 4, 5]), init_std=0.5)


@pytest.mark.parametrize("relative_error", ERRORS)
@pytest.mark.parametrize(("draft_tree", "top_p", "tree_children"), [
    pytest.param("chain", 0.9, "auto", id="sampled-chain-top-p"),
    pytest.param("tree", 0.9, "sampled", id="sampled-tree-top-p"),
])
def test_end_to_end_joint_distribution_with_the_native_verifier(cpp_library, draft_tree, top_p, tree_children,
                                                                 relative_error):
    model, drafter = float32_pair()
    generator = SpeculativeGenerator.from_models(model, drafter)
    prompt, temperature = [1, 4, 2], 1.0
    expected = exact_joint(model, prompt, 3, temperature, top_p)
    n = halves_samples(sum(expected[k] for k in equal_halves(expected)), relative_error)
    counts, accepted = sample_joint(generator, prompt, n, temperature=temperature, top_p=top_p, draft_tree=draft_tree,
                                    draft_depth=3, draft_topk=2, draft_tokens=5, tree_children=tree_children,
                                    verifier="native")
    assert_joint_matches(counts, expected, n, relative_error)
    assert accepted > n // 10, "the drafter must be accepted often enough for the test to mean something"


def test_generate_with_the_native_verifier(cpp_library):
    args = ["generate", "--target", str(ASSET_DIR / "target"), "--drafter", str(ASSET_DIR / "drafter"),
            "--prompt-ids", "5,6,7,8", "--max-new-tokens", "24", "--temperature", "0.8", "--top-p", "0.9",
            "--draft-tree", "chain", "--json"]
    native = CliRunner().invoke(main, [*args, "--verifier", "native"])
    assert native.exit_code == 0, native.output
    python = CliRunner().invoke(main, [*args, "--verifier", "python"])
    assert python.exit_code == 0, python.output
    assert '"token_ids"' in native.output and '"token_ids"' in python.output


def test_a_library_without_the_verifier_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOSPEC_CPP_LIBRARY", str(tmp_path / "none.so"))
    generator = SpeculativeGenerator.from_models(*float32_pair())
    with pytest.raises(SettingsError, match=r"none\.so does not exist"):
        generator.generate([1, 2], DecodeSettings(max_new_tokens=2, temperature=1.0, verifier="native"))


def test_a_thread_count_that_is_not_a_number_is_refused(cpp_library):
    """EVOSPEC_VERIFY_THREADS is read by the library at its first row pass: anything but a whole number is one clear
    error there (the subprocess: the setting is read once a process)."""
    import os
    import subprocess
    import sys

    script = ("import torch\nfrom evospec.runtime.native_verify import NativeVerifier\n"
              "NativeVerifier().weights(torch.randn(4096), 1.0, 0.9)\n")
    env = {**os.environ, "EVOSPEC_CPP_LIBRARY": str(cpp_library), "EVOSPEC_VERIFY_THREADS": "two"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "SettingsError: EVOSPEC_VERIFY_THREADS must be a whole number of threads" in done.stderr
    assert "'two'" in done.stderr


PORTABLE_SCRIPT = """
import sys, torch, numpy as np
from evospec.runtime.native_verify import NativeVerifier
torch.set_num_threads(max(2, torch.get_num_threads()))  # the row passes split over threads unless told not to
v = NativeVerifier()
g = torch.Generator().manual_seed(3)
rows = [torch.randn(151_936, generator=g) * s for s in (0.5, 2.0, 6.0)] + [torch.randn(37, generator=g)]
peaked = torch.randn(151_936, generator=g) * 2
peaked[torch.randperm(151_936, generator=g)[:40]] += torch.linspace(4, 12, 40)  # an LM-like head of a few tokens
rows.append(peaked)
out = [v.weights(r, t, p) for r in rows for t, p in ((1.0, 0.9), (0.7, 1.0), (1.0, 0.5), (1.3, 0.95))]
np.savez(sys.argv[1], *[w for w, _ in out], totals=np.array([t for _, t in out]))
"""


def _cpu_flag(flag: str) -> bool:
    try:
        return f" {flag}" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.fixture(scope="module")
def portable_weights(cpp_library, tmp_path_factory):
    """The weights of PORTABLE_SCRIPT's rows from the portable loops, nucleus from a whole-row histogram (once)."""
    return _weights_under(cpp_library, tmp_path_factory.mktemp("portable"), "portable",
                          {"EVOSPEC_NO_AVX2": "1", "EVOSPEC_NUCLEUS_HISTOGRAM": "1"})


def _weights_under(cpp_library, tmp_path, name: str, extra: dict[str, str]):
    import os
    import subprocess
    import sys

    path = tmp_path / f"{name}.npz"
    env = {**os.environ, "EVOSPEC_CPP_LIBRARY": str(cpp_library), **extra}
    done = subprocess.run([sys.executable, "-c", PORTABLE_SCRIPT, str(path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(path)


@pytest.mark.parametrize("path, extra", [
    ("avx2", {"EVOSPEC_NO_AVX512": "1"}),
    ("widest", {}),
    ("histogram start", {"EVOSPEC_NUCLEUS_HISTOGRAM": "1"}),
    ("one thread", {"EVOSPEC_VERIFY_THREADS": "1"}),
])
def test_every_loop_path_gives_the_portable_weights(cpp_library, portable_weights, tmp_path, path, extra):
    """EVOSPEC_NO_AVX2 runs the library's portable loops (CPUs without AVX2), EVOSPEC_NO_AVX512 at most the AVX2
    ones, and by default the widest the CPU has: the same weights, bit for bit (the same operations in the same
    order), and totals equal to rounding (sums in another order). The nucleus starts either above a pivot or from a
    histogram of the whole row (EVOSPEC_NUCLEUS_HISTOGRAM): the same tokens kept. The row passes run on two threads
    here unless EVOSPEC_VERIFY_THREADS=1 keeps them on one: the same bits either way (row_threads.hpp)."""
    if path == "avx2" and not _cpu_flag("avx2"):
        pytest.skip("this CPU has no AVX2: only the portable loops run here")
    if path == "widest" and not _cpu_flag("avx512f"):
        pytest.skip("this CPU has no AVX-512: the widest path is the AVX2 one, compared above")
    a, b = _weights_under(cpp_library, tmp_path, path, extra), portable_weights
    for key in a.files:
        if key == "totals":
            assert np.allclose(a[key], b[key], rtol=1e-12, atol=0)
        else:
            assert np.array_equal(a[key], b[key]), key
