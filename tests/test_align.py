"""Online alignment pieces: bounded buffer, sparse Adam, curriculum, rollback, exactness while rows change."""

from __future__ import annotations

import pytest
import torch

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.bundle.compile import compile_bundle
from evospec.passes.base import CompileSettings
from evospec.runtime.align.background import BackgroundAligner
from evospec.runtime.align.feedback import CycleFeedback, FeedbackBuffer
from evospec.runtime.align.head_aligner import AlignSettings, HeadAligner
from evospec.runtime.align.online_distill import OnlineDistiller
from evospec.runtime.align.sparse_adam import SparseRowAdam
from evospec.train.demo_pair import ASSET_DIR

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
    # greedy sessions too: the buffer is filled directly here, without a cycle saying how it was decoded
    aligner = HeadAligner(torch.zeros(50, 4), AlignSettings(buffer=40, batch=4, pace_start=0.25, pace_updates=10,
                                                            curriculum_greedy=True))
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


def _cycle(g, accepted, rows=60, d=8):
    return CycleFeedback(torch.randn(3, d, generator=g), torch.randn(3, rows, generator=g), accepted, torch.arange(rows))


@pytest.mark.parametrize("norm", [False, True])
def test_rollback_restores_every_changed_row_when_acceptance_drops(norm):
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(60, 8, generator=g)
    original, weight = rows.clone(), torch.rand(8, generator=g) + 0.5
    settings = AlignSettings(buffer=64, batch=8, every=4, lr=0.1, window=4, norm=norm, norm_lr=0.1)
    aligner = HeadAligner(rows, settings, norm_weight=weight)
    for cycle in range(4):  # good acceptance; the fourth cycle runs an update
        changed = aligner.feedback(_cycle(g, 4))
    assert aligner.updates == 1 and changed.rows is not None and not torch.equal(rows, original)
    assert (changed.trunk is not None) == norm
    if norm:
        assert not torch.equal(changed.trunk["norm.weight"], weight)
    for cycle in range(3):  # acceptance collapses after the update
        assert aligner.feedback(_cycle(g, 0)) is None
    restored = aligner.feedback(_cycle(g, 0))
    assert aligner.rollbacks == 1 and set(restored.rows.tolist()) == set(changed.rows.tolist())
    assert torch.equal(rows, original) and aligner.snapshot_rows == 0
    if norm:
        assert torch.equal(restored.trunk["norm.weight"], weight)

    kept = HeadAligner(rows, settings, norm_weight=weight)
    for cycle in range(8):  # acceptance holds: the update is kept
        kept.feedback(_cycle(g, 4))
    assert kept.rollbacks == 0 and not torch.equal(rows, original)


def _recording(optimiser: SparseRowAdam, seen: dict, key: str) -> None:
    """Keep the gradients the aligner hands its optimiser (the raw closed-form values)."""
    delta = optimiser.delta

    def recorded(ids, grads):
        seen[key] = (ids.clone(), grads.clone())
        return delta(ids, grads)

    optimiser.delta = recorded


