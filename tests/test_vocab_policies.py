"""Vocabulary policies on compiled drafters: gather-plan deltas, frequency tables, and exactness
while the active set changes every step."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from evospec import DecodeSettings, SpeculativeGenerator
from evospec.bundle.compile import compile_bundle
from evospec.core.errors import SettingsError
from evospec.passes.base import CompileSettings
from evospec.runtime.active_rows import ActiveRows
from evospec.runtime.gather import make_plan, update_plan
from evospec.runtime.vocab import PolicyInputs, make_policy
from evospec.runtime.vocab.frequencies import TokenFrequencies, count_tokens
from evospec.train.demo_pair import ASSET_DIR

from .test_cli import run

TARGET, DRAFTER = ASSET_DIR / "target", ASSET_DIR / "drafter"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sets(st.integers(0, 99), min_size=1, max_size=40), min_size=1, max_size=6))
def test_plan_deltas_keep_columns_and_count_moves(active_sets):
    buckets = (16, 48)
    plan, resident = None, None
    reservoir = torch.randn(100, 4, generator=torch.Generator().manual_seed(len(active_sets)))
    for active in active_sets:
        ids = torch.tensor(sorted(active))
        new, moved = update_plan(plan, ids, buckets)
        if resident is None:
            resident = ActiveRows(reservoir, new)
        copied = resident.follow(new)
        assert torch.equal(resident.rows, reservoir[new.ids])  # resident rows always equal a fresh gather
        assert copied <= (new.bucket if plan is None or plan.bucket != new.bucket else moved + plan.size)
        assert set(new.ids[: new.size].tolist()) == active and new.size == len(active)
        assert len(set(new.ids[: new.size].tolist())) == new.size  # an id map: invertible on active columns
        assert torch.isinf(new.bias[new.size :]).all() and (new.bias[: new.size] == 0).all()
        assert new.bucket == make_plan(ids, buckets).bucket
        if plan is not None and plan.bucket == new.bucket:
            changed = sum(int(new.ids[i]) != int(plan.ids[i]) or i >= plan.size for i in range(new.size))
            assert moved == changed
            for i in range(min(plan.size, new.size)):  # a retained id never changes column
                if int(plan.ids[i]) in active:
                    assert int(new.ids[i]) == int(plan.ids[i])
        else:
            assert moved == new.size
        plan = new


def test_frequency_tables(tmp_path):
    table = count_tokens(iter([[[1, 2, 2], [3, 2]], [[1]]]), 6, "unit")
    assert table.counts.tolist() == [0, 2, 3, 1, 0, 0] and table.documents == 3
    assert table.top(2).tolist() == [1, 2] and table.top(4).tolist() == [0, 1, 2, 3]  # ties: lower id first
    table.save(tmp_path / "f.json")
    again = TokenFrequencies.load(tmp_path / "f.json")
    assert torch.equal(again.counts, table.counts) and again.source == "unit"
    with pytest.raises(SettingsError, match="counts 6 token ids but the model has 7"):
        again.top(2, 7)
    (tmp_path / "bad.json").write_text("[]")
    for path, message in ((tmp_path / "none.json", "does not exist"), (tmp_path / "bad.json", "not an evospec")):
        with pytest.raises(SettingsError, match=message):
            TokenFrequencies.load(path)
    with pytest.raises(SettingsError, match="outside the vocabulary"):
        count_tokens(iter([[[9]]]), 6, "unit")


def test_policy_names():
    inputs = PolicyInputs(10, torch.tensor([1, 4]))
    assert make_policy("full", inputs).active_ids().tolist() == list(range(10))
    assert make_policy("eagle3", inputs).active_ids().tolist() == [1, 4]
    for spec, message in (("frspec:abc", "integer K"), ("frspec:4", "needs --frequencies"), ("lru", "unknown")):
        with pytest.raises(SettingsError, match=message):
            make_policy(spec, inputs)


@pytest.fixture(scope="module")
def torch_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("vb") / "bundle"
    compile_bundle(TARGET, DRAFTER, out, CompileSettings(backend="torch", buckets=(64, 256, 512)))
    return out


class RandomPolicy:
    """A different random active set every step (sizes 1..400), always exact by construction of verification."""

    name = "random"

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def reset(self, prompt_ids):
        pass

    def active_ids(self):
        size = int(torch.randint(1, 400, (1,), generator=self.g))  # includes sets smaller than the tree width
        return torch.randperm(512, generator=self.g)[:size]

    def observe(self, committed, state=None):
        pass


class RecordingPolicy(RandomPolicy):
    """Asks for verification feedback (the target's top 3 ids at each verified row) and records it."""

    target_top = 3

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.log: list[tuple[list[int], torch.Tensor | None]] = []

    def observe(self, committed, state=None, target_top=None):
        self.log.append((list(committed), target_top))


def test_policies_that_ask_get_the_targets_top_ids_at_the_verified_rows(torch_bundle):
    generator = SpeculativeGenerator.from_bundle(torch_bundle, TARGET)
    policy = generator.policy = RecordingPolicy(0)
    prompt = generator.encode("def main(")
    s = DecodeSettings(max_new_tokens=24, draft_tree="tree", draft_depth=4, draft_topk=4, draft_tokens=10)
    result = generator.generate(prompt, s)
    first, steps = policy.log[0], policy.log[1:]  # first: the prefill's token, before any verification
    assert first[1] is None and all(top is not None and top.shape == (len(c), 3) for c, top in steps)
    assert sum(len(c) for c, _ in steps) >= len(result.token_ids) - 1 and any(len(c) > 1 for c, _ in steps)
    ids = prompt + result.token_ids
    with torch.no_grad():
        logits = generator.target.model(torch.tensor([ids])).logits[0]
    expected = logits[len(prompt) : len(ids) - 1].topk(3, dim=-1).indices  # the rows that chose tokens 1..n-1
    assert torch.equal(torch.cat([top for _, top in steps])[: expected.shape[0]], expected)
    policy.target_top = 10**9  # more than the vocabulary: every id, no error
    policy.log.clear()
    generator.generate(prompt, DecodeSettings(max_new_tokens=4, draft_tree="chain", draft_depth=2))
    assert all(top.shape[1] == logits.shape[-1] for _, top in policy.log[1:]) and len(policy.log) > 1


@settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no slow shrinking
@given(seed=st.integers(0, 10_000), tree=st.sampled_from(["chain", "tree"]))
def test_greedy_exact_while_the_active_set_changes_every_step(torch_bundle, seed, tree):
    generator = SpeculativeGenerator.from_bundle(torch_bundle, TARGET)
    generator.policy = RandomPolicy(seed)
    prompt = generator.encode("def main(")
    s = DecodeSettings(max_new_tokens=40, draft_tree=tree, draft_depth=4, draft_topk=4, draft_tokens=10)
    result = generator.generate(prompt, s)
    plain = generator.generate(prompt, DecodeSettings(max_new_tokens=40, use_draft=False))
    assert result.token_ids == plain.token_ids
    # every step that rejected a draft token is judged against the set it drafted over
    rejected = sum(1 for a in result.stats.accepted_lengths if a < 4)  # a chain or tree of depth 4
    assert 0 < result.stats.rejected_choice_total <= rejected and result.stats.active_rows_moved > 0
    assert sum(result.stats.step_tokens) == len(result.token_ids) - 1  # tau counts emitted tokens only


def test_cli_frequencies_and_frspec_generation(torch_bundle, tmp_path):
    corpus = tmp_path / "corpus"
    for domain, text in (("code", "def add(a, b):\n    return a + b\n"), ("prose", "The cat sat on the mat. ")):
        (corpus / domain / "train").mkdir(parents=True)
        (corpus / domain / "train" / "d.jsonl").write_text("\n".join(json.dumps({"text": text * n}) for n in (2, 3)))
    freq = tmp_path / "freq.json"
    proc = run("vocab", "frequencies", "--corpus", str(corpus), "--tokenizer", str(TARGET), "--out", str(freq))
    assert "4 documents" in proc.stdout
    table = TokenFrequencies.load(freq)
    assert table.vocab_size == 512 and table.documents == 4
    common = ["--target", str(TARGET), "--prompt", "def ", "--max-new-tokens", "24", "--draft-tree", "chain", "--json"]
    frspec = json.loads(run("generate", "--bundle", str(torch_bundle), "--vocab", "frspec:48", "--frequencies", str(freq),
                            *common).stdout.strip().splitlines()[-1])
    plain = json.loads(run("generate", "--no-draft", *common).stdout.strip().splitlines()[-1])
    assert frspec["token_ids"] == plain["token_ids"]
    assert frspec["rejected_choice_total"] > 0
    assert frspec["rejected_choice_coverage"] == frspec["rejected_choice_hits"] / frspec["rejected_choice_total"]
    bad = run("generate", "--drafter", str(DRAFTER), "--vocab", "full", *common, check=False)
    assert bad.returncode == 2 and "--vocab needs --bundle" in bad.stderr


@pytest.mark.parametrize("relative_error", [
    pytest.param(0.15, id="quick"), pytest.param(0.05, id="strict", marks=pytest.mark.slow)])
def test_sampling_exact_while_the_active_set_changes_every_step(relative_error):
    """Joint law of the first 3 new tokens with a sampled chain over a random active set each step:
    sized to detect ``relative_error`` in either half of the law (see ``halves_samples``)."""
    from .test_sampling_exactness import (
        assert_joint_matches,
        compiled_end_to_end_pair,
        equal_halves,
        exact_joint,
        halves_samples,
        sample_joint,
    )

    model, compiled = compiled_end_to_end_pair()

    class SmallRandom(RandomPolicy):
        def active_ids(self):
            size = int(torch.randint(1, 7, (1,), generator=self.g))
            return torch.randperm(6, generator=self.g)[:size]

    generator = SpeculativeGenerator.from_models(model, compiled)
    generator.policy = SmallRandom(5)
    prompt = [1, 4, 2]
    expected = exact_joint(model, prompt, 3, 1.0, 1.0)
    n = halves_samples(sum(expected[k] for k in equal_halves(expected)), relative_error)
    counts, accepted = sample_joint(generator, prompt, n, temperature=1.0, draft_tree="chain", draft_depth=3)
    assert_joint_matches(counts, expected, n, relative_error)
    assert accepted > n // 10, "the drafter must be accepted often enough for the test to mean something"


def test_evospec_policy_core_tail_and_ageing():
    from evospec.runtime.vocab.evospec_policy import EvoSpecPolicy

    counts = torch.zeros(50, dtype=torch.long)
    counts[:10] = torch.arange(10, 0, -1)  # ids 0..9 are the frequent ones
    table = TokenFrequencies(50, counts, 1, "unit", successors={30: [31, 32], 40: [41]})
    policy = EvoSpecPolicy(8, table, 50)  # core: 4 most frequent, tail: 4
    policy.reset([20, 21])
    active = set(policy.active_ids().tolist())
    assert {0, 1, 2, 3} <= active and {20, 21} <= active and len(active) <= 8
    policy.observe([30])  # context token 30, and its corpus successors 31, 32
    assert {30, 31, 32} <= set(policy.active_ids().tolist())
    policy.observe([40])
    policy.observe([42])
    active = policy.active_ids().tolist()
    assert len(active) == 8 and {40, 41, 42} <= set(active) and 20 not in active  # the oldest aged out
    policy.observe([30, 33])  # session successor: 33 followed 30
    policy.observe([30])
    assert 33 in set(policy.active_ids().tolist())
    with pytest.raises(SettingsError, match="with successors"):
        EvoSpecPolicy(8, TokenFrequencies(50, counts, 1, "unit"), 50)


@pytest.mark.slow  # `profile vocab` end to end stays in the default run (test_cli_vocab_dynaspec_then_profile)
def test_cli_profile_vocab(torch_bundle, tmp_path):
    corpus = tmp_path / "corpus"
    for domain, text in (("code", "def add(a, b):\n    return a + b\n"), ("prose", "The cat sat on the mat. ")):
        for split in ("train", "test"):
            (corpus / domain / split).mkdir(parents=True)
            (corpus / domain / split / "d.jsonl").write_text("\n".join(json.dumps({"text": text * n}) for n in (9, 12)))
    freq = tmp_path / "freq.json"
    run("vocab", "frequencies", "--corpus", str(corpus), "--tokenizer", str(TARGET), "--out", str(freq), "--successors", "4")
    out = tmp_path / "v.json"
    stages = tmp_path / "stages.json"  # what `profile stages --json` writes, with round numbers
    stages.write_text(json.dumps([{"stage": "trunk", "active_size": 0, "median_ms": 1.0},
                                  {"stage": "head_active", "active_size": 32, "median_ms": 0.5},
                                  {"stage": "head_full", "active_size": 512, "median_ms": 4.0}]))
    bad = run("profile", "vocab", "--bundle", str(torch_bundle), "--target", str(TARGET), "--corpus", str(corpus),
              "--policies", "eagle3", "--stages", str(freq), check=False)
    assert bad.returncode == 2 and "expected the JSON of `evospec profile stages --json`" in bad.stderr
    proc = run("profile", "vocab", "--bundle", str(torch_bundle), "--target", str(TARGET), "--corpus", str(corpus),
               "--stages", str(stages), "--target-layers", "4", "--draft-depth", "5",
               "--policies", "eagle3,frspec:K,evospec:K,evospec:K:sync,evospec:K+align", "--sizes", "16,32",
               "--frequencies", str(freq),
               "--prompts", "2", "--temperature", "0,1", "--seed", "3",
               "--prompt-tokens", "16", "--max-new-tokens", "16", "--json", str(out), "--plot", str(tmp_path / "v.png"))
    assert "rejected-choice cov" in proc.stdout and "PROJECTION" in proc.stdout and "K for 95%" in proc.stdout
    rows = json.loads(out.read_text())
    policies = ("full", "eagle3", "frspec:16", "frspec:32", "evospec:16", "evospec:32", "evospec:16:sync", "evospec:32:sync",
                "evospec:16+align", "evospec:32+align")
    assert [(r["domain"], r["temperature"], r["policy"]) for r in rows] == [
        (d, t, p) for d in ("code", "prose") for t in (0.0, 1.0) for p in policies]
    for r in rows:
        full = next(f for f in rows if f["policy"] == "full" and f["domain"] == r["domain"]
                    and f["temperature"] == r["temperature"])
        assert r["share_of_full"] == pytest.approx(r["mean_accepted_length"] / full["mean_accepted_length"])
        assert r["identical_to_plain"] is (True if r["temperature"] == 0 else None) and r["seed"] == 3
        forced = os.environ.get("EVOSPEC_HEAD_KERNEL")  # a small head is not timed: its default kernels
        assert r["head_kernels"] == (f"{forced}/{forced}" if forced else "linear/skinny")
        assert 0 < r["text_coverage"] <= 1 and 0 < r["target_mass"] <= 1 + 1e-6 and r["tokens_per_second"] > 0
        if r["policy"].endswith("+align"):  # replayed as the policy alone; alignment time shows in its column
            base = next(b for b in rows if b["policy"] == r["policy"][: -len("+align")] and b["domain"] == r["domain"]
                        and b["temperature"] == r["temperature"])
            assert r["text_coverage"] == base["text_coverage"] and r["target_mass"] == base["target_mass"]
            assert r["align_ms_per_step"] > 0
        else:
            assert r["align_ms_per_step"] == 0
        parts = (r["retrieval_ms_per_step"], r["plan_ms_per_step"], r["draft_ms_per_step"], r["verify_ms_per_step"],
                 r["align_ms_per_step"])
        assert r["step_ms"] >= sum(parts) * (1 - 1e-9)  # the columns partition part of the step, never more
        if r["policy"] == "full":
            # (that an unchanged set then costs nothing is a count, tested in test_metrics: no rows moved, same plan;
            # full moves the rows outside the drafter's own vocabulary in once per prompt)
            assert r["text_coverage"] == 1.0
            assert r["target_mass"] == pytest.approx(1.0, abs=1e-5)  # every token is in the full set
    sweep = json.loads(out.with_suffix(".sweep.json").read_text())
    assert {(s["domain"], s["temperature"], s["family"]) for s in sweep} == {
        (d, t, f) for d in ("code", "prose") for t in (0.0, 1.0)
        for f in ("frspec:K", "evospec:K", "evospec:K:sync", "evospec:K+align")}
    for s in sweep:
        assert s["sizes"] == [16, 32]
        keeps = [k for k, share in zip(s["sizes"], s["shares"]) if share >= 0.95]
        assert s["smallest_k_95"] == (keeps[0] if keeps else None)
        verify, level = 4 * 1.0 + 4.0, 1.0 + (4.0 if r["policy"] == "eagle3" else 0.5)  # eagle3: 384 rows > 32
        extra = r["retrieval_ms_per_step"] + r["plan_ms_per_step"]  # decoding-thread time, every policy
        assert r["projected_speedup"] == pytest.approx(r["mean_accepted_length"] * verify / (verify + 5 * level + extra))
        assert r["active_size"] <= (384 if r["policy"] == "eagle3" else 32)
    assert (tmp_path / "v.png").read_bytes()[:4] == b"\x89PNG"
    no_valid = run("profile", "vocab", "--bundle", str(torch_bundle), "--target", str(TARGET), "--corpus", str(corpus),
                   "--policies", "eagle3", "--split", "valid", check=False)
    assert no_valid.returncode != 0 and "code/valid does not exist" in no_valid.stderr


def test_text_coverage_counts_true_next_tokens():
    from evospec.eval.replay import text_coverage
    from evospec.runtime.vocab.base import StaticPolicy
    from evospec.runtime.vocab.evospec_policy import EvoSpecPolicy

    policy = StaticPolicy("set", torch.tensor([1, 2, 3]))
    streams = [[9, 9, 1, 2, 7, 3, 8], [1, 5, 5, 2]]  # after 2 context tokens: 1 2 7 3 8 | 5 2
    assert text_coverage(policy, streams, vocab_size=10, prompt_tokens=2) == pytest.approx(4 / 7)

    counts = torch.ones(50)
    counts[:8] = 100  # the core: 0..7
    freq = TokenFrequencies(50, counts, 1, "unit", successors={})
    living = EvoSpecPolicy(10, freq, 50)
    text = [40, 41, 42] * 10  # rare tokens that repeat: only a context-aware set can hold them
    assert text_coverage(living, [text], 50, 3) == 1.0
    assert text_coverage(StaticPolicy("frspec", freq.top(10)), [text], 50, 3) == 0.0


def test_replay_hands_the_targets_top_ids_to_a_policy_that_asks():
    from evospec.eval.replay import ReplayCounts, replay_stream
    from evospec.runtime.vocab.evospec_policy import EvoSpecPolicy
    from evospec.runtime.vocab.evospec_settings import PolicySettings

    counts = torch.ones(50)
    counts[:8] = 100
    freq = TokenFrequencies(50, counts, 1, "unit", successors={})
    text = [1, 2, 3] + [40, 41, 42] * 3
    top = torch.tensor(text[1:])[:, None]  # the target's top 1 at position i is the true token i + 1

    def coverage(target_top: int) -> float:
        policy = EvoSpecPolicy(10, freq, 50, PolicySettings(context=False, corpus_successors=False,
                                                            session_successors=False, target_top=target_top))
        replayed = ReplayCounts()
        replay_stream(policy, text, 50, 3, replayed, top=top)
        return replayed.text_coverage

    assert coverage(0) == 0.0 and coverage(1) == pytest.approx(2 / 3)  # chunks 2 and 3 were the target's top 1


def test_pipelined_policy_is_one_cycle_late_and_deterministic():
    from evospec.runtime.vocab.pipelined import PipelinedPolicy

    class Counting:  # the active set names the number of observations it has seen
        name = "counting"

        def reset(self, prompt_ids):
            self.seen, self.served_log = 0, []

        def served(self, active):
            self.served_log.append(int(active))

        def observe(self, committed, state=None):
            self.seen += 1

        def active_ids(self):
            return torch.tensor([self.seen])

    policy = PipelinedPolicy(Counting())
    for round in range(4):  # a reset starts over; the worker's job starts at the forward (rounds 2, 3) or not
        policy.reset([1, 2])
        used = []
        for cycle in range(6):
            used.append(int(policy.active_ids()))
            if round >= 2:
                policy.start_pending()  # what the decoding loop calls as the target forward begins
            policy.observe([cycle])
        assert used == [0, 0, 1, 2, 3, 4]  # cycle t drafts with what cycle t-2's observation produced
        policy._drain()
        assert policy.inner.served_log == used  # misses are judged against the set each cycle really used
    policy.close()


@pytest.mark.slow  # EvoSpec's greedy exactness stays in the default run (test_evospec_settings.py's combined method)
def test_evospec_policies_decode_exactly(torch_bundle, tmp_path):
    corpus = tmp_path / "c"
    (corpus / "code" / "train").mkdir(parents=True)
    (corpus / "code" / "train" / "a.txt").write_text("def add(a, b):\n    return a + b\n" * 20)
    freq = tmp_path / "f.json"
    run("vocab", "frequencies", "--corpus", str(corpus), "--tokenizer", str(TARGET), "--out", str(freq), "--successors", "4")
    plain = SpeculativeGenerator.from_paths(TARGET, DRAFTER)
    prompt = plain.encode("class Parser:\n    def parse(self, text):\n")
    expected = plain.generate(prompt, DecodeSettings(max_new_tokens=40, use_draft=False)).token_ids
    for spec in ("evospec:48", "evospec:48:sync"):
        generator = SpeculativeGenerator.from_bundle(torch_bundle, TARGET, vocab=spec, frequencies=freq)
        result = generator.generate(prompt, DecodeSettings(max_new_tokens=40, draft_tree="tree"))
        assert result.token_ids == expected, spec
        assert result.stats.rejected_choice_total > 0 and result.stats.retrieval_time_s > 0


def test_dynaspec_clusters_router_and_shortlist(tmp_path):
    from evospec.runtime.vocab.dynaspec import DynaSpecPolicy, Router, cluster_rows, train_router

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=g) * 3
    rows = torch.cat([c + 0.1 * torch.randn(25, 16, generator=g) for c in centres])  # 4 clear groups of 25
    labels = cluster_rows(rows, 4)
    assert all(len(set(labels[25 * i : 25 * (i + 1)].tolist())) == 1 for i in range(4))
    assert len(set(labels.tolist())) == 4
    states = torch.randn(400, 16, generator=g)
    group = (states @ centres.T).argmax(-1)  # the "target" picks a token of the group its state points to
    tokens = torch.tensor([25 * int(c) + int(i) % 25 for i, c in enumerate(group)])
    router = train_router(states, tokens, labels, 100, steps=300, lr=5e-2)
    router.save(tmp_path / "r.safetensors")
    loaded = Router.load(tmp_path / "r.safetensors")
    loaded.backbone_shares = {30: 0.0}  # no frequent core: the routed clusters alone must hold the token
    policy = DynaSpecPolicy(30, 4, loaded, 100)
    policy.reset([])
    right = 0
    for state, token in zip(states[:50], tokens[:50]):
        active = policy.route(state)
        assert active is policy.active_ids()
        assert active.numel() == 30 and len(set(active.tolist())) == 30
        right += int(token) in set(active.tolist())
        policy.observe([0], state)  # observing does not move the routed set
        assert policy.active_ids() is active
    assert right >= 45  # the router sends almost every state to its token's group (chance: 30/100)
    with pytest.raises(SettingsError, match="has 4 clusters"):
        DynaSpecPolicy(30, 8, loaded, 100)
    (tmp_path / "bad.safetensors").write_bytes(b"junk")
    with pytest.raises(SettingsError, match="not a readable router"):
        Router.load(tmp_path / "bad.safetensors")
    with pytest.raises(SettingsError, match="does not exist"):
        Router.load(tmp_path / "none.safetensors")


