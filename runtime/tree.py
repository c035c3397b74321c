"""Draft trees: EAGLE's dynamic tree (and the chain as its width-1 case), built with the drafter.

A step expands ``width`` children per frontier node for ``depth`` levels, keeping the ``width``
best nodes (by cumulative log-probability) as the next frontier, then keeps the best ``budget``
nodes overall. Scratch KV slots written during expansion lie past the committed cache length and
are simply overwritten by the next step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evospec.runtime.drafter import DrafterKVCache, Eagle3Drafter
from evospec.runtime.sampling import sample


@dataclass
class DraftTree:
    """Draft nodes in topological order; node i's parent is ``parents[i]`` (-1 = the root token).

    ``proposals[i]`` is the distribution node i was sampled from, or None when nodes were chosen
    deterministically (top-k), which verification treats as a point mass. With ``proposal_ids`` it is
    over the drafter's head columns, whose target ids those are (a padded active set repeats id 0 with
    q = 0, so a token's q is the sum over its columns); without, over the target vocabulary.
    """

    tokens: torch.Tensor  # [N] target ids
    parents: torch.Tensor  # [N]
    depths: torch.Tensor  # [N] 1..D
    proposals: torch.Tensor | None = None  # [N, Vd] over proposal_ids, or [N, V]
    proposal_ids: torch.Tensor | None = None  # [Vd] target id of each head column

    @property
    def size(self) -> int:
        return int(self.tokens.numel())

    @classmethod
    def empty(cls) -> DraftTree:
        z = torch.zeros(0, dtype=torch.long)
        return cls(tokens=z, parents=z.clone(), depths=z.clone())

    def children(self) -> list[list[int]]:
        """Children of the root (index 0) and of node i (index i+1), in draft order."""
        kids: list[list[int]] = [[] for _ in range(self.size + 1)]
        for i, p in enumerate(self.parents.tolist()):
            kids[p + 1].append(i)
        return kids

    def attention_mask(self) -> torch.Tensor:
        """[1+N, 1+N] bool: row r sees the root, its ancestors and itself (row 0 = root)."""
        n = self.size
        mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
        mask[0, 0] = True
        for i, p in enumerate(self.parents.tolist()):
            mask[i + 1] = mask[p + 1]
            mask[i + 1, i + 1] = True
        return mask


@dataclass
class DraftRequest:
    """Everything one draft step needs, passed explicitly.

    Attributes:
        hidden: [1, d] drafter pre-norm state at the last committed position.
        logits: [Vd] drafter logits there (they propose the first level).
        committed: Committed drafter cache length (scratch slots start here).
        width: Children per node (1 = chain).
        depth: Levels to draft.
        budget: Nodes to keep.
        temperature: > 0 with width 1 samples the chain from the drafter's tempered distribution.
    """

    hidden: torch.Tensor
    logits: torch.Tensor
    committed: int
    width: int
    depth: int
    budget: int
    temperature: float = 0.0


def _choose(logits: torch.Tensor, req: DraftRequest, generator: torch.Generator, width: int):
    """Children of each row: (draft ids [R, w], log-probs [R, w], sampled-from probs [R, Vd] or None)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    if req.temperature > 0 and width == 1:
        q = torch.softmax(logits.double() / req.temperature, dim=-1)
        ids = torch.tensor([[sample(row, generator)] for row in q.cpu()], device=logits.device)
        return ids, logp.gather(-1, ids), q
    scores, ids = logp.topk(width, dim=-1)
    return ids, scores, None