@pytest.mark.parametrize("proposals", [40, 3], ids=["every-row", "strongest-3"])
def test_norm_gradient_matches_autograd(proposals):
    """The closed-form gradients for head rows and the norm weight equal autograd's (float64) on the
    same loss, value for value; the update is one optimiser step on exactly those gradients."""
    g = torch.Generator().manual_seed(4)
    rows, weight = torch.randn(40, 6, generator=g), torch.rand(6, generator=g) + 0.5
    settings = AlignSettings(batch=5, top=3, lr=1.0, norm=True, norm_lr=1.0, proposals=proposals)
    aligner = HeadAligner(rows.clone(), settings, norm_weight=weight)
    aligner.buffer.add(torch.randn(5, 6, generator=g), torch.randn(5, 40, generator=g))
    seen: dict = {}
    _recording(aligner.optimiser, seen, "rows")
    _recording(aligner.norm_optimiser, seen, "norm")
    batch = aligner.draw(torch.arange(0, 40, 2))  # half the rows active; the target's tokens join the softmax
    result = aligner.compute(batch)

    union = torch.unique(torch.cat((batch.active_ids, batch.ids.flatten())))
    w, r = weight.double().requires_grad_(), rows.double().requires_grad_()
    p = batch.probs.double() / batch.probs.double().sum(-1, keepdim=True)
    log_q = torch.log_softmax((batch.states.double() * w) @ r[union].T, dim=-1)
    loss = -(p * log_q.gather(1, torch.searchsorted(union, batch.ids))).sum(-1).mean()
    loss.backward()

    ids, grads = seen["rows"]
    assert torch.equal(ids, result.rows) and set(batch.ids.flatten().tolist()) <= set(ids.tolist())
    assert set(ids.tolist()) == set(union.tolist()) if proposals >= union.numel() else ids.numel() < union.numel()
    torch.testing.assert_close(grads.double(), r.grad[ids], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(seen["norm"][1][0].double(), w.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.deltas, SparseRowAdam(rows.clone(), lr=1.0).delta(ids, grads))


def test_rest_mass_teacher_gradient_matches_autograd():
    """``rest_mass``: the target's top tokens at their own mass plus one rest class (the drafter's other
    columns together against the target's remaining mass); closed form equals autograd (float64)."""
    g = torch.Generator().manual_seed(6)
    rows = torch.randn(40, 6, generator=g)
    aligner = HeadAligner(rows.clone(), AlignSettings(batch=5, top=3, lr=1.0, proposals=40, rest_mass=True))
    aligner.buffer.add(torch.randn(5, 6, generator=g), torch.randn(5, 40, generator=g))
    seen: dict = {}
    _recording(aligner.optimiser, seen, "rows")
    batch = aligner.draw(torch.arange(0, 40, 2))
    aligner.compute(batch)

    union = torch.unique(torch.cat((batch.active_ids, batch.ids.flatten())))
    r = rows.double().requires_grad_()
    p = batch.probs.double()
    assert float(p.sum(-1).max()) < 1  # a real rest: the top 3 of 40 never hold all the mass
    log_q = torch.log_softmax(batch.states.double() @ r[union].T, dim=-1)
    cols = torch.searchsorted(union, batch.ids)
    rest = torch.ones_like(log_q, dtype=torch.bool).scatter_(1, cols, False)
    log_rest = torch.logsumexp(log_q.masked_fill(~rest, float("-inf")), dim=-1)
    loss = (-(p * log_q.gather(1, cols)).sum(-1) - (1 - p.sum(-1)) * log_rest).mean()
    loss.backward()
    ids, grads = seen["rows"]
    torch.testing.assert_close(grads.double(), r.grad[ids], rtol=1e-5, atol=1e-7)
    p_renormalised = p / p.sum(-1, keepdim=True)  # what the default teacher would have differentiated
    plain = -(p_renormalised * torch.log_softmax(batch.states.double() @ r[union].T, -1).gather(1, cols)).sum(-1).mean()
    assert not torch.allclose(torch.autograd.grad(plain, r)[0][ids], r.grad[ids])  # the two teachers differ


def test_the_teacher_follows_how_each_cycle_was_decoded():
    """``sampled_rest_mass`` (the default): entries from sampled cycles are taught with the rest class, exactly as
    ``rest_mass`` teaches every entry; entries from greedy cycles with the renormalised teacher, exactly as
    before; a batch mixing both teaches each entry its own way."""
    import dataclasses

    g = torch.Generator().manual_seed(7)
    rows = torch.randn(40, 6, generator=g)
    cycle = CycleFeedback(torch.randn(5, 6, generator=g), torch.randn(5, 40, generator=g), 1, torch.arange(0, 40, 2))
    base = AlignSettings(batch=5, top=3, lr=1.0, proposals=40, curriculum_greedy=True)  # one pool for either kind

    def deltas(settings: AlignSettings, *cycles: CycleFeedback) -> torch.Tensor:
        aligner = HeadAligner(rows.clone(), settings)
        for c in cycles:
            aligner.record(c, None)
        batch = aligner.draw(cycle.active_ids)
        return aligner.compute(batch).deltas, batch

    sampled = dataclasses.replace(cycle, sampled=True)
    on_sampled, _ = deltas(base, sampled)
    forced, _ = deltas(dataclasses.replace(base, rest_mass=True), cycle)
    assert torch.equal(on_sampled, forced)
    on_greedy, _ = deltas(base, cycle)
    old, _ = deltas(dataclasses.replace(base, sampled_rest_mass=False), sampled)
    assert torch.equal(on_greedy, old) and not torch.allclose(on_greedy, on_sampled)
    mixed = CycleFeedback(cycle.head_inputs[:2], cycle.target_logits[:2], 1, cycle.active_ids, sampled=True)
    rest = CycleFeedback(cycle.head_inputs[2:], cycle.target_logits[2:], 1, cycle.active_ids)
    _, batch = deltas(dataclasses.replace(base, batch=5), mixed, rest)
    assert sorted(batch.rest.tolist()) == [False, False, False, True, True]


def test_background_updates_equal_synchronous_ones_one_cycle_later():
    """The worker changes nothing but timing: the same updates, each applied at the next cycle."""
    g = torch.Generator().manual_seed(5)
    cycles = [_cycle(g, 3) for _ in range(24)]
    settings = AlignSettings(buffer=64, batch=8, every=4, lr=0.1, window=100)
    sync_rows = torch.randn(60, 8, generator=g)
    bg_rows = sync_rows.clone()
    sync, background = HeadAligner(sync_rows, settings), BackgroundAligner(HeadAligner(bg_rows, settings))
    sync_changed = [sync.feedback(c) for c in cycles]
    bg_changed = [background.feedback(c) for c in cycles]
    due = [i for i, c in enumerate(sync_changed) if c is not None]
    assert due == [3, 7, 11, 15, 19, 23]
    for i in due[:-1]:  # the update computed at cycle i reaches the rows at cycle i + 1
        assert bg_changed[i] is None and torch.equal(bg_changed[i + 1].rows, sync_changed[i].rows)
    assert background.updates == 5 and not torch.equal(bg_rows, sync_rows)
    assert torch.equal(background.collect().rows, sync_changed[-1].rows) and background.updates == 6
    assert torch.allclose(bg_rows, sync_rows) and background.blocking_seconds > 0
    background.close()


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("align")
    return {backend: compile_bundle(TARGET, DRAFTER, root / backend, CompileSettings(backend=backend, buckets=(512,),
                                                                                     index_dims=0)) and root / backend
            for backend in ("torch", "ort")}


@pytest.mark.parametrize("backend,method", [("torch", "evospec"), ("ort", "evospec-norm"),
                                            pytest.param("ort", "osd", marks=pytest.mark.slow),  # osd: torch below
                                            ("torch", "osd"), pytest.param("ort", "osd-reservoir", marks=pytest.mark.slow)])
def test_exact_while_weights_change_mid_generation(bundles, backend, method):
    generator = SpeculativeGenerator.from_bundle(bundles[backend], TARGET)
    drafter = generator.drafter
    before, trunk_before = drafter.reservoir.clone(), drafter.trunk_weights()
    if method.startswith("osd"):
        head = "draft" if method == "osd" else "reservoir"
        generator.aligner = OnlineDistiller(drafter, batch=4, every=1, lr=0.05, head=head)
    else:
        settings = AlignSettings(batch=4, every=1, lr=0.5, window=1000, norm=method == "evospec-norm", norm_lr=0.05)
        generator.aligner = BackgroundAligner(HeadAligner(drafter.reservoir, settings,
                                                          norm_weight=trunk_before["norm.weight"]))
    prompt = generator.encode("def parse(self, text):\n    ")
    s = DecodeSettings(max_new_tokens=48, draft_tree="tree", draft_depth=4, draft_topk=4, draft_tokens=12)
    aligned = generator.generate(prompt, s)
    assert generator.aligner.updates >= 5 and not torch.equal(drafter.reservoir, before)
    trunk_after = drafter.trunk_weights()  # read back from the engines: the updates reached them
    if method != "evospec":
        assert not torch.equal(trunk_after["norm.weight"], trunk_before["norm.weight"])
    if method.startswith("osd"):
        assert not torch.equal(trunk_after["fc.weight"], trunk_before["fc.weight"])
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


def test_ort_trunk_reads_updated_weights_like_torch(bundles):
    """Trunk/fuse weights written through ``update_trunk_weights`` give the torch stages' outputs."""
    ort, torch_gen = (SpeculativeGenerator.from_bundle(bundles[b], TARGET).drafter for b in ("ort", "torch"))
    g = torch.Generator().manual_seed(6)
    new = {n: w + 0.05 * torch.randn(w.shape, generator=g) for n, w in torch_gen.trunk_weights().items()}
    for drafter in (ort, torch_gen):
        drafter.update_trunk_weights(new)
        assert all(torch.allclose(drafter.trunk_weights()[n], w) for n, w in new.items())
    c = ort.config
    features = torch.randn(1, 3, 3 * c.target_hidden_size, generator=g)
    feeds = {"embeds": torch.randn(1, 3, c.hidden_size, generator=g), "positions": torch.arange(3)[None],
             "past_keys": torch.zeros(1, c.num_key_value_heads, 1, c.head_dim),
             "past_values": torch.zeros(1, c.num_key_value_heads, 1, c.head_dim),
             "mask": torch.cat((torch.zeros(3, 1, dtype=torch.bool), torch.ones(3, 3, dtype=torch.bool).tril()), 1)}
    outs = []
    for drafter in (ort, torch_gen):
        hidden = drafter.runners["fuse"].infer({"features": features})["hidden"]
        outs.append(drafter.runners["trunk"].infer({"hidden": hidden, **feeds})["normed"])
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


def switch_corpus(bundle, tmp_path):
    """A one-document corpus that switches from code to prose, and its segment length in tokens."""
    import json

    corpus = tmp_path / "corpus"
    (corpus / "switch" / "test").mkdir(parents=True)
    code, prose = "def add(a, b):\n    return a + b\n" * 6, "The cat sat on the mat and looked at the sky. " * 6
    (corpus / "switch" / "test" / "s.txt").write_text(code + prose)
    segment = len(SpeculativeGenerator.from_bundle(bundle, TARGET).encode(code))
    (corpus / "manifest.json").write_text(json.dumps({"switch": {"segment_tokens": segment, "segment_unit": "tokens"}}))
    return corpus, segment


def test_cli_profile_align(bundles, tmp_path):
    import json

    from .test_cli import run

    corpus, segment = switch_corpus(bundles["torch"], tmp_path)
    out = tmp_path / "a.json"
    proc = run("profile", "align", "--bundle", str(bundles["torch"]), "--target", str(TARGET), "--corpus", str(corpus),
               "--streams", "1", "--chunk", "8", "--json", str(out), "--plot", str(tmp_path / "a.png"))
    assert "alignment MiB" in proc.stdout
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    assert set(rows) == {"none", "osd", "evospec", "evospec-nocurriculum"}
    assert rows["evospec"]["updates"] > 0 and rows["evospec"]["decode_thread_ms"] > 0
    assert rows["none"]["alignment_bytes"] == 0
    assert 0 < rows["evospec"]["alignment_bytes"] < rows["osd"]["alignment_bytes"]
    for r in rows.values():
        steps = [tokens for _, tokens in r["curve"]]
        assert len(steps) > 2 and min(steps) >= 1  # every step emits at least the target's own token
        assert r["mean_accepted_length"] == pytest.approx(sum(steps) / len(steps))
        assert r["recovery_tokens"] <= segment and r["recovery_level"] == "none"  # a wait never outlasts its segment
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    bad = run("profile", "align", "--bundle", str(bundles["torch"]), "--target", str(TARGET), "--corpus", str(corpus),
              "--methods", "magic", check=False)
    assert bad.returncode == 2 and "unknown alignment method 'magic'" in bad.stderr
    both = run("profile", "align", "--bundle", str(bundles["torch"]), "--drafter", str(DRAFTER), "--target", str(TARGET),
               "--corpus", str(corpus), check=False)
    assert both.returncode == 2 and "exactly one of --bundle DIR or --drafter DIR" in both.stderr


@pytest.mark.slow  # `profile align` end to end stays in the default run (test_cli_profile_align, from a bundle)
def test_cli_profile_align_from_a_drafter_checkpoint(bundles, tmp_path):
    import json

    from .test_cli import run

    corpus, _ = switch_corpus(bundles["torch"], tmp_path)
    staged = tmp_path / "staged.json"  # a drafter checkpoint instead of a bundle, and the extra methods
    run("profile", "align", "--drafter", str(DRAFTER), "--target", str(TARGET), "--corpus", str(corpus), "--streams", "1",
        "--chunk", "8", "--methods", "evospec-norm,evospec-sync", "--json", str(staged))
    rows = {r["method"]: r for r in json.loads(staged.read_text())}
    for method in ("evospec-norm", "evospec-sync"):
        assert rows[method]["updates"] > 0 and rows[method]["alignment_bytes"] > 0


@pytest.mark.gpu
def test_tensorrt_engine_refits_aligned_rows(tmp_path):
    """TensorRT holds its rows: alignment updates a host copy and refits the engine (whole weight)."""
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU; torch sees none")
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'evospec[tensorrt]')")
    compile_bundle(TARGET, DRAFTER, tmp_path / "trt", CompileSettings(backend="tensorrt", buckets=(384, 512)))
    generator = SpeculativeGenerator.from_bundle(tmp_path / "trt", TARGET, device="cuda")
    drafter = generator.drafter
    rows = drafter.reservoir
    before = rows.clone()
    generator.aligner = HeadAligner(rows, AlignSettings(batch=4, every=1, lr=0.5, window=1000))
    prompt = generator.encode("def parse(self, text):\n    ")
    s = DecodeSettings(max_new_tokens=32, draft_tree="chain", draft_depth=4)
    aligned = generator.generate(prompt, s)
    assert generator.aligner.updates >= 3 and not torch.equal(rows, before)
    generator.aligner = None
    assert aligned.token_ids == generator.generate(prompt, DecodeSettings(max_new_tokens=32, use_draft=False)).token_ids
    normed = torch.randn(3, rows.shape[1], generator=torch.Generator().manual_seed(7))
    plan = drafter.plan
    logits = drafter.runners["head"].infer({"normed": normed, "active": plan.ids, "bias": plan.bias})["logits"]
    assert torch.allclose(logits.float().cpu(), normed @ rows[plan.ids].T + plan.bias, atol=1e-3)


