"""Online alignment pieces: bounded buffer, sparse Adam, curriculum, rollback, exactness while rows change."""

from __future__ import annotations

import pytest
import torch
from evospec.passes.base import CompileSettings
from evospec.runtime.align.feedback import FeedbackBuffer
from evospec.runtime.align.head_aligner import AlignSettings, HeadAligner
from evospec.runtime.align.sparse_adam import SparseRowAdam

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.compile import compile_bundle
from evospec.demo_pair import ASSET_DIR

TARGET, DRAFTER = ASSET_DIR / "target", ASSET_DIR / "drafter"


def test_buffer_never_grows_past_its_capacity():
    buffer = FeedbackBuffer(capacity=8, hidden_size=4, top=3)
    size = buffer.nbytes
    for step in range(5):
        states = torch.full((5, 4), float(step))
        logits = torch.zeros(5, 10)
        logits[:, step] = 9.0
        buffer.add(states, logits)
    assert len(buffer) == 8 and buffer.added == 25 and buffer.nbytes == size
    newest = buffer.states[(buffer.added - 1) % 8]
    assert torch.equal(newest, torch.full((4,), 4.0)) and int(buffer.ids[(buffer.added - 1) % 8, 0]) == 4
    assert buffer.confidence().shape == (8,) and (buffer.confidence() > 0.9).all()


def test_sparse_adam_matches_torch_sparse_adam_on_touched_rows():
    g = torch.Generator().manual_seed(0)
    reference = torch.nn.Parameter(torch.randn(30, 6, generator=g))
    rows = reference.detach().clone()
    torch_opt, ours = torch.optim.SparseAdam([reference], lr=0.05), SparseRowAdam(rows, lr=0.05)
    for _ in range(8):
        ids = torch.randperm(30, generator=g)[:7]
        grads = torch.randn(7, 6, generator=g)
        reference.grad = torch.sparse_coo_tensor(ids[None], grads, (30, 6))
        torch_opt.step()
        ours.step(ids, grads)
    assert torch.allclose(reference.detach(), rows, atol=1e-6)
    assert ours.m.shape[0] == len(ours.slot) <= 30  # state only for rows ever touched


def test_curriculum_draws_confident_corrections_first():
    aligner = HeadAligner(torch.zeros(50, 4), AlignSettings(buffer=40, batch=4, pace_start=0.25, pace_updates=10))
    logits = torch.zeros(40, 50)
    logits[torch.arange(40), torch.arange(40)] = torch.linspace(0.0, 8.0, 40)  # entry i: confidence rises with i
    aligner.buffer.add(torch.randn(40, 4), logits)
    first = aligner.pool()
    assert first.numel() == 10 and set(first.tolist()) == set(range(30, 40))  # the easiest quarter
    aligner.updates = 10
    assert aligner.pool().numel() == 40  # paced in completely
    off = HeadAligner(torch.zeros(50, 4), AlignSettings(buffer=40, batch=4, curriculum=False))
    off.buffer.add(torch.randn(40, 4), logits)
    assert torch.equal(off.pool(), torch.arange(40))


def test_rollback_restores_every_changed_row_when_acceptance_drops():
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(60, 8, generator=g)
    original = rows.clone()
    aligner = HeadAligner(rows, AlignSettings(buffer=64, batch=8, every=4, lr=0.1, window=4))
    active = torch.arange(60)
    for cycle in range(4):  # good acceptance; the fourth cycle runs an update
        changed = aligner.feedback(torch.randn(3, 8, generator=g), torch.randn(3, 60, generator=g), 4, active)
    assert aligner.updates == 1 and changed is not None and not torch.equal(rows, original)
    for cycle in range(3):  # acceptance collapses after the update
        assert aligner.feedback(torch.randn(3, 8, generator=g), torch.randn(3, 60, generator=g), 0, active) is None
    restored = aligner.feedback(torch.randn(3, 8, generator=g), torch.randn(3, 60, generator=g), 0, active)
    assert aligner.rollbacks == 1 and set(restored.tolist()) == set(changed.tolist())
    assert torch.equal(rows, original) and not aligner.snapshot

    kept = HeadAligner(rows, AlignSettings(buffer=64, batch=8, every=4, lr=0.1, window=4))
    for cycle in range(8):  # acceptance holds: the update is kept
        kept.feedback(torch.randn(3, 8, generator=g), torch.randn(3, 60, generator=g), 4, active)
    assert kept.rollbacks == 0 and not torch.equal(rows, original)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    return {backend: compile_bundle(TARGET, DRAFTER, root / backend, CompileSettings(backend=backend, buckets=(512,),
                                                                                     index_dims=0)) and root / backend
            for backend in ("torch", "ort")}


