"""`evospec compile`: passes, gather plans, reservoir, bundles, and compiled decoding equal to eager."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.bundle.compile import BUNDLE_FORMAT, compile_bundle
from evospec.core.errors import BundleError, CompileError, SettingsError
from evospec.passes.base import CompileSettings, PassResult
from evospec.passes.pipeline import default_passes
from evospec.passes.reservoir import build_reservoir
from evospec.runtime.gather import choose_bucket, make_plan
from evospec.runtime.stages import HeadStage
from evospec.train.demo_pair import ASSET_DIR

pytest.importorskip("onnxruntime", reason="the compile tests need onnxruntime (pip install 'evospec[onnx]')")

TARGET, DRAFTER = ASSET_DIR / "target", ASSET_DIR / "drafter"


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 60), st.lists(st.integers(1, 64), min_size=1, max_size=4, unique=True), st.integers(0, 10_000))
def test_gather_plan_pads_with_rows_that_never_win(size, buckets, seed):
    buckets = tuple(sorted(buckets))
    g = torch.Generator().manual_seed(seed)
    vocab = 64
    active = torch.randperm(vocab, generator=g)[: min(size, vocab)]
    if active.numel() > max(buckets):
        with pytest.raises(SettingsError, match="does not fit the largest bucket"):
            make_plan(active, buckets)
        return
    plan = make_plan(active, buckets)
    assert plan.bucket == choose_bucket(active.numel(), buckets) == min(b for b in buckets if b >= active.numel())
    assert torch.equal(plan.ids[: plan.size], active) and plan.size == active.numel()
    assert torch.isinf(plan.bias[plan.size :]).all() and (plan.bias[: plan.size] == 0).all()
    rows = torch.randn(vocab, 8, generator=g) * 10
    normed = torch.randn(5, 8, generator=g)
    logits = HeadStage(rows)(normed, plan.ids, plan.bias)
    assert torch.allclose(logits[:, : plan.size], normed @ rows[active].T, atol=1e-5)
    assert (logits.argmax(-1) < plan.size).all()
    assert (logits.topk(min(plan.size, 3), dim=-1).indices < plan.size).all()
    assert torch.softmax(logits, -1)[:, plan.size :].sum() == 0


def test_reservoir_keeps_drafter_rows_and_recovers_a_linear_map():
    g = torch.Generator().manual_seed(0)
    target_head = torch.randn(300, 16, generator=g, dtype=torch.float64)
    true_map = torch.randn(16, 8, generator=g, dtype=torch.float64)
    rows = torch.randperm(300, generator=g)[:120]
    draft_head = (target_head[rows] @ true_map).float()
    reservoir, report = build_reservoir(target_head.float(), draft_head, rows)
    assert torch.equal(reservoir[rows], draft_head)
    assert report == {**report, "rows": 300, "from_drafter": 120, "synthesised": 180}
    assert report["heldout_relative_error"] < 1e-4 and report["fit_relative_error"] < 1e-4
    assert torch.allclose(reservoir, (target_head @ true_map).float(), atol=1e-3)


@pytest.fixture(scope="module")
def ort_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("b") / "bundle"
    manifest = compile_bundle(TARGET, DRAFTER, out, CompileSettings(backend="ort", buckets=(256, 512)))
    return out, manifest


def test_manifest_records_inputs_passes_and_parity(ort_bundle):
    out, manifest = ort_bundle
    assert [p["name"] for p in manifest["passes"]] == [p.name for p in default_passes()]
    assert json.loads((out / "manifest.json").read_text())["passes"] == manifest["passes"]
    assert manifest["format"] == BUNDLE_FORMAT and manifest["backend"] == "ort"
    assert set(manifest["inputs"]["target"]["files"]) >= {"config.json", "model.safetensors"}
    assert manifest["reservoir"]["rows"] == 512 and manifest["reservoir"]["from_drafter"] == 384
    assert manifest["gather"] == {**manifest["gather"], "buckets": [256, 512], "default_bucket": 512}
    parity = manifest["parity"]["stages"]
    assert set(parity) == {"fuse", "trunk", "head", "head_active"}
    assert all(r["ok"] and r["max_abs_error"] < 1e-4 for outs in parity.values() for r in outs.values())
    for name in ("onnx/trunk.onnx", "onnx/head.onnx", "ort/trunk.opt.onnx", "drafter/model.safetensors"):
        assert name in manifest["files"]


@pytest.mark.parametrize("tree", ["chain", "tree"])
def test_compiled_drafter_drafts_like_the_eager_one(ort_bundle, tree):
    """Same tokens (= the target's greedy output) and the same accepted lengths step by step."""
    out, _ = ort_bundle
    eager = SpeculativeGenerator.from_paths(TARGET, DRAFTER)
    compiled = SpeculativeGenerator.from_bundle(out, TARGET)
    prompt = eager.encode("def parse(self, text):\n    ")
    s = DecodeSettings(max_new_tokens=48, draft_tree=tree, draft_depth=4, draft_topk=4, draft_tokens=12)
    assert compiled.drafter.active_rows is not None  # ONNX Runtime bundles draft with the resident head
    a, b = eager.generate(prompt, s), compiled.generate(prompt, s)
    assert b.token_ids == a.token_ids == eager.generate(prompt, DecodeSettings(max_new_tokens=48, use_draft=False)).token_ids
    assert b.stats.accepted_lengths == a.stats.accepted_lengths


def test_torch_backend_bundle(tmp_path):
    manifest = compile_bundle(TARGET, DRAFTER, tmp_path / "t", CompileSettings(backend="torch", buckets=(512,)))
    assert manifest["parity"]["backend"] == "torch" and "reservoir.safetensors" in manifest["files"]
    eager = SpeculativeGenerator.from_paths(TARGET, DRAFTER)
    compiled = SpeculativeGenerator.from_bundle(tmp_path / "t", TARGET)
    prompt = eager.encode("import ")
    s = DecodeSettings(max_new_tokens=32, draft_tree="chain", draft_depth=4)
    a, b = eager.generate(prompt, s), compiled.generate(prompt, s)
    assert a.token_ids == b.token_ids and a.stats.accepted_lengths == b.stats.accepted_lengths


class Explode:
    name = "explode"

    def __call__(self, ctx) -> PassResult:
        raise RuntimeError("boom")


def test_pass_conditions_name_what_is_missing_or_malformed(tmp_path):
    """requires: a pass run before the one that sets what it reads; ensures: a pass that writes a wrong shape."""
    from evospec.passes.gather_plans import PlanGathers
    from evospec.passes.reservoir import BuildReservoir
    from evospec.passes.split import SplitStages
    from evospec.passes.validate_inputs import ValidateInputs

    with pytest.raises(CompileError, match=r"pass 'gather_plans' failed: requires ctx.reservoir, which no earlier pass set"):
        compile_bundle(TARGET, DRAFTER, tmp_path / "a", CompileSettings(buckets=(512,)),
                       passes=[ValidateInputs(), SplitStages(), PlanGathers()])

    class HalfReservoir(BuildReservoir):
        def call(self, ctx):
            result = super().call(ctx)
            ctx.reservoir = ctx.reservoir[:, : ctx.reservoir.shape[1] // 2]
            return result

    with pytest.raises(CompileError, match=r"pass 'reservoir' failed: ensures the reservoir is float \[V, d\]"):
        compile_bundle(TARGET, DRAFTER, tmp_path / "b", CompileSettings(buckets=(512,)),
                       passes=[ValidateInputs(), SplitStages(), HalfReservoir()])
    assert list(tmp_path.iterdir()) == []


def test_failing_pass_is_named_and_leaves_no_bundle(tmp_path):
    passes = default_passes()
    passes.insert(3, Explode())
    with pytest.raises(CompileError, match=r"pass 'explode' failed: RuntimeError: boom \(passes that ran: "
                                           r"\['validate_inputs', 'split', 'reservoir'\]\)"):
        compile_bundle(TARGET, DRAFTER, tmp_path / "b", CompileSettings(buckets=(512,)), passes=passes)
    assert list(tmp_path.iterdir()) == []


def test_drafter_vocabulary_must_fit_a_bucket(tmp_path):
    with pytest.raises(CompileError, match="pass 'gather_plans' failed: the drafter's own vocabulary \\(384 rows\\)"):
        compile_bundle(TARGET, DRAFTER, tmp_path / "b", CompileSettings(buckets=(128, 256)))
    assert not (tmp_path / "b").exists()


def _copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "copy")


def _edit_manifest(bundle, **changes):
    path = bundle / "manifest.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("case", ["missing-dir", "no-manifest", "bad-json", "format", "missing-file", "truncated",
                                  "altered", "other-target", "backend-missing"])
