"""`evospec bench` end to end on the shipped demo pair, and corpus-layout errors."""

from __future__ import annotations

import json

import pytest

from evospec.data.corpus import CorpusError, corpus_domains, read_documents
from evospec.train.demo_pair import ASSET_DIR

from .test_cli import run

CODE = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    def __init__(self, x, y):\n        self.x = x\n"
PROSE = "The court held that the contract was void because the terms were never agreed by both parties. "


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "code" / "test").mkdir(parents=True)
    (root / "prose" / "test").mkdir(parents=True)
    for i in range(2):
        (root / "code" / "test" / f"{i}.txt").write_text(CODE * (2 + i))
    (root / "prose" / "test" / "docs.jsonl").write_text("\n".join(json.dumps({"text": PROSE * n}) for n in (3, 4)))
    return root


def test_bench_json_rows(corpus, tmp_path):
    out = tmp_path / "bench.json"
    proc = run(
        "bench", "--target", str(ASSET_DIR / "target"), "--drafter", str(ASSET_DIR / "drafter"),
        "--corpus", str(corpus), "--prompts", "2", "--prompt-tokens", "16", "--max-new-tokens", "12",
        "--draft-tree", "chain", "--draft-depth", "3", "--json", str(out), "--plot", str(tmp_path / "bench.png"),
        "--breakdown", "--threads", "1",
    )
    assert "identical" in proc.stdout and "outside forwards" in proc.stdout
    assert all(column in proc.stdout for column in (" trunk ", " head ", " draft "))
    assert "this runtime: 1 torch threads" in proc.stdout
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(out.read_text())
    assert [(r["domain"], r["method"]) for r in rows] == [
        ("code", "eagle3"), ("code", "plain"), ("prose", "eagle3"), ("prose", "plain"),
    ]
    for row in rows:
        assert row["prompts"] == 2 and row["new_tokens"] == 24
        # tau: emitted tokens per step; each prompt's first token comes from the prefill, not a step
        assert row["mean_accepted_length"] == pytest.approx((row["new_tokens"] - row["prompts"]) / row["steps"])
        assert row["tokens_per_second"] > 0 and len(row["acceptance_per_depth"]) == 3
        per_depth = row["acceptance_per_depth"]
        assert per_depth == sorted(per_depth, reverse=True)  # accepting d+1 tokens means accepting d
        assert row["mean_accepted_length"] <= 1 + sum(per_depth) + 1e-9  # = unless max_new_tokens cut a step
    for row in rows:  # the breakdown's parts add up to the step, and a plain step drafts nothing
        parts = row["ms_per_step"]  # the Python drafter's trunk is timed: drafting is trunk + head
        assert sum(v for k, v in parts.items() if k != "step") == pytest.approx(parts["step"], rel=1e-6)
        assert "draft" not in parts and parts["target"] > 0
        assert (parts["trunk"] > 0) == (parts["head"] > 0) == (row["method"] == "eagle3")
        assert parts["trunk"] + parts["head"] == pytest.approx(row["draft_ms_per_step"], rel=1e-9, abs=1e-12)
    assert all(r["identical_to_plain"] for r in rows if r["method"] == "eagle3")
    assert all(r["mean_accepted_length"] == 1.0 for r in rows if r["method"] == "plain")
    assert {r["draft"] for r in rows} == {"chain of 3", None}  # what each speculative row drafted


def test_draft_shape_says_what_a_step_drafts():
    import dataclasses

    from evospec.core.settings import DecodeSettings
    from evospec.eval.bench import draft_shape

    tree = DecodeSettings(draft_tree="tree", draft_depth=5, draft_topk=2, draft_tokens=10, temperature=1.0)
    assert draft_shape(tree) == ("tree: depth 5, 2 children a node, 10 nodes, children sampled without replacement, "
                                 "Python verifier")
    assert draft_shape(tree, native=True).endswith(", top-k children, C++ verifier")  # auto: the library verifies
    assert draft_shape(dataclasses.replace(tree, verifier="native")).endswith("without replacement, C++ verifier")
    assert draft_shape(DecodeSettings(draft_tree="tree", draft_depth=5, draft_topk=2, draft_tokens=10)).endswith("10 nodes")
    assert draft_shape(DecodeSettings(draft_tree="chain", draft_depth=5), policy="vocabulary evospec:64 by Python's policy") \
        == "chain of 5, vocabulary evospec:64 by Python's policy"
    assert draft_shape(DecodeSettings(draft_tree="chain", draft_depth=4, draft_budget="auto", plain_fallback=True)) == \
        "chain of 4, value-based budget, plain fallback"


