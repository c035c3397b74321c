"""Sampled drafts carry the drafter's distribution over its head columns and the target ids of those
columns. A padded active set maps its padding columns to token 0 (bias -inf, so q = 0 there): token 0's
own q must not be lost under the padding's zeros, or verification would accept token 0 whenever the target
gives it any mass."""

from __future__ import annotations

import torch

from evospec.runtime.tree import DraftTree
from evospec.runtime.verify import verify_sampling


def one_node_tree(q: torch.Tensor, columns: torch.Tensor, token: int) -> DraftTree:
    return DraftTree(tokens=torch.tensor([token]), parents=torch.tensor([-1]), depths=torch.tensor([1]),
                     proposals=q[None], proposal_ids=columns)


def test_token_zero_keeps_its_q_beside_padding_columns():
    logits = torch.log(torch.tensor([0.1, 0.5, 0.2, 0.2], dtype=torch.float64))  # the target: p(0) = 0.1
    q = torch.tensor([0.7, 0.3, 0.0, 0.0], dtype=torch.float64)  # head columns: token 0, token 1, two padding
    columns = torch.tensor([0, 1, 0, 0])
    rows = torch.stack((logits, logits))
    trials, accepted, bonus_zero = 4000, 0, 0
    generator = torch.Generator().manual_seed(0)
    for _ in range(trials):
        verdict = verify_sampling(one_node_tree(q, columns, 0), rows, 1.0, 1.0, generator)
        accepted += len(verdict.accepted_nodes)
        bonus_zero += int(not verdict.accepted_nodes and verdict.bonus == 0)
    rate = accepted / trials  # min(1, p/q) = 0.1 / 0.7
    assert abs(rate - 0.1 / 0.7) < 4 * (0.143 * 0.857 / trials) ** 0.5, rate
    assert bonus_zero == 0  # the residual max(p - q, 0) has no mass on token 0


def test_sparse_and_dense_proposals_verify_alike():
    """The same draws give the same verdicts whether q is spread over the target vocabulary or kept per column."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 50, generator=g, dtype=torch.float64)
    columns = torch.tensor([3, 9, 17, 40, 0, 0])
    q = torch.softmax(torch.randn(2, 6, generator=g, dtype=torch.float64), dim=-1)
    q[:, 4:] = 0.0
    q = q / q.sum(dim=-1, keepdim=True)
    dense = torch.zeros(2, 50, dtype=torch.float64).index_add_(1, columns, q)
    for seed in range(200):
        tokens = torch.tensor([9, 40])
        base = dict(tokens=tokens, parents=torch.tensor([-1, 0]), depths=torch.tensor([1, 2]))
        a = verify_sampling(DraftTree(**base, proposals=q, proposal_ids=columns), logits, 0.8, 0.9,
                            torch.Generator().manual_seed(seed))
        b = verify_sampling(DraftTree(**base, proposals=dense), logits, 0.8, 0.9, torch.Generator().manual_seed(seed))
        assert (a.accepted_nodes, a.bonus) == (b.accepted_nodes, b.bonus)
