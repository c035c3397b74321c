"""Draft trees for sampling (temperature > 0): each node's children drawn from the drafter's q without
replacement, verified by recursive rejection sampling, so a sibling accepts where the last one was rejected.

A top-k tree's children are fixed tokens, so verification must treat each as a point mass: the first child is
accepted with probability p(x), the target's probability for it. Where the target's law is flat (a small model
at T = 1), p(x) of the likeliest token is small while the drafter's q and the target's p may still overlap
well: on the medium pair at T = 1 a top-2 tree of 10 nodes accepted its first level in 4% of steps (tau 1.05)
where a sampled chain accepted 54% (tau 1.98).

Here child i of a node is the i-th draw without replacement from q at that node: x_1 ~ q, x_2 ~ q with x_1
removed and renormalised (q_2), and so on. Verification tries them in order with ``proposals[i] = q_i``:
accept x_i with probability min(1, r_i(x_i) / q_i(x_i)), else r_{i+1} = norm(max(r_i - q_i, 0)); after the last,
the bonus is drawn from the residual. That is ``verify.verify_sampling`` unchanged, given each child's own q_i.
It emits the target's law exactly: each try is one rejection step against the current residual with a proposal
drawn from its own law (Sequoia, Chen et al. 2024, sampling without replacement; Recursive Speculative Decoding,
Jeon et al. 2024); tests/test_sampling_exactness.py checks it.

What may decide the tree's shape: whether a node is *in* the tree must not depend on its own token or on the
tokens of later siblings (they depend on it), or verification would see x_i drawn from q_i restricted to
draws the rule liked while it divides by q_i. Whether a node is *expanded* may depend on its own token: its
children are drawn from q at its context whatever it is, and the token after it follows the target's law
through them or through the bonus alike. So: every drawn child is kept (a node's children are its first c
draws, c fixed by the budget's room), and the frontier of each level is the nodes verification reaches most
often: those whose path has the fewest later draws (a node's first draw is tried first; the all-first path is
the sampled chain, so the tree holds it), then by cumulative draft log-probability. Ranking by log-probability
alone, as EAGLE's tree does, often left the first draw unexpanded when its sibling was likelier, and cut the
chain short: tau 2.12-2.29 against the chain's 2.74 (law, T = 1). The budget spreads over the depth:
``per_level`` frontier nodes a level.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from evospec.runtime.drafter import DrafterKVCache, Eagle3Drafter
from evospec.runtime.sampling import sample
from evospec.runtime.tree import DraftRequest, DraftTree, with_proposals


def draws_without_replacement(q: torch.Tensor, count: int, generator: torch.Generator
                              ) -> tuple[list[int], torch.Tensor]:
    """``count`` (at most the columns with mass) draws from ``q`` [Vd] without replacement, in draw order, and
    the distribution each was drawn from ([count, Vd], float64, each normalised): q, then q without the first
    draw renormalised, and so on."""
    weights = q.detach().to("cpu", torch.float64)
    count = min(count, int(torch.count_nonzero(weights)))
    laws = weights.repeat(count, 1)  # row i: q without draws 0..i-1, renormalised below
    ids: list[int] = []
    for i in range(count):
        row = laws[i]
        row[ids] = 0.0
        row /= row.sum()
        ids.append(sample(row, generator))
    return ids, laws


def frontier_per_level(req: DraftRequest) -> int:
    """Nodes expanded per level past the first: the budget left after the root's children, spread over the
    remaining depth (at least one, at most the width: the drafter's scratch holds ``width`` slots a level)."""
    if req.depth <= 1:
        return 0
    return max(1, min(req.width, (req.budget - req.width) // ((req.depth - 1) * req.width)))


@torch.no_grad()
def draft_sampled_tree(drafter: Eagle3Drafter, cache: DrafterKVCache, req: DraftRequest,
                       generator: torch.Generator) -> DraftTree:
    """A tree for ``req`` (temperature > 0; width > 1 children a node, at most ``budget`` nodes) whose children
    carry their laws (``DraftTree.proposals``). ``req.costs`` is not used: a value rule would keep or cut nodes
    by their own draws."""
    req = dataclasses.replace(req, width=min(req.width, req.logits.shape[-1]))  # a living set can be narrower
    device, w = req.hidden.device, req.width
    tokens: list[int] = []  # draft ids
    parents: list[int] = []
    depths: list[int] = []
    scores: list[float] = []  # cumulative log q along the path
    later: list[int] = []  # draws along the path that were not their parent's first (the frontier's ranking)
    laws: list[torch.Tensor] = []

    def add_children(logits: torch.Tensor, parent: int, depth: int, base: float, room: int) -> None:
        behind = later[parent] if parent >= 0 else 0
        q = torch.softmax(logits.double() / req.temperature, dim=-1)
        ids, law = draws_without_replacement(q, min(w, room), generator)
        for i, x in enumerate(ids):
            tokens.append(x)
            parents.append(parent)
            depths.append(depth)
            scores.append(base + math.log(float(q[x])))
            later.append(behind + (i > 0))
            laws.append(law[i])

    add_children(req.logits, -1, 1, 0.0, req.budget)
    level = list(range(len(tokens)))  # this level's nodes
    hidden_of = {i: req.hidden[0] for i in level}  # the state each node's drafter call consumes (its parent's)
    per_level = frontier_per_level(req)
    scratch = w * max(req.depth - 1, 1)
    seen: dict[int, torch.Tensor] = {i: torch.zeros(scratch, dtype=torch.bool, device=device) for i in level}
    level_rows: list[int] = []
    for depth in range(1, req.depth):
        room = req.budget - len(tokens)
        start = req.committed + (depth - 1) * w
        if room < 1 or not level or start + w > cache.capacity:
            break
        # the nodes verification reaches most often: first draws first (a node's first draw is tried before its
        # siblings, and is accepted about as often as a sampled chain's token), then by draft log-probability
        frontier = sorted(level, key=lambda i: (later[i], -scores[i], i))[: min(per_level, -(-room // w))]
        f = len(frontier)
        visible = torch.stack([seen[i] for i in frontier])
        visible[torch.arange(f), (depth - 1) * w + torch.arange(f)] = True
        mask = torch.cat((torch.ones(f, req.committed, dtype=torch.bool, device=device),
                          visible[:, : (depth - 1) * w + f]), dim=1)
        ids = drafter.draft_to_target(torch.tensor([tokens[i] for i in frontier], device=device))
        positions = torch.full((1, f), req.committed - 1 + depth, dtype=torch.long, device=device)
        states = torch.stack([hidden_of[i] for i in frontier])[None]
        hidden, logits = drafter(states, ids[None], positions, cache, start, mask)
        level_rows.append(f)
        level = []
        for row, node in enumerate(frontier):
            first = len(tokens)
            add_children(logits[0, row], node, depth + 1, scores[node], req.budget - len(tokens))
            for child in range(first, len(tokens)):
                level.append(child)
                hidden_of[child] = hidden[0, row]
                seen[child] = visible[row]
    if not tokens:
        return DraftTree.empty()
    tree = DraftTree(
        tokens=drafter.draft_to_target(torch.tensor(tokens, device=drafter.d2t.device)).cpu(),
        parents=torch.tensor(parents, dtype=torch.long),
        depths=torch.tensor(depths, dtype=torch.long),
        scores=torch.tensor(scores),
        level_rows=tuple(level_rows),
    )
    return with_proposals(tree, drafter, torch.stack(laws))