@torch.no_grad()
def draft_tree(
    drafter: Eagle3Drafter, cache: DrafterKVCache, req: DraftRequest, generator: torch.Generator
) -> DraftTree:
    device = req.hidden.device
    # A living vocabulary can be smaller than the tree width: never ask top-k for more than exists.
    w = min(req.width, req.logits.shape[-1])
    if w == 1:
        return _draft_chain(drafter, cache, req, generator)
    ids, scores, q = _choose(req.logits[None], req, generator, w)  # [1, w]
    cand_ids = [ids[0]]
    cand_scores = [scores[0]]
    cand_parents = [torch.full((w,), -1, dtype=torch.long)]
    cand_depths = [torch.ones(w, dtype=torch.long)]
    cand_q = [q] if q is not None else []
    frontier = torch.arange(w)  # candidate indices of the frontier
    frontier_scores = scores[0]
    frontier_hidden = req.hidden.expand(w, -1)
    scratch = w * (req.depth - 1)
    visible = torch.zeros(w, max(scratch, 1), dtype=torch.bool, device=device)  # frontier row -> scratch slots
    n_cand = w
    for level in range(1, req.depth):
        start = req.committed + (level - 1) * w
        if start + w > cache.capacity:
            break
        visible[torch.arange(w), (level - 1) * w + torch.arange(w)] = True
        mask = torch.cat(
            (torch.ones(w, req.committed, dtype=torch.bool, device=device), visible[:, : level * w]), dim=1
        )
        target_ids = drafter.draft_to_target(torch.cat(cand_ids)[frontier])
        positions = torch.full((1, w), req.committed - 1 + level, dtype=torch.long, device=device)
        hidden, logits = drafter(frontier_hidden[None], target_ids[None], positions, cache, start, mask)
        ids, scores, q = _choose(logits[0], req, generator, w)  # [w, w]
        cum = frontier_scores[:, None] + scores
        cand_ids.append(ids.flatten())
        cand_scores.append(cum.flatten())
        cand_parents.append(frontier.repeat_interleave(w))
        cand_depths.append(torch.full((w * w,), level + 1, dtype=torch.long))
        if q is not None:
            cand_q.append(q)
        best = cum.flatten().topk(w).indices
        rows = (best // w).cpu()
        frontier = n_cand + best.cpu()
        frontier_scores = cum.flatten()[best]
        frontier_hidden = hidden[0, rows]
        visible = visible[rows]
        n_cand += w * w
    return _select(drafter, req, cand_ids, cand_scores, cand_parents, cand_depths, cand_q)


def _draft_chain(drafter: Eagle3Drafter, cache: DrafterKVCache, req: DraftRequest, generator: torch.Generator) -> DraftTree:
    """The tree with one child per node, without the tree's bookkeeping: each level sees every slot
    before it, so the mask is all ones, and cumulative scores only shrink with depth, so the budget
    keeps the first levels (what :func:`_select` would keep)."""
    ids, _, q = _choose(req.logits[None], req, generator, 1)  # [1, 1]
    chosen, proposals = [ids[0]], [q] if q is not None else []
    hidden = req.hidden[None]  # [1, 1, d]
    for level in range(1, min(req.depth, req.budget)):
        start = req.committed + level - 1
        if start + 1 > cache.capacity:
            break
        mask = torch.ones(1, start + 1, dtype=torch.bool, device=hidden.device)
        positions = torch.full((1, 1), req.committed - 1 + level, dtype=torch.long, device=hidden.device)
        hidden, logits = drafter(hidden, drafter.draft_to_target(chosen[-1])[None], positions, cache, start, mask)
        ids, _, q = _choose(logits[0], req, generator, 1)
        chosen.append(ids[0])
        if q is not None:
            proposals.append(q)
    n = len(chosen)
    tree = DraftTree(
        tokens=drafter.draft_to_target(torch.cat(chosen)).cpu(),
        parents=torch.arange(-1, n - 1, dtype=torch.long),
        depths=torch.arange(1, n + 1, dtype=torch.long),
    )
    return _with_proposals(tree, drafter, torch.cat(proposals).cpu()) if proposals else tree


def _with_proposals(tree: DraftTree, drafter: Eagle3Drafter, q: torch.Tensor) -> DraftTree:
    """Attach [N, Vd] head-column probabilities and the columns' target ids (not spread over the target
    vocabulary: verification touches only these columns)."""
    tree.proposals = q
    tree.proposal_ids = drafter.draft_to_target(torch.arange(q.shape[1], device=drafter.d2t.device)).cpu()
    return tree


def _select(drafter, req, cand_ids, cand_scores, cand_parents, cand_depths, cand_q) -> DraftTree:
    """Keep the ``budget`` best candidates; ancestors always rank before descendants."""
    scores = torch.cat(cand_scores).tolist()
    depths = torch.cat(cand_depths).tolist()
    parents = torch.cat(cand_parents).tolist()
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], depths[i], i))
    # Scores are cumulative log-probabilities (<= 0), so a child never outranks its parent, and ties go
    # to the shallower node: every kept node's ancestors are kept too (tested: ancestor closure).
    kept = sorted(order[: req.budget])
    new_index = {old: new for new, old in enumerate(kept)}
    draft_ids = torch.cat(cand_ids)[kept]
    tree = DraftTree(
        tokens=drafter.draft_to_target(draft_ids).cpu(),
        parents=torch.tensor([new_index.get(parents[i], -1) for i in kept], dtype=torch.long),
        depths=torch.tensor([depths[i] for i in kept], dtype=torch.long),
    )
    return _with_proposals(tree, drafter, torch.cat(cand_q)[kept].cpu()) if cand_q else tree