def test_cli_vocab_dynaspec_then_profile(torch_bundle, tmp_path):
    corpus = tmp_path / "corpus"
    text = "def add(a, b):\n    return a + b\n\nclass Point:\n    x = 1\n"
    for split in ("train", "test"):
        (corpus / "code" / split).mkdir(parents=True)
        for i in range(3):
            (corpus / "code" / split / f"{i}.txt").write_text(text * (4 + i))
    router = tmp_path / "router.safetensors"
    proc = run("vocab", "dynaspec", "--bundle", str(torch_bundle), "--target", str(TARGET), "--corpus", str(corpus),
               "--clusters", "8", "--tokens", "512", "--out", str(router))
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["clusters"] == 8 and report["positions"] > 100 and report["heldout_positions"] > 0
    assert 0 <= report["heldout_cluster_top1"] <= report["heldout_cluster_top8"] <= 1
    assert "held-out next tokens in the shortlist" in proc.stderr
    out = tmp_path / "v.json"
    run("profile", "vocab", "--bundle", str(torch_bundle), "--target", str(TARGET), "--corpus", str(corpus),
        "--policies", "dynaspec:64:8", "--router", str(router), "--prompts", "1", "--prompt-tokens", "16",
        "--max-new-tokens", "12", "--json", str(out))
    rows = [r for r in json.loads(out.read_text()) if r["policy"] == "dynaspec:64:8"]  # beside the full-vocabulary rows
    assert rows and all(r["identical_to_plain"] and r["active_size"] == 64 for r in rows)
    common = ["--target", str(TARGET), "--corpus", str(corpus), "--prompts", "1", "--prompt-tokens", "16",
              "--max-new-tokens", "12", "--router", str(router)]
    benched = tmp_path / "b.json"
    run("bench", "--bundle", str(torch_bundle), "--vocab", "dynaspec:64:8", *common, "--json", str(benched))
    rows = [r for r in json.loads(benched.read_text()) if r["method"] != "plain"]
    assert rows and all(r["identical_to_plain"] for r in rows)  # bench takes the router too
    bad = run("bench", "--drafter", str(DRAFTER), *common, check=False)
    assert bad.returncode == 2 and "need --bundle" in bad.stderr


