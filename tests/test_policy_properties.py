"""Every vocabulary policy hands the drafter exactly K distinct in-range ids, at reset and after any
sequence of observations: fewer would make a ``frspec:K`` vs ``evospec:K`` comparison unfair,
duplicates would waste gathered columns, and an out-of-range id would gather a row that does not exist.

Inputs are drawn adversarially: frequency tables with zeros and ties, successor lists that name
core tokens, prompts and committed tokens anywhere in the vocabulary, drafter states or none, a
semantic index, and K from 2 up to the whole vocabulary.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evospec.runtime.vocab import PolicyInputs, make_policy
from evospec.runtime.vocab.frequencies import TokenFrequencies

HIDDEN = 8  # the drafter state size the router and the semantic index read


@st.composite
def worlds(draw):
    """A vocabulary, the drafter's rows, a frequency file's content, K, C, a prompt and observations."""
    vocab = draw(st.integers(4, 80))
    token = st.integers(0, vocab - 1)
    draft_vocab_ids = sorted(draw(st.sets(token, min_size=1, max_size=vocab)))
    counts = draw(st.lists(st.integers(0, 3), min_size=vocab, max_size=vocab))  # many zeros and ties
    successors = draw(st.dictionaries(token, st.lists(token, max_size=5, unique=True), max_size=vocab))
    k = draw(st.integers(2, vocab))
    clusters = draw(st.integers(1, min(vocab, 6)))
    prompt = draw(st.lists(token, max_size=12))
    steps = draw(st.lists(st.tuples(st.lists(token, min_size=1, max_size=6), st.booleans()), max_size=25))
    seed = draw(st.integers(0, 2**16))
    return vocab, draft_vocab_ids, counts, successors, k, clusters, prompt, steps, seed


def router_file(path: Path, vocab: int, clusters: int, k: int, share: float, g: torch.Generator) -> int:
    """A router trained briefly on random states (what it routes to does not matter here, only how
    many), with ``share`` of K as its backbone; returns its number of clusters."""
    from evospec.runtime.vocab.dynaspec import cluster_rows, train_router

    labels = cluster_rows(torch.randn(vocab, HIDDEN, generator=g), clusters)
    states = torch.randn(64, HIDDEN, generator=g)
    tokens = torch.randint(vocab, (64,), generator=g)
    router = train_router(states, tokens, labels, vocab, hidden=16, steps=5)
    router.backbone_shares = {k: share}
    router.save(path)
    return router.clusters


def semantic_index(vocab: int, g: torch.Generator):
    from evospec.runtime.vocab.semantic import SemanticIndex, build_index, projection

    rows = torch.randn(vocab, HIDDEN, generator=g)
    proj = projection(rows, 4)
    return SemanticIndex(build_index(rows, proj), proj, vocab)


def check(ids: torch.Tensor, k: int, vocab: int, spec: str, when: str) -> None:
    assert ids.ndim == 1 and ids.dtype == torch.long, (spec, when, ids.shape, ids.dtype)
    assert ids.numel() == k, (spec, when, f"{ids.numel()} ids, expected {k}")
    assert torch.unique(ids).numel() == k, (spec, when, "duplicate ids", sorted(ids.tolist()))
    assert int(ids.min()) >= 0 and int(ids.max()) < vocab, (spec, when, "id outside the vocabulary")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(world=worlds(), semantic=st.booleans(), backbone=st.sampled_from([0.0, 0.3, 0.5, 1.0]))
def test_every_policy_serves_exactly_k_distinct_in_range_ids(world, semantic, backbone):
    vocab, draft_vocab_ids, counts, successors, k, clusters, prompt, steps, seed = world
    g = torch.Generator().manual_seed(seed)
    from evospec.runtime.vocab.mass_index import MassIndex

    mass = MassIndex.build(torch.randn(vocab, HIDDEN, generator=g), min(8, vocab), iters=3)  # evospec:K's fill
    inputs = PolicyInputs(vocab, torch.tensor(draft_vocab_ids), semantic_index(vocab, g) if semantic else None, mass)
    with tempfile.TemporaryDirectory() as tmp:
        freq = Path(tmp) / "f.json"
        TokenFrequencies(vocab, torch.tensor(counts, dtype=torch.long), 1, "hypothesis", successors).save(freq)
        router = Path(tmp) / "r.safetensors"
        clusters = router_file(router, vocab, clusters, k, backbone, g)
        specs = {"full": vocab, "eagle3": len(draft_vocab_ids), f"frspec:{k}": k, f"evospec:{k}": k,
                 f"evospec:{k}:sync": k, f"evospec:{k}:no-fresh": k, f"evospec:{k}:target-top-256": k,
                 f"evospec:{k}:frequency-fill": k, f"evospec:{k}:frequency-fill:sync": k,
                 f"dynaspec:{k}:{clusters}": k}
        if semantic:  # routing reads the semantic index
            specs[f"evospec:{k}:route-semantic-1024"] = k
        for spec, size in specs.items():
            policy = make_policy(spec, inputs, frequencies=freq, router=router)
            try:
                for attempt in range(2):  # a second reset must start over just as cleanly
                    policy.reset(prompt)
                    check(policy.active_ids(), size, vocab, spec, f"reset {attempt}")
                    for i, (committed, with_state) in enumerate(steps):
                        state = torch.randn(HIDDEN, generator=g) if with_state else None
                        if hasattr(policy, "route") and state is not None:  # routed: chosen from the fresh state
                            check(policy.route(state), size, vocab, spec, f"route {i}")
                        if getattr(policy, "target_top", 0):  # verification feedback: the target's top ids
                            policy.observe(committed, state, torch.randint(vocab, (len(committed), 3), generator=g))
                        else:
                            policy.observe(committed, state)
                        check(policy.active_ids(), size, vocab, spec, f"after observe {i}: {committed}")
            finally:
                if hasattr(policy, "close"):
                    policy.close()


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_patched_takes_the_ids_isin_would(data):
    """``patched`` tests membership by a mask over the ids (the worker computes it); it must pick exactly what
    the ``torch.isin`` definition picks, with the mask given or not, for extra ids inside or beyond the set's range."""
    from evospec.runtime.vocab.pipelined import membership, patched

    vocab = data.draw(st.integers(2, 60))
    base = torch.tensor(data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=vocab, unique=True)))
    extra = torch.tensor(data.draw(st.lists(st.integers(0, vocab + 20), max_size=30, unique=True)), dtype=torch.long)
    room = data.draw(st.integers(0, base.numel()))
    new = extra[~torch.isin(extra, base)][:room]
    expected = base if new.numel() == 0 else torch.cat((base[: base.numel() - new.numel()], new))
    assert torch.equal(patched(base, extra, room), expected)
    assert torch.equal(patched(base, extra, room, membership(base)), expected)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_last_unlike_drops_the_last_entries_that_are_not_fresh(data):
    """The fresh patch makes room by dropping the last entries past the core that are not fresh themselves (the
    last fresh ones only when too few are not): compared with a scan over the whole set, for any set and count."""
    from evospec.runtime.vocab.pipelined import last_unlike

    vocab = data.draw(st.integers(2, 60))
    base = data.draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=vocab, unique=True))
    avoid = data.draw(st.lists(st.integers(0, vocab + 5), max_size=12, unique=True))
    start = data.draw(st.integers(0, len(base) - 1))
    count = data.draw(st.integers(1, len(base) - start))
    unlike = [p for p in range(start, len(base)) if base[p] not in avoid]
    alike = [p for p in range(start, len(base)) if base[p] in avoid]
    expected = unlike[len(unlike) - count:] if len(unlike) >= count else unlike + alike[len(alike) - (count - len(unlike)):]
    got = last_unlike(torch.tensor(base), torch.tensor(avoid, dtype=torch.long), count, start)
    assert sorted(got.tolist()) == sorted(expected)
