"""The float32 sampling path: the target's law computed in the dtype transformers samples in, drawn in
two levels (blocks of weights, then a weight inside the drawn block), and verification's residual
updated in place on the fresh row it is handed. Every draw must follow the law exactly."""

from __future__ import annotations

import torch

from evospec.runtime import sampling
from evospec.runtime.sampling import sample, sampling_probs, sampling_weights
from evospec.runtime.tree import DraftTree
from evospec.runtime.verify import verify_sampling

from .test_sampling_exactness import chi_square_ok


def draw_counts(weights: torch.Tensor, n: int, seed: int = 0) -> dict[int, int]:
    g = torch.Generator().manual_seed(seed)
    counts: dict[int, int] = {}
    for _ in range(n):
        token = sample(weights, g)
        counts[token] = counts.get(token, 0) + 1
    return counts


def test_two_level_draws_follow_the_weights_across_block_edges(monkeypatch):
    weights = torch.tensor([0.0, 0.5, 0.0, 0.25, 0.25, 0.0, 1.0, 0.0, 0.0])  # a zero block at the end
    expected = {i: float(w) / float(weights.sum()) for i, w in enumerate(weights)}
    for block in (1, 2, 4, 1024):
        monkeypatch.setattr(sampling, "SAMPLE_BLOCK", block)
        counts = draw_counts(weights, 8_000, seed=block)
        ok, stat, critical = chi_square_ok(counts, expected, 8_000)
        assert ok, (block, counts, stat, critical)  # zero weights are never drawn (``ok`` checks it)


def test_a_single_weight_is_drawn_wherever_it_sits():
    for index in (0, 1023, 1024, 151_850):
        weights = torch.zeros(151_851)
        weights[index] = 1e-30  # tiny: only the search, not the magnitude, decides
        assert set(draw_counts(weights, 20)) == {index}


def test_float32_logits_give_float32_weights_up_to_their_total():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1000, generator=g) * 3
    for temperature, top_p in ((1.0, 1.0), (0.7, 0.9), (1.3, 0.5)):
        weights, total = sampling_weights(logits, temperature, top_p)
        assert weights.dtype == torch.float32 and sampling_probs(logits, temperature, top_p).dtype == torch.float32
        torch.testing.assert_close(weights / total, sampling_probs(logits, temperature, top_p))
        kept = weights > 0
        torch.testing.assert_close(weights[kept], torch.softmax(logits / temperature, dim=-1)[kept], rtol=0, atol=0)


def test_float32_top_p_verification_emits_the_target_law():
    """A chain of two sampled nodes over head columns, float32 logits as a skinny head returns them (a
    transposed view) and top-p: the first emitted token follows sampling_probs of the root row."""
    g = torch.Generator().manual_seed(3)
    vocab = 40
    logits = (torch.randn(vocab, 3, generator=g) * 2).T  # [3, V], column-major
    columns = torch.tensor([5, 7, 11, 2, 30, 0])
    q = torch.softmax(torch.randn(2, columns.numel(), generator=g), dim=-1)
    before = logits.clone()
    p = sampling_probs(logits[0], 1.0, 0.9)
    n, counts = 10_000, {}
    for _ in range(n):
        first = int(columns[int(torch.multinomial(q[0], 1, generator=g))])
        second = int(columns[int(torch.multinomial(q[1], 1, generator=g))])
        tree = DraftTree(tokens=torch.tensor([first, second]), parents=torch.tensor([-1, 0]),
                         depths=torch.tensor([1, 2]), proposals=q, proposal_ids=columns)
        verdict = verify_sampling(tree, logits, 1.0, 0.9, g)
        token = first if verdict.accepted_nodes else verdict.bonus
        counts[token] = counts.get(token, 0) + 1
    ok, stat, critical = chi_square_ok(counts, dict(enumerate(p.tolist())), n)
    assert ok, (counts, stat, critical)
    assert torch.equal(logits, before)  # the residual is updated in place, never in the target's logits