def test_bad_bundles(ort_bundle, tmp_path, case):
    from evospec.runtime.bundle import check_backend

    bundle = _copy(ort_bundle[0], tmp_path)
    target = TARGET
    expect = {
        "missing-dir": "does not exist", "no-manifest": "manifest.json is missing", "bad-json": "not valid JSON",
        "format": "has bundle format 99; this evospec reads format 2", "missing-file": "trunk.onnx.data is missing",
        "truncated": "head.onnx.data is truncated or altered", "altered": "head.onnx.data was altered",
        "other-target": "is not the one", "backend-missing": "tensorrt is not installed here",
    }[case]
    if case == "missing-dir":
        bundle = tmp_path / "nothing"
    elif case == "no-manifest":
        (bundle / "manifest.json").unlink()
    elif case == "bad-json":
        (bundle / "manifest.json").write_text("{")
    elif case == "format":
        _edit_manifest(bundle, format=99)
    elif case == "missing-file":
        (bundle / "onnx" / "trunk.onnx.data").unlink()
    elif case == "truncated":
        data = bundle / "onnx" / "head.onnx.data"
        data.write_bytes(data.read_bytes()[:-4])
    elif case == "altered":
        data = bundle / "onnx" / "head.onnx.data"
        raw = bytearray(data.read_bytes())
        raw[100] ^= 0xFF
        data.write_bytes(bytes(raw))
    elif case == "other-target":
        target = shutil.copytree(TARGET, tmp_path / "target")
        config = json.loads((target / "config.json").read_text())
        (target / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    if case == "backend-missing":
        pytest.importorskip("onnxruntime")
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            with pytest.raises(BundleError, match=expect):
                check_backend(bundle, "tensorrt")
            return
        pytest.skip("TensorRT is installed here, so it cannot be missing")
    with pytest.raises(BundleError, match=expect):
        SpeculativeGenerator.from_bundle(bundle, target)


def test_ort_sessions_do_not_spin_on_the_cores_verification_needs(ort_bundle):
    """ONNX Runtime's pool threads spin after each run by default; beside torch's verification on a 2-core host
    that cost 8x a verification step (README, issue 18). Every stage session is created with spinning off."""
    from evospec.runtime.runners import OrtRunner

    out, _ = ort_bundle
    for stage in ("fuse", "trunk", "head"):
        runner = OrtRunner(stage, out / "onnx" / f"{stage}.onnx")
        runner.activate()
        assert runner.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_ort_intra_op_threads_come_from_the_environment(ort_bundle, monkeypatch):
    """``EVOSPEC_ORT_THREADS=1`` (runs that repeat bit for bit, README issue 18 stop 43) reaches every session; 0 or
    unset leaves ONNX Runtime's choice; anything else is refused in one line."""
    from evospec.core.errors import SettingsError
    from evospec.runtime.runners import OrtRunner

    out, _ = ort_bundle
    for value, expected in (("1", 1), ("0", 0)):
        monkeypatch.setenv("EVOSPEC_ORT_THREADS", value)
        runner = OrtRunner("trunk", out / "onnx" / "trunk.onnx")
        runner.activate()
        assert runner.session.get_session_options().intra_op_num_threads == expected
    monkeypatch.setenv("EVOSPEC_ORT_THREADS", "two")
    with pytest.raises(SettingsError, match="EVOSPEC_ORT_THREADS must be a whole number"):
        OrtRunner("trunk", out / "onnx" / "trunk.onnx").activate()


def test_ort_weights_update_in_place(ort_bundle):
    """Head rows and a trunk weight changed through the bound buffers, without a new session."""
    from evospec.runtime.runners import OrtRunner
    from evospec.runtime.stages import SIGNATURES

    out, _ = ort_bundle
    head = OrtRunner("head", out / "onnx" / "head.onnx")
    (name,) = [n for n, w in head.weights.items() if w.ndim == 2] if head.activate() is None else []
    session = head.session
    g = torch.Generator().manual_seed(0)
    rows = torch.from_numpy(head.weights[name].copy())
    normed, active = torch.randn(3, rows.shape[1], generator=g), torch.arange(256)
    bias = torch.zeros(256)
    changed = torch.arange(0, 256, 7)
    new_rows = torch.randn(changed.numel(), rows.shape[1], generator=g)
    head.update_weight(name, new_rows, rows=changed.numpy())
    rows[changed] = new_rows
    got = head.infer({"normed": normed, "active": active, "bias": bias})["logits"]
    assert head.session is session
    assert torch.allclose(got, HeadStage(rows)(normed, active, bias), atol=1e-4)

    trunk = OrtRunner("trunk", out / "onnx" / "trunk.onnx")
    trunk.activate()
    assert "layer.self_attn.q_proj.weight.T" in trunk.weights
    eager = SpeculativeGenerator.from_paths(TARGET, DRAFTER)
    from evospec.runtime.stages import TrunkStage

    stage = TrunkStage(eager.drafter)
    feed = {"hidden": torch.randn(1, 3, 128, generator=g), "embeds": torch.randn(1, 3, 128, generator=g),
            "positions": torch.arange(4, 7)[None], "past_keys": torch.randn(1, 2, 4, 32, generator=g),
            "past_values": torch.randn(1, 2, 4, 32, generator=g), "mask": torch.ones(3, 7, dtype=torch.bool).tril(4)}
    with torch.no_grad():
        stage.layer.self_attn.q_proj.weight.mul_(-0.5)
        expected = stage(*(feed[n] for n in SIGNATURES["trunk"].inputs))
    trunk.update_weight("layer.self_attn.q_proj.weight", stage.layer.self_attn.q_proj.weight)
    got = trunk.infer(feed)
    for key, ref in zip(SIGNATURES["trunk"].outputs, expected):
        assert torch.allclose(got[key], ref, atol=1e-4), key


def test_compile_settings_errors(tmp_path):
    from evospec.cli.bundle import compile_settings

    with pytest.raises(SettingsError, match="ascending"):
        CompileSettings(buckets=(512, 256))
    with pytest.raises(SettingsError, match="backend must be"):
        CompileSettings(backend="tvm")
    path = tmp_path / "c.toml"
    path.write_text("[compile]\nbuckets = [128, 256]\nbackend = \"torch\"\n")
    assert compile_settings(path, precision="fp32") == CompileSettings(backend="torch", buckets=(128, 256))
    path.write_text("[compile]\nbucket = 1\n")
    with pytest.raises(SettingsError, match="unknown \\[compile\\] keys \\['bucket'\\]"):
        compile_settings(path)
    with pytest.raises(SettingsError, match="comma-separated integers"):
        compile_settings(None, buckets="a,b")


def test_cli_compile_inspect_generate_doctor(tmp_path):
    from .test_cli import run

    bundle = tmp_path / "bundle"
    proc = run("compile", "--target", str(TARGET), "--drafter", str(DRAFTER), "--out", str(bundle), "--buckets", "384,512")
    assert [line.split()[0] for line in proc.stdout.splitlines()[:-1]] == [p.name for p in default_passes()]
    text = run("inspect", str(bundle)).stdout
    assert "parity vs torch" in text and "head buckets: [384, 512]" in text and "onnx/trunk.onnx" in text
    assert json.loads(run("inspect", str(bundle), "--json").stdout)["gather"]["default_bucket"] == 384
    common = ["--target", str(TARGET), "--prompt", "class ", "--max-new-tokens", "24", "--draft-tree", "chain", "--json"]
    compiled = json.loads(run("generate", "--bundle", str(bundle), *common).stdout.strip().splitlines()[-1])
    eager = json.loads(run("generate", "--drafter", str(DRAFTER), *common).stdout.strip().splitlines()[-1])
    assert compiled["token_ids"] == eager["token_ids"] and compiled["accepted_lengths"] == eager["accepted_lengths"]
    (bundle / "manifest.json").unlink()
    bad = run("generate", "--bundle", str(bundle), *common, check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "manifest.json is missing" in bad.stderr
    doctor = json.loads(run("doctor", "--json").stdout)
    found = {r["component"]: r for r in doctor}
    assert found["torch"]["available"] and found["onnxruntime"]["available"]
    assert "CPUExecutionProvider" in found["onnxruntime"]["detail"]
    assert {"cuda", "tensorrt", "polygraphy", "usearch", "triton", "onnx"} <= set(found)
    assert all(r["detail"] for r in doctor)
    assert "torch" in run("doctor").stdout


@pytest.mark.gpu
def test_tensorrt_bundle_drafts_like_eager(tmp_path):
    """Needs TensorRT and a CUDA GPU: builds engines (REFIT, one head profile per bucket) and decodes."""
    if not torch.cuda.is_available():
        pytest.skip("TensorRT engines need a CUDA GPU; torch sees none")
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install 'evospec[tensorrt]')")
    manifest = compile_bundle(TARGET, DRAFTER, tmp_path / "trt", CompileSettings(backend="tensorrt", buckets=(384, 512)))
    assert all(manifest["parity"]["polygraphy"].values())
    eager = SpeculativeGenerator.from_paths(TARGET, DRAFTER, device="cuda")
    compiled = SpeculativeGenerator.from_bundle(tmp_path / "trt", TARGET, device="cuda")
    prompt = eager.encode("def ")
    s = DecodeSettings(max_new_tokens=32, draft_tree="chain", draft_depth=4)
    a, b = eager.generate(prompt, s), compiled.generate(prompt, s)
    assert a.token_ids == b.token_ids and a.stats.accepted_lengths == b.stats.accepted_lengths


@pytest.mark.gpu
def test_ort_bundle_with_a_cuda_target(ort_bundle):
    """Target on the GPU, compiled drafter on ONNX Runtime's CPU provider: same tokens as eager CUDA drafting."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device; torch sees none")
    eager = SpeculativeGenerator.from_paths(TARGET, DRAFTER, device="cuda")
    compiled = SpeculativeGenerator.from_bundle(ort_bundle[0], TARGET, device="cuda")
    prompt = eager.encode("def ")
    s = DecodeSettings(max_new_tokens=48, draft_tree="tree", draft_depth=4, draft_topk=4, draft_tokens=12)
    a, b = eager.generate(prompt, s), compiled.generate(prompt, s)
    assert a.token_ids == b.token_ids == eager.generate(prompt, DecodeSettings(max_new_tokens=48, use_draft=False)).token_ids
    assert a.stats.accepted_lengths == b.stats.accepted_lengths


def test_head_calls_select_the_profile_of_their_bucket():
    """TensorRT head engines hold one profile per bucket; both head stages are matched by their bias's size
    (head_active takes gathered rows, not active ids, and used to run every bucket at profile 0)."""
    from evospec.core.errors import BundleError
    from evospec.runtime.trt_runner import bucket_profile

    buckets = (384, 512, 1024)
    for profile, size in enumerate(buckets):
        head = {"normed": torch.zeros(2, 8), "active": torch.zeros(size, dtype=torch.long), "bias": torch.zeros(size)}
        rows = {"normed": torch.zeros(2, 8), "rows": torch.zeros(size, 8), "bias": torch.zeros(size)}
        assert bucket_profile(buckets, head) == bucket_profile(buckets, rows) == profile
    assert bucket_profile(buckets, {"hidden": torch.zeros(1, 8)}) is None  # fuse and trunk have one profile
    with pytest.raises(BundleError, match="matches no engine profile"):
        bucket_profile(buckets, {"bias": torch.zeros(700)})


def test_a_polygraphy_mismatch_fails_the_compile():
    from evospec.passes.parity import polygraphy_failures

    assert polygraphy_failures({"fuse": True, "head": True}) == []
    assert polygraphy_failures({"fuse": True, "head_active": False}) == [
        "head_active (Polygraphy: TensorRT vs ONNX Runtime)"]