def test_bundle_carries_the_statistical_index(tmp_path):
    from evospec.core.errors import BundleError, CompileError

    freq = tmp_path / "f.json"
    counts = torch.ones(512, dtype=torch.long)
    counts[:40] = 50
    TokenFrequencies(512, counts, 3, "unit", successors={5: [6, 7]}).save(freq)
    out = tmp_path / "bundle"
    manifest = compile_bundle(TARGET, DRAFTER, out, CompileSettings(backend="torch", buckets=(64, 512), index_dims=0,
                                                                    frequencies=str(freq)))
    assert manifest["statistical_index"]["successors_per_token"] == 2 and "index/frequencies.json" in manifest["files"]
    generator = SpeculativeGenerator.from_bundle(out, TARGET, vocab="evospec:64")  # no --frequencies: the bundle's
    prompt = generator.encode("def f(x):\n    return")
    plain = generator.generate(prompt, DecodeSettings(max_new_tokens=16, use_draft=False)).token_ids
    assert generator.generate(prompt, DecodeSettings(max_new_tokens=16)).token_ids == plain
    (out / "index" / "frequencies.json").write_text((out / "index" / "frequencies.json").read_text().replace("unit", "UNIT"))
    with pytest.raises(BundleError, match="frequencies.json"):
        SpeculativeGenerator.from_bundle(out, TARGET, vocab="evospec:64")
    TokenFrequencies(600, torch.ones(600, dtype=torch.long), 1, "other", successors={}).save(freq)
    with pytest.raises(CompileError, match="counts 600 token ids but the target has 512"):
        compile_bundle(TARGET, DRAFTER, tmp_path / "b2", CompileSettings(backend="torch", buckets=(512,), index_dims=0,
                                                                        frequencies=str(freq)))
    assert not (tmp_path / "b2").exists()