@pytest.mark.parametrize("backend,method", [("torch", "evospec"), ("ort", "evospec"), ("torch", "osd")])
def test_exact_while_head_rows_change_mid_generation(bundles, backend, method):
    from evospec.runtime.align.dense_head import DenseHeadAligner

    generator = SpeculativeGenerator.from_bundle(bundles[backend], TARGET)
    before = generator.drafter.reservoir.clone()
    rows = generator.drafter.reservoir
    generator.aligner = (HeadAligner(rows, AlignSettings(batch=4, every=1, lr=0.5, window=1000)) if method == "evospec"
                         else DenseHeadAligner(rows, batch=4, every=1, lr=0.5))
    prompt = generator.encode("def parse(self, text):\n    ")
    s = DecodeSettings(max_new_tokens=48, draft_tree="tree", draft_depth=4, draft_topk=4, draft_tokens=12)
    aligned = generator.generate(prompt, s)
    assert generator.aligner.updates >= 5 and not torch.equal(generator.drafter.reservoir, before)
    generator.aligner = None
    assert aligned.token_ids == generator.generate(prompt, DecodeSettings(max_new_tokens=48, use_draft=False)).token_ids


def test_ort_engines_read_the_updated_rows(bundles):
    """After an in-place update the ONNX Runtime head (bound weights) and the resident head agree with torch."""
    generator = SpeculativeGenerator.from_bundle(bundles["ort"], TARGET)
    drafter = generator.drafter
    reservoir = drafter.reservoir
    changed = torch.arange(0, 512, 5)
    with torch.no_grad():
        reservoir[changed] += torch.randn(changed.numel(), reservoir.shape[1], generator=torch.Generator().manual_seed(2))
    drafter.rows_changed(changed)
    normed = torch.randn(3, reservoir.shape[1], generator=torch.Generator().manual_seed(3))
    plan = drafter.plan
    expected = normed @ reservoir[plan.ids].T + plan.bias
    in_graph = drafter.runners["head"].infer({"normed": normed, "active": plan.ids, "bias": plan.bias})["logits"]
    resident = drafter.runners["head_active"].infer({"normed": normed, "rows": drafter.active_rows.rows,
                                                     "bias": plan.bias})["logits"]
    assert torch.allclose(in_graph, expected, atol=1e-4) and torch.allclose(resident, expected, atol=1e-4)


def test_cli_profile_align(bundles, tmp_path):
    import json

    from .test_cli import run

    corpus = tmp_path / "corpus"
    (corpus / "switch" / "test").mkdir(parents=True)
    code, prose = "def add(a, b):\n    return a + b\n" * 6, "The cat sat on the mat and looked at the sky. " * 6
    (corpus / "switch" / "test" / "s.txt").write_text(code + prose)
    segment = len(SpeculativeGenerator.from_bundle(bundles["torch"], TARGET).encode(code))
    (corpus / "manifest.json").write_text(json.dumps({"switch": {"segment_tokens": segment, "segment_unit": "tokens"}}))
    out = tmp_path / "a.json"
    proc = run("profile", "align", "--bundle", str(bundles["torch"]), "--target", str(TARGET), "--corpus", str(corpus),
               "--streams", "1", "--chunk", "8", "--json", str(out), "--plot", str(tmp_path / "a.png"))
    assert "alignment MiB" in proc.stdout
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"none", "osd", "evospec", "evospec-nocurriculum"}
    assert rows["none"]["alignment_bytes"] == 0
    assert 0 < rows["evospec"]["alignment_bytes"] < rows["osd"]["alignment_bytes"]
    for r in rows.values():
        assert r["mean_accepted_length"] >= 1 and r["recovery_tokens"] >= 0 and len(r["curve"]) > 2
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    bad = run("profile", "align", "--bundle", str(bundles["torch"]), "--target", str(TARGET), "--corpus", str(corpus),
              "--methods", "magic", check=False)
    assert bad.returncode == 2 and "unknown alignment method 'magic'" in bad.stderr