def test_bench_with_plain_fallback(corpus, tmp_path):
    """``--plain-fallback``: the speculative row counts its plain steps (the gate's probes follow a request's first 5
    speculative steps, whatever the timings), the table says where they were taken, and output stays exact."""
    out = tmp_path / "bench.json"
    proc = run(
        "bench", "--target", str(ASSET_DIR / "target"), "--drafter", str(ASSET_DIR / "drafter"),
        "--corpus", str(corpus), "--domains", "code", "--prompts", "1", "--prompt-tokens", "16",
        "--max-new-tokens", "40", "--draft-tree", "chain", "--draft-depth", "3", "--plain-fallback", "--json", str(out),
    )
    rows = {r["method"]: r for r in json.loads(out.read_text())}
    assert rows["eagle3"]["identical_to_plain"] and rows["eagle3"]["plain_steps"] >= 2 and rows["plain"]["plain_steps"] == 0
    assert f"plain steps taken by --plain-fallback: code {rows['eagle3']['plain_steps']} of {rows['eagle3']['steps']}" \
        in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--corpus", "{tmp}/none"], "does not exist"), (["--corpus", "{tmp}/empty"], "has no domain folders"),
     (["--corpus", "{corpus}", "--domains", "law"], "no domain(s) ['law']")],
    ids=["missing-corpus", "empty-corpus", "unknown-domain"],
)
def test_bench_bad_input(corpus, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.format(tmp=tmp_path, corpus=corpus) for a in args]
    proc = run("bench", "--target", str(ASSET_DIR / "target"), "--drafter", str(ASSET_DIR / "drafter"), *args, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr


def test_corpus_layout_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no domain folders"):
        corpus_domains(tmp_path / "empty")
    (tmp_path / "c" / "law" / "test").mkdir(parents=True)
    with pytest.raises(CorpusError, match="holds no documents"):
        read_documents(tmp_path / "c", "law")
    (tmp_path / "c" / "law" / "test" / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no"}\n')
    with pytest.raises(CorpusError, match=r"a.jsonl:2: expected a JSON object with a 'text' field"):
        read_documents(tmp_path / "c", "law")
    with pytest.raises(CorpusError, match="does not exist"):
        read_documents(tmp_path / "c", "law", "valid")


def test_switch_prompts_end_just_after_a_topic_switch(tmp_path):
    """Topic-switch prompts must cross a switch: a prefix of a stream would be all one topic."""
    from evospec.eval.bench import SWITCH_LEAD, BenchSettings, domain_prompts

    class Words:  # one token per word: segment boundaries are exact
        def encode(self, text):
            return [int(w) for w in text.split()]

    root = tmp_path / "corpus"
    (root / "switch" / "test").mkdir(parents=True)
    segment = 40
    for s in range(3):  # stream s: 4 segments, segment j holds the tokens 1000*j + position
        words = [str(1000 * j + i) for j in range(4) for i in range(segment)]
        (root / "switch" / "test" / f"stream_{s}.txt").write_text(" ".join(words))
    (root / "manifest.json").write_text(json.dumps({"switch": {"segment_tokens": segment, "segment_unit": "tokens"}}))
    prompts = domain_prompts(Words(), str(root), "switch", BenchSettings(prompts=3, prompt_tokens=24))
    assert len(prompts) == 3
    for i, prompt in enumerate(prompts):
        switch = 1 + i % 3
        assert prompt[-SWITCH_LEAD:] == [1000 * switch + k for k in range(SWITCH_LEAD)]  # the new topic's start
        assert prompt[0] // 1000 == switch - 1  # with the old topic before it


@pytest.mark.slow  # `bench` end to end stays in the default run (test_bench_json_rows, test_bench_bad_input)
def test_bench_with_a_bundle_and_a_policy(corpus, tmp_path):
    """A compiled bundle drafts under a vocabulary policy; its greedy output is still the target's own."""
    bundle = tmp_path / "b"
    run("compile", "--target", str(ASSET_DIR / "target"), "--drafter", str(ASSET_DIR / "drafter"), "--out", str(bundle),
        "--buckets", "384,512")
    out = tmp_path / "bench.json"
    run("bench", "--target", str(ASSET_DIR / "target"), "--bundle", str(bundle), "--vocab", "full", "--corpus",
        str(corpus), "--domains", "code", "--prompts", "1", "--prompt-tokens", "16", "--max-new-tokens", "12",
        "--draft-tree", "chain", "--draft-depth", "3", "--breakdown", "--json", str(out))
    rows = json.loads(out.read_text())
    assert [r["method"] for r in rows] == ["eagle3", "plain"] and rows[0]["identical_to_plain"] is True
    assert rows[0]["draft"] == "chain of 3, vocabulary full by Python's policy"
    parts = rows[0]["ms_per_step"]  # ONNX Runtime runs the trunk out of torch's reach: drafting stays one column
    assert "trunk" not in parts and parts["draft"] > 0
    assert sum(v for k, v in parts.items() if k != "step") == pytest.approx(parts["step"], rel=1e-6)
    for args, message in ((["--drafter", str(ASSET_DIR / "drafter"), "--bundle", str(bundle)], "one of them"),
                          (["--drafter", str(ASSET_DIR / "drafter"), "--vocab", "full"], "need --bundle")):
        proc = run("bench", "--target", str(ASSET_DIR / "target"), "--corpus", str(corpus), *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