def test_profile_vocab_checks_every_domains_split_before_decoding(tmp_path):
    """A domain without the chosen split (the topic-switch domain has no valid split) is an error at once,
    not after hours of decoding the domains before it."""
    from evospec.data.corpus import CorpusError
    from evospec.eval.bench import BenchSettings
    from evospec.eval.profile_vocab import run_profile_vocab

    for domain, splits in (("code", ("test", "valid")), ("switch", ("test",))):
        for split in splits:
            (tmp_path / domain / split).mkdir(parents=True)
            (tmp_path / domain / split / "a.txt").write_text("def f(x):\n    return x\n")

    class NoDecoding:
        def __getattr__(self, name):
            raise AssertionError(f"the generator was used ({name}) before the corpus was checked")

    with pytest.raises(CorpusError, match=r"switch/valid does not exist.*leave the domain out with --domains"):
        run_profile_vocab(NoDecoding(), str(tmp_path), ["full"], None, None, [DecodeSettings()],
                          BenchSettings(split="valid"))


def test_pipelined_worker_runs_its_torch_ops_on_one_thread_and_leaves_the_callers_alone():
    """The worker's jobs overlap the target forward: a job that split its ops over an OpenMP team of its own
    made the forward's threads wait on two cores. Its thread counts one torch thread; the caller's count and the
    count a thread started later begins with are unchanged."""
    import ctypes
    import threading

    from evospec.runtime.vocab.pipelined import PipelinedPolicy

    if not hasattr(ctypes.CDLL(None), "omp_set_num_threads"):
        pytest.skip("this torch build loads no OpenMP runtime: there is no team to keep the worker out of")

    class Recording:
        name = "recording"

        def reset(self, prompt_ids):
            self.threads = []

        def observe(self, committed, state=None):
            self.threads.append(torch.get_num_threads())

        def active_ids(self):
            return torch.tensor([0])

    before = torch.get_num_threads()
    policy = PipelinedPolicy(Recording())
    policy.reset([1])
    for cycle in range(3):
        policy.active_ids()
        policy.observe([cycle])
    policy.close()
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    assert policy.inner.threads == [1, 1, 1]
    assert torch.get_num_threads() == before and later == [before]
    if before == 1:
        pytest.skip("torch runs one thread here: the caller's count cannot show it was left alone")