@pytest.mark.parametrize("pattern", [(True,), (False, True, False, False, True)], ids=["every-step", "plain-steps"])
def test_alignment_feedback_covers_every_position_once_through_plain_steps(bundles, pattern):
    """With plain steps (``plain_fallback``, scripted), each speculative step's feedback holds the root call's rows
    for every position committed since the last draft: its tokens are the sequence's next ones, none lost or
    repeated, and its target logits are the target's own at those positions (a forward over the whole text)."""
    from evospec.testing.scripted_gate import ScriptedGate

    class Recorder:
        updates = 0

        def __init__(self):
            self.cycles = []

        def feedback(self, cycle):
            self.cycles.append((cycle.tokens.tolist(), cycle.target_logits.clone(), cycle.head_inputs.shape[0]))
            return None

    generator = SpeculativeGenerator.from_bundle(bundles["torch"], TARGET)
    generator.aligner, generator.gate = Recorder(), ScriptedGate(pattern)
    prompt = generator.encode("def parse(self, text):\n    ")
    result = generator.generate(prompt, DecodeSettings(max_new_tokens=40, draft_tree="chain", draft_depth=3,
                                                       plain_fallback=True))
    sequence = prompt + result.token_ids
    with torch.no_grad():
        logits = generator.target.model(torch.tensor([sequence])).logits[0]
    position, cycles = 1, generator.aligner.cycles  # the first root call's rows: prompt[1:] + the first new token
    for tokens, targets, rows in cycles:
        assert tokens == sequence[position : position + len(tokens)] and rows == len(tokens)
        assert torch.allclose(targets, logits[position : position + len(tokens)], atol=1e-3)
        position += len(tokens)
    assert len(cycles) == result.stats.steps - result.stats.plain_steps
    assert (result.stats.plain_steps > 5) == (pattern != (True,)) and max(len(t) for t, _, _ in cycles[1:]) > 1
    assert position >= len(sequence) - 8  # the last step's positions wait for a draft that never comes
