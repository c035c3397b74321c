"""``TargetRow`` decides acceptances and draws tokens without the top-p nucleus where bounds allow.

Every decision it makes must be the exact one, and every draw must follow the exact law (or its residual after
a rejected child). Checked here: decisions and nucleus memberships are the exact answer or "unknown", over rows
with ties, float32 and float64, temperatures and top-p values, thresholds right at the boundary; draws against
the law built by ``sampling_weights`` by a chi-square test that a draw ignoring the nucleus fails; and the
shortcuts must fire (or they save nothing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.runtime import target_law
from evospec.runtime.sampling import sampling_weights
from evospec.runtime.target_law import Proposal, TargetRow
from evospec.runtime.tree import DraftTree
from .test_sampling_exactness import chi_square_ok

rows = st.builds(
    lambda values, scale, dtype: (torch.tensor(values, dtype=torch.float64) * scale).to(dtype),
    st.lists(st.integers(-6, 6), min_size=2, max_size=24),  # integer steps: many exact ties
    st.sampled_from([0.25, 1.0, 2.5]),
    st.sampled_from([torch.float32, torch.float64]),
)


def exact_law(logits, temperature, top_p):
    weights, total = sampling_weights(logits, temperature, top_p)
    return weights.double().numpy(), float(total)


@settings(max_examples=150, deadline=None)
@given(logits=rows, temperature=st.sampled_from([0.7, 1.0, 1.5]), top_p=st.sampled_from([0.3, 0.6, 0.9, 0.97, 1.0]),
       data=st.data())
def test_decisions_and_memberships_are_exact_or_unknown(logits, temperature, top_p, data):
    weights, total = exact_law(logits, temperature, top_p)
    for x in range(logits.numel()):
        law = TargetRow(logits, temperature, top_p)
        if top_p < 1.0:
            assert law._in_nucleus(x) in (None, bool(weights[x] > 0))
        # thresholds at, just inside and just outside the exact test's boundary, and random ones
        boundary = weights[x] / total
        threshold = data.draw(st.sampled_from([0.0, boundary, boundary * (1 - 1e-6), boundary * (1 + 1e-6),
                                               data.draw(st.floats(0.0, 1.5))]))
        assert TargetRow(logits, temperature, top_p).decide(x, threshold) in (None, threshold * total < weights[x])


@settings(max_examples=120, deadline=None)
@given(logits=rows, temperature=st.sampled_from([0.7, 1.0]), top_p=st.sampled_from([0.3, 0.6, 0.9]), data=st.data())
def test_one_row_asked_many_times_stays_exact(logits, temperature, top_p, data):
    """Answers a row remembers (memberships settled by probability, the kept mass bound they tighten) must leave
    every later membership and decision exact or unknown, whatever order the questions come in."""
    weights, total = exact_law(logits, temperature, top_p)
    law = TargetRow(logits, temperature, top_p)
    for x in data.draw(st.lists(st.integers(0, logits.numel() - 1), min_size=1, max_size=12)):
        assert law._in_nucleus(x) in (None, bool(weights[x] > 0))
        boundary = weights[x] / total
        threshold = data.draw(st.sampled_from([boundary, boundary * (1 - 1e-6), boundary * (1 + 1e-6),
                                               data.draw(st.floats(0.0, 1.5))]))
        assert law.decide(x, threshold) in (None, threshold * total < weights[x])
        assert not law._filtered


def test_a_wide_row_settles_likely_tokens_by_gathering_and_remembers_them():
    """A 151k-token row: a likely token's membership is gathered (few tokens at least as likely), a less likely
    one's masked; once a token is kept, more likely ones need no pass, and the bound on the kept mass tightens."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(151_851, generator=g) * 2
    weights, total = exact_law(logits, 1.0, 0.9)
    law = TargetRow(logits, 1.0, 0.9)
    order = np.argsort(-law._softmax)
    passes = []
    original = law._mass_below
    law._mass_below = lambda s: passes.append(s) or original(s)
    middle, likely = int(order[5000]), int(order[3])
    assert law._in_nucleus(middle) is bool(weights[middle] > 0) is True
    high = law._kept_high
    softmax_total = law.total
    assert high < softmax_total - law._limit + 2 * float(law._softmax[middle]) < softmax_total  # the bound on K tightened
    assert law._in_nucleus(likely) is True and len(passes) == 1  # more likely than a kept token: no pass
    assert law._kept_low <= total <= high  # the nucleus's kept mass lies inside the tightened bounds