def test_a_policys_first_set_is_laid_out_in_its_own_order_and_later_sets_move_only_what_changed(torch_bundle):
    """The drafter starts over its own vocabulary. A policy's first set is laid out afresh, its ids in its own order
    (a living vocabulary's core in the leading columns, which the packed head keeps packed), and later sets keep
    every retained id in its column. Laid out over the own vocabulary's columns instead, the core sat scattered
    among columns that change every step (runtime/compiled_drafter.py, ``lay_out_next``)."""

    class Shifting:  # a fixed core listed first, a tail that moves every step
        name = "shifting"

        def __init__(self) -> None:
            self.sets: list[torch.Tensor] = []

        def reset(self, prompt_ids):
            self.step = 0

        def active_ids(self):
            core = torch.arange(300, 0, -1)  # not the own vocabulary's order
            ids = torch.cat((core, 400 + (torch.arange(50) + 7 * self.step) % 100))
            self.sets.append(ids)
            return ids

        def observe(self, committed, state=None):
            self.step += 1

    generator = SpeculativeGenerator.from_bundle(torch_bundle, TARGET)
    drafter = generator.drafter
    generator.policy = policy = Shifting()
    prompt = generator.encode("def main(")
    generator.generate(prompt, DecodeSettings(max_new_tokens=12, draft_tree="chain", draft_depth=3))
    first = policy.sets[0]
    assert len(policy.sets) > 2
    assert torch.equal(drafter.plan.ids[:300], first[:300])  # the core in its own order, in front, to the end
    generator.generate(prompt, DecodeSettings(max_new_tokens=6, draft_tree="chain", draft_depth=3))
    assert torch.equal(drafter.plan.ids[:300], first[:300])  # laid out once per policy, not once per prompt


def test_replay_by_kind_replays_a_policy_whose_set_depends_on_the_request_as_each_kind():
    """``profile vocab``'s replayed columns (text coverage, target mass) for a policy whose set depends on the kind of
    request (``decoding``: EvoSpec's fill with a router) come from a replay as that kind: here the greedy set holds
    every token and the sampled one a single id. A policy without ``decoding`` replays once for both kinds."""
    from evospec.eval.replay import replay_by_kind

    generator = SpeculativeGenerator.from_paths(TARGET)
    vocab = generator.target.model.config.vocab_size

    class ByKind:
        name = "by-kind"
        greedy = None

        def decoding(self, greedy):
            self.greedy = greedy

        def reset(self, prompt_ids):
            pass

        def active_ids(self):
            return torch.arange(vocab) if self.greedy else torch.tensor([0])

        def observe(self, committed, state=None):
            pass

    class Everything:  # no ``decoding``: the same set for every request
        name = "everything"

        def reset(self, prompt_ids):
            pass

        def active_ids(self):
            return torch.arange(vocab)

        def observe(self, committed, state=None):
            pass

    streams = [list(range(5, 45)), list(range(60, 100))]
    counts = replay_by_kind(generator, {"kind": ByKind(), "all": Everything()}, streams, vocab, 8, None, [0.0, 1.0], 1.0)
    assert counts[True]["kind"].text_coverage == 1.0 and counts[False]["kind"].text_coverage == 0.0
    assert counts[True]["kind"].target_mass(0.0) == 1.0 and counts[True]["kind"].target_mass(1.0) is None
    assert counts[False]["kind"].target_mass(1.0) < 0.05 and counts[False]["kind"].target_mass(0.0) is None
    assert counts[True]["all"].text_coverage == counts[False]["all"].text_coverage == 1.0
    alone = replay_by_kind(generator, {"all": Everything()}, streams, vocab, 8, None, [0.0, 1.0], 1.0)
    assert alone[True] is alone[False] and alone[True]["all"].target_mass(1.0) == pytest.approx(1.0)


def test_starting_the_policys_job_counts_as_retrieval_not_as_the_targets_pass(torch_bundle):
    """The loop starts a pipelined policy's job just before the target's pass; that call's time on the decoding thread
    is retrieval (it once landed in the target's column, flattering the time outside the forwards)."""
    import time as time_module

    generator = SpeculativeGenerator.from_bundle(torch_bundle, TARGET, vocab="full")  # any policy: the loop asks each
    policy = generator.policy
    assert policy is not None
    starts = []

    def slow_start():  # what a job start that loses its core for 30 ms looks like from the loop
        time_module.sleep(0.03)
        starts.append(1)

    policy.start_pending = slow_start
    prompt = generator.encode("def add(a, b):\n    return a + b\n")
    stats = generator.generate(prompt, DecodeSettings(max_new_tokens=12, draft_tree="chain")).stats
    assert len(starts) == stats.steps > 0
    assert stats.retrieval_time_s >= 0.03 * stats.steps
    assert stats.target_time_s < 0.03 * stats.steps  # a tiny target's passes: well under a sleep each
    assert stats.verify_time_s < stats.target_time_s + stats.verdict_time_s + stats.cache_time_s + 1e-6