def test_decisions_are_mostly_made_without_the_nucleus():
    g = torch.Generator().manual_seed(0)
    made = asked = 0
    for _ in range(200):
        logits = torch.randn(300, generator=g) * 3
        law = TargetRow(logits, 1.0, 0.9)
        x = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=g))
        decided = law.decide(x, float(torch.rand(1, generator=g)) * 0.5)
        asked, made = asked + 1, made + (decided is not None)
        assert not law._filtered, "deciding must not build the nucleus"
    assert made > 0.9 * asked, (made, asked)


def test_draws_mostly_skip_the_nucleus():
    g = torch.Generator().manual_seed(1)
    fallbacks = 0
    for _ in range(300):
        law = TargetRow(torch.randn(2000, generator=g) * 3, 1.0, 0.9)
        law.draw(g)
        fallbacks += law.fallbacks
    assert fallbacks < 30, fallbacks


def residual_law(weights, total, q):
    r = np.maximum(weights - total * q, 0.0)
    return r / r.sum()


# float32 at top-p 0.5: the boundary falls between the tied tokens 1 and 6 (the nucleus keeps 6, the later index);
# float64 at 0.8: no tie at the boundary (float64 rows take the slow exact path in tests only, so it must be rare)
CASES = [pytest.param(torch.float32, 0.5, id="float32-top-p-0.5-tie"), pytest.param(torch.float64, 0.8, id="float64-top-p-0.8"),
         pytest.param(torch.float64, 1.0, id="no-top-p")]


@pytest.mark.parametrize(("dtype", "top_p"), CASES)
@pytest.mark.parametrize("proposal", ["none", "point", "dense", "columns"])
def test_draws_follow_the_law_and_its_residual(dtype, top_p, proposal):
    logits = torch.tensor([2.0, 1.5, 0.2, -0.5, 1.0, 0.0, 1.5, -2.0], dtype=dtype)
    weights, total = exact_law(logits, 1.0, top_p)
    q_dense = np.array([0.05, 0.5, 0.0, 0.2, 0.25, 0.0, 0.0, 0.0])
    tree = DraftTree(tokens=torch.tensor([1]), parents=torch.tensor([-1]), depths=torch.tensor([1]))
    if proposal == "point":
        expected = residual_law(weights, total, np.eye(8)[1])
    elif proposal == "dense":
        tree.proposals = torch.tensor(q_dense)[None]
        expected = residual_law(weights, total, q_dense)
    elif proposal == "columns":  # padding columns repeat id 0 with q = 0; token 0's own q must count
        tree.proposals = torch.tensor([[0.5, 0.05, 0.2, 0.25, 0.0, 0.0]])
        tree.proposal_ids = torch.tensor([1, 0, 3, 4, 0, 0])
        expected = residual_law(weights, total, q_dense)
    else:
        expected = weights / total
    g = torch.Generator().manual_seed(5)
    n, counts, fallbacks, shortcuts = 20_000, {}, 0, 0
    for _ in range(n):
        law = TargetRow(logits, 1.0, top_p)
        token = law.draw(g, None if proposal == "none" else Proposal(tree, 0, law.dtype))
        counts[token] = counts.get(token, 0) + 1
        fallbacks, shortcuts = fallbacks + law.fallbacks, shortcuts + law.shortcuts
    ok, stat, critical = chi_square_ok(counts, dict(enumerate(expected.tolist())), n)
    assert ok, (counts, expected, stat, critical)
    if top_p < 1.0:  # even where the boundary falls on a tie (proposals of tokens 1 and 6 need the nucleus)
        assert shortcuts > n // 4, (shortcuts, fallbacks)


def test_a_draw_that_ignores_the_nucleus_fails_the_same_test(monkeypatch):
    """Treating every proposed token as kept draws from the softmax: the chi-square above must see it."""
    monkeypatch.setattr(TargetRow, "_in_nucleus", lambda self, y: True)
    logits = torch.tensor([2.0, 1.5, 0.2, -0.5, 1.0, 0.0, 1.5, -2.0], dtype=torch.float64)
    weights, total = exact_law(logits, 1.0, 0.8)
    g = torch.Generator().manual_seed(5)
    counts = {}
    for _ in range(40_000):
        token = TargetRow(logits, 1.0, 0.8).draw(g)
        counts[token] = counts.get(token, 0) + 1
    assert not chi_square_ok(counts, dict(enumerate((weights / total).tolist())), 40_000)[0]


def test_slack_covers_two_summation_orders():
    """The slack exceeds what reordering a float64 sum of a 151k-token row can change, by a wide margin."""
    assert target_law.SUM_SLACK > 151_851 * 2.0**-53 * 10
