"""Draft trees: EAGLE's dynamic tree (and the chain as its width-1 case), built with the drafter.

A step expands ``width`` children per frontier node for ``depth`` levels, keeping the ``width``
best nodes (by cumulative log-probability) as the next frontier, then keeps the best ``budget``
nodes overall. Scratch KV slots written during expansion lie past the committed cache length and
are simply overwritten by the next step.

With :class:`StepCosts` in the request the budget is chosen by value (EAGLE-2's ranking, Sequoia's
cost model): a tree of nodes with path acceptance p_i (the product of its edges' measured acceptance
rates, binned by the drafter's probability, first choices apart from their siblings) is worth about
E = 1 + sum(p_i) tokens and
costs C = fixed + sum over drafted levels of (level_ms + rows * level_row_ms) + nodes * row_ms; nodes are
kept in order of p_i while p_i / row_ms >= E / C. Greedy verification accepts at most one child of a
node, so a frontier node worth p can add at most p tokens, for one row: it is expanded only if that
could pay for its row in the target pass and in the drafter's level, and a level is drafted only while
the nodes it expands could raise E / C. With ``StepCosts.spine`` the first-choice path (the chain inside the
tree) is drafted and kept to that depth whatever it is worth, and the rule prices only the nodes off it: the
rule alone, pricing the path too, cut it short on steps where all of it was accepted. Verification is exact for any tree,
so this changes speed, never output. :class:`~evospec.runtime.tree_costs.StepCostModel` measures the costs online.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from evospec.core.errors import SettingsError
from evospec.runtime.drafter import DrafterKVCache, Eagle3Drafter
from evospec.runtime.native_choice import greedy_chooser
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
    scores: torch.Tensor | None = None  # [N] cumulative draft log-probabilities (value-based budgets)
    level_rows: tuple[int, ...] = ()  # drafter rows of each call past the root call that built the tree

    @property
    def expansions(self) -> int:
        """Drafter calls past the root call."""
        return len(self.level_rows)

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


@dataclass(frozen=True)
class StepCosts:
    """What one step costs in ms, as the value-based budget weighs it (see the module docstring).

    Attributes:
        fixed_ms: Paid by every step whatever its tree: the drafter's root call and verification of the root
            (target pass, verdict, cache upkeep).
        level_ms: One drafter expansion level (a call over the frontier), whatever its rows.
        row_ms: One more verified row (target pass, verdict, cache upkeep).
        level_row_ms: One more frontier row in a drafter level (an 8-row level costs more than a 1-row one).
        rates: Acceptance rate of a drafted edge per bin of the drafter's probability for it (bins at
            ``EDGE_BINS``), measured; None takes the drafter's probability as it is. A node is worth the
            product of its path's rates, so a child is never worth more than its parent. With
            2 x (len(EDGE_BINS) + 1) rates, the first half is for a parent's first choice and the second for
            its other children: with a flat drafter distribution the first choice at p = 0.015 is accepted
            far more often than an eighth sibling at the same p (one half: one table for both).
        spine: Levels of the first-choice path drafted and kept whatever they are worth (0: none). Not a cost:
            it says which nodes the rule leaves alone. With the chain's depth, a tree holds the chain it would
            replace, so its accepted length is never below the chain's, and the rule prices only what it adds.
    """

    fixed_ms: float
    level_ms: float
    row_ms: float
    rates: tuple[float, ...] | None = None
    level_row_ms: float = 0.0
    spine: int = 0

    def levels_ms(self, level_rows) -> float:
        """What drafter levels over these frontier rows cost."""
        return sum(self.level_ms + f * self.level_row_ms for f in level_rows)

    def log_rate(self, logp: torch.Tensor) -> torch.Tensor:
        """Log acceptance rate of edges the drafter gave log-probabilities ``logp`` ([..., children] in the
        drafter's order: column 0 is each parent's first choice)."""
        if self.rates is None:
            return logp
        bins = torch.bucketize(logp.exp().cpu(), torch.tensor(EDGE_BINS), right=True)  # as bisect_right
        if len(self.rates) == 2 * (len(EDGE_BINS) + 1):
            bins = bins + len(EDGE_BINS) + 1  # other children: the second table
            bins[..., 0] -= len(EDGE_BINS) + 1  # first choices: the first
        return torch.tensor(self.rates, dtype=torch.float64).clamp(min=1e-12).log()[bins].to(logp)

    @staticmethod
    def value(log_value: float) -> float:
        """Expected accepted drafts of a node whose path's log acceptance is ``log_value``."""
        return min(1.0, math.exp(log_value))


EDGE_BINS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # drafter edge probabilities binned
EDGE_PRIOR = 2.0  # pseudo-trials per bin at the drafter's own probability (the bin's middle)


@dataclass
class DraftRequest:
    """Everything one draft step needs, passed explicitly.

    Attributes:
        hidden: [1, d] drafter pre-norm state at the last committed position.
        logits: [Vd] drafter logits there (they propose the first level).
        committed: Committed drafter cache length (scratch slots start here).
        width: Children per node (1 = chain).
        depth: Levels to draft.
        budget: Nodes to keep (with ``costs``: at most).
        temperature: > 0 with width 1 samples the chain from the drafter's tempered distribution.
        costs: The step's costs for a value-based budget; None keeps the best ``budget`` nodes.
        siblings: With width 1 and temperature 0: leaves holding the second choice at the first ``siblings``
            levels (``DecodeSettings.draft_siblings``).
        sibling_ratio: > 0: of those, keep only the levels whose first choice is less than this many times as
            likely as the second (``DecodeSettings.draft_sibling_ratio``); 0 keeps every one.
    """

    hidden: torch.Tensor
    logits: torch.Tensor
    committed: int
    width: int
    depth: int
    budget: int
    temperature: float = 0.0
    costs: StepCosts | None = None
    siblings: int = 0
    sibling_ratio: float = 0.0


def sibling_pays(first_logp: float, second_logp: float, ratio: float) -> bool:
    """Whether a level's second choice joins the chain: always without a ratio, else only where the first choice
    is less than ``ratio`` times as likely (on the valid split, where the first choice was 3x the second or more,
    the second was accepted in 0-12% of the steps whose parent was, against 17-30% under 1.5x; README, stop 47).
    The C++ library's ``draft_chain`` applies the same test to the same float32 log-probabilities."""
    return ratio <= 0 or first_logp - second_logp < math.log(ratio)


def _choose(logits: torch.Tensor, req: DraftRequest, generator: torch.Generator, width: int):
    """Children of each row: (draft ids [R, w], log-probs [R, w], sampled-from probs [R, Vd] or None)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    if req.temperature > 0 and width == 1:
        q = torch.softmax(logits.double() / req.temperature, dim=-1)
        ids = torch.tensor([[sample(row, generator)] for row in q.cpu()], device=logits.device)
        return ids, logp.gather(-1, ids), q
    if width == 1:  # a chain's first choice: max took a third of topk(1)'s time in the decoding loop (stop 45)
        scores, ids = logp.max(-1, keepdim=True)
        return ids, scores, None
    scores, ids = logp.topk(width, dim=-1)
    return ids, scores, None


def _value_prefix(values: list[float], order: list[int], costs: StepCosts, level_rows,
                  spine: list[int] = ()) -> tuple[int, float, float]:
    """How many of ``order`` (best first) pay for their rows (p / row_ms >= E / C), and the tree's
    expected tokens E and cost C with them, levels over ``level_rows`` drafted and the ``spine`` nodes
    kept whatever they are worth. ``values``: log path acceptance of each candidate."""
    tokens, cost = 1.0, costs.fixed_ms + costs.levels_ms(level_rows)
    for i in spine:
        tokens, cost = tokens + costs.value(values[i]), cost + costs.row_ms
    kept = 0
    for i in order:
        p = costs.value(values[i])
        if p * cost < tokens * costs.row_ms:
            break
        tokens, cost, kept = tokens + p, cost + costs.row_ms, kept + 1
    return kept, tokens, cost


def _expansion_gains(costs: StepCosts, frontier: list[float], tokens: float, cost: float, room: int,
                     weakest: float = 1.0) -> list[float]:
    """At most what expanding each frontier node (values ``frontier``, best first) adds, in units where a
    level pays when the sum exceeds E * level_ms (see :func:`_level_pays`).

    Greedy verification accepts at most one child of a node, so a node worth p adds at most p tokens, for
    one row of the target pass and one of the drafter's level: (E + p) / (C + row + level_row) > E / C
    iff C p - E (row + level_row) > 0. While the budget has ``room``, a child takes a new row; past it a
    child can only replace the weakest kept node (worth ``weakest``): C (p - weakest) - E level_row > 0."""
    gains = []
    for j, p in enumerate(frontier):
        if j < room:
            gains.append(cost * p - tokens * (costs.row_ms + costs.level_row_ms))
        else:
            gains.append(cost * (p - weakest) - tokens * costs.level_row_ms)
    return gains


def _level_pays(costs: StepCosts, gains: list[float], tokens: float) -> bool:
    """Whether a level expanding nodes with these gains could raise E / C: their sum must pay the level's
    own cost, (E + sum) / (C + level + ...) > E / C  <=>  sum of gains > E level."""
    return sum(gains) > tokens * costs.level_ms


def _ranked(scores: list[float], depths: list[int], spine: list[int] = ()) -> list[int]:
    # Scores (cumulative log-probabilities or log path acceptance) are <= 0 and only shrink along a path,
    # so a child never outranks its parent, and ties go to the shallower node: every prefix of this order
    # is closed under ancestors (tested). The spine is left out: it is kept whatever it is worth, so a
    # node off it has its ancestors on the spine or earlier in this order.
    left_out = set(spine)
    return sorted((i for i in range(len(scores)) if i not in left_out), key=lambda i: (-scores[i], depths[i], i))


@torch.no_grad()
def draft_tree(
    drafter: Eagle3Drafter, cache: DrafterKVCache, req: DraftRequest, generator: torch.Generator
) -> DraftTree:
    device = req.hidden.device
    # A living vocabulary can be smaller than the tree width: never ask top-k for more than exists.
    w = min(req.width, req.logits.shape[-1])
    if w == 1:
        return _draft_chain(drafter, cache, req, generator)
    costs = req.costs
    spine_depth = min(costs.spine, req.depth, req.budget) if costs is not None else 0
    spine = [0] if spine_depth else []  # candidates on the first-choice path, drafted whatever they are worth
    ids, scores, q = _choose(req.logits[None], req, generator, w)  # [1, w]
    cand_ids = [ids[0]]
    cand_scores = [scores[0]]
    cand_values = [costs.log_rate(scores[0])] if costs is not None else []  # log path acceptance
    cand_parents = [torch.full((w,), -1, dtype=torch.long)]
    cand_depths = [torch.ones(w, dtype=torch.long)]
    cand_q = [q] if q is not None else []
    frontier = torch.arange(w)  # candidate indices of the frontier
    frontier_scores = scores[0]
    frontier_values = cand_values[0] if costs is not None else None
    frontier_hidden = req.hidden.expand(w, -1)
    scratch = w * (req.depth - 1)
    visible = torch.zeros(w, max(scratch, 1), dtype=torch.bool, device=device)  # frontier row -> scratch slots
    n_cand = w
    level_rows: list[int] = []  # frontier rows of each drafter call past the root call
    for level in range(1, req.depth):
        start = req.committed + (level - 1) * w
        if start + w > cache.capacity:
            break
        grows = len(spine) < spine_depth  # the path's tip is in the frontier (kept there below)
        if costs is not None:
            tip = frontier.tolist().index(spine[-1]) if grows else None
            pays = _paying_frontier(req, frontier_values.tolist(), cand_values, cand_depths, level_rows, spine,
                                    spine_depth, tip)
            if pays is None:
                break
            here = pays.to(device)
            frontier, frontier_scores, frontier_hidden, visible = frontier[pays], frontier_scores[here], frontier_hidden[here], visible[here]
            frontier_values = frontier_values[here]
        f = frontier.numel()  # the level's drafter rows: w, or fewer under a value-based budget
        visible[torch.arange(f), (level - 1) * w + torch.arange(f)] = True
        mask = torch.cat(
            (torch.ones(f, req.committed, dtype=torch.bool, device=device), visible[:, : (level - 1) * w + f]), dim=1
        )  # the drafter attends over the cache up to its last written slot; unused slots of a level stay masked
        target_ids = drafter.draft_to_target(torch.cat(cand_ids)[frontier])
        positions = torch.full((1, f), req.committed - 1 + level, dtype=torch.long, device=device)
        hidden, logits = drafter(frontier_hidden[None], target_ids[None], positions, cache, start, mask)
        ids, scores, q = _choose(logits[0], req, generator, w)  # [f, w]
        cum = frontier_scores[:, None] + scores
        cand_ids.append(ids.flatten())
        cand_scores.append(cum.flatten())
        cand_parents.append(frontier.repeat_interleave(w))
        cand_depths.append(torch.full((f * w,), level + 1, dtype=torch.long))
        if q is not None:
            cand_q.append(q)
        best = cum.flatten().topk(w).indices
        if grows:  # the tip's first choice extends the path, and stays in the frontier while it must grow
            child = frontier.tolist().index(spine[-1]) * w
            spine.append(n_cand + child)
            if len(spine) < spine_depth and not bool((best == child).any()):
                best = torch.cat((best[:-1], torch.tensor([child], device=best.device)))
        rows = (best // w).cpu()
        frontier = n_cand + best.cpu()
        frontier_scores = cum.flatten()[best]
        if costs is not None:
            values = (frontier_values[:, None] + costs.log_rate(scores)).flatten()
            cand_values.append(values)
            frontier_values = values[best]
        frontier_hidden = hidden[0, rows]
        visible = visible[rows]
        n_cand += f * w
        level_rows.append(f)
    return _select(drafter, req, cand_ids, cand_scores, cand_values, cand_parents, cand_depths, cand_q,
                   tuple(level_rows), spine)


def _paying_frontier(req: DraftRequest, frontier_values: list[float], cand_values, cand_depths,
                     level_rows: list[int], spine: list[int] = (), spine_depth: int = 0,
                     tip: int | None = None) -> torch.Tensor | None:
    """Positions of the frontier nodes worth expanding under ``req.costs``, or None when the next level
    cannot pay (:func:`_expansion_gains`, :func:`_level_pays`). A child is worth at most its parent, so a
    frontier node that cannot pay for a row of its own has no child that can. Once the budget is full,
    children can still replace the weakest kept nodes: a frontier node better than those may be expanded.
    The spine's nodes count as kept, ``spine_depth`` rows are held for it, and ``tip`` (the frontier position
    of the path's last node, while it must grow) is always expanded: that level is drafted anyway, so the
    other nodes need pay only for their own rows."""
    costs = req.costs
    values, depths = torch.cat(cand_values).tolist(), torch.cat(cand_depths).tolist()
    ranked = _ranked(values, depths, spine)[: req.budget - spine_depth]
    kept, tokens, cost = _value_prefix(values, ranked, costs, level_rows, spine)
    room = req.budget - spine_depth - kept
    weakest = costs.value(values[ranked[kept - 1]]) if kept else 1.0
    order = sorted((i for i in range(len(frontier_values)) if i != tip), key=lambda i: -frontier_values[i])
    gains = _expansion_gains(costs, [costs.value(frontier_values[i]) for i in order], tokens, cost, room, weakest)
    pays = [i for i, g in zip(order, gains, strict=True) if g > 0]
    if tip is not None:
        return torch.tensor(sorted(pays + [tip]), dtype=torch.long)
    if not pays or not _level_pays(costs, [g for g in gains if g > 0], tokens):
        return None
    return torch.tensor(sorted(pays), dtype=torch.long)


def _draft_chain(drafter: Eagle3Drafter, cache: DrafterKVCache, req: DraftRequest, generator: torch.Generator) -> DraftTree:
    """The tree with one child per node, without the tree's bookkeeping: each level sees every slot
    before it, so the mask is all ones, and cumulative scores only shrink with depth, so the budget
    keeps the first levels (what :func:`_select` would keep); a value-based budget may end it earlier.
    With ``req.siblings`` (greedy), the second choice at each of the first levels joins as a leaf: its level's
    logits were computed for the chain, so it costs a verified row and no drafter call."""
    if req.siblings and req.costs is not None:
        raise SettingsError("a chain's siblings are drafted whole: a value-based budget (costs) does not price them")
    # greedy siblings: each of the first req.siblings levels also keeps its second choice (id, cumulative score)
    siblings = req.siblings if req.temperature == 0 and req.logits.shape[-1] > 1 else 0
    second: list[tuple[int, torch.Tensor, float]] = []  # (level, id, cumulative score) of each kept second choice
    path: list[float] = []  # cumulative log-probability of each level's node

    native = greedy_chooser(req.logits[None]) if req.temperature == 0 else None

    def keep_second(level: int, runner: torch.Tensor, first_logp: float, runner_logp: float) -> None:
        if sibling_pays(first_logp, runner_logp, req.sibling_ratio):  # the level's second choice joins as a leaf
            second.append((level, runner, (path[level - 1] if level else 0.0) + runner_logp))

    def choose(logits: torch.Tensor, level: int):  # [1, Vd] -> the level's first choice: ids, logp [1, 1], q
        if native is not None:  # the library's pick, as its own chain picks (native_choice.py)
            first, first_logp, runner, runner_logp = native.choose(logits, level < siblings)
            if level < siblings and runner >= 0:
                keep_second(level, torch.tensor([runner]), first_logp, runner_logp)
            return torch.tensor([[first]]), torch.tensor([[first_logp]]), None
        ids, logp, q = _choose(logits, req, generator, 2 if level < siblings else 1)
        if level < siblings:
            keep_second(level, ids[0, 1:], float(logp[0, 0]), float(logp[0, 1]))
            ids, logp = ids[:, :1], logp[:, :1]
        return ids, logp, q

    ids, logp, q = choose(req.logits[None], 0)  # [1, 1]
    chosen, proposals = [ids[0]], [q] if q is not None else []
    path.append(float(logp[0, 0]))
    costs = req.costs
    values = [float(costs.log_rate(logp[0])[0])] if costs is not None else []  # log path acceptance
    hidden = req.hidden[None]  # [1, 1, d]
    level_rows: list[int] = []
    spine_depth = min(costs.spine, req.depth, req.budget) if costs is not None else 0
    for level in range(1, min(req.depth, req.budget)):
        start = req.committed + level - 1
        if start + 1 > cache.capacity:
            break
        if costs is not None and level >= spine_depth:  # the first spine_depth levels are drafted whatever
            if proposals:  # sampled: every drawn node is kept (see below), so E and C count them all
                kept = len(values)
                tokens = 1.0 + sum(costs.value(v) for v in values)
                cost = costs.fixed_ms + costs.levels_ms(level_rows) + kept * costs.row_ms
            else:
                kept, tokens, cost = _chain_prefix(values, costs, level_rows, spine_depth)
            gains = _expansion_gains(costs, [costs.value(values[-1])], tokens, cost, 1)
            if kept < len(values) or not _level_pays(costs, gains, tokens):
                break
        positions = torch.full((1, 1), req.committed - 1 + level, dtype=torch.long, device=hidden.device)
        # one new position that sees every slot before it: no mask (SDPA's unmasked path)
        hidden, logits = drafter(hidden, drafter.draft_to_target(chosen[-1])[None], positions, cache, start, None)
        ids, logp, q = choose(logits[0], level)
        chosen.append(ids[0])
        path.append(path[-1] + float(logp[0, 0]))
        if costs is not None:
            values.append(values[-1] + float(costs.log_rate(logp[0])[0]))
        if q is not None:
            proposals.append(q)
        level_rows.append(1)
    # A sampled node is never cut for its own value: keeping a draw only when it scores well would make
    # the kept drafts follow q restricted to good draws while verification divides by q (a biased law).
    # Whether to draw the next level depends only on the draws before it, which keeps sampling exact.
    n = len(chosen) if costs is None or proposals else _chain_prefix(values, costs, level_rows, spine_depth)[0]
    if n == 0:
        return dataclasses.replace(DraftTree.empty(), level_rows=tuple(level_rows))
    # after the chain, the second choices of its levels: each a leaf whose parent is the chain's node one level up,
    # so a chain accepted in full is still a prefix of the nodes (its cache slots need no move)
    extra = [(level, i, v) for level, i, v in second if level < n]
    tree = DraftTree(
        tokens=drafter.draft_to_target(torch.cat(chosen[:n] + [i for _, i, _ in extra])).cpu(),
        parents=torch.tensor(list(range(-1, n - 1)) + [level - 1 for level, _, _ in extra], dtype=torch.long),
        depths=torch.tensor(list(range(1, n + 1)) + [level + 1 for level, _, _ in extra], dtype=torch.long),
        scores=torch.tensor(path[:n] + [v for _, _, v in extra]),
        level_rows=tuple(level_rows),
    )
    return with_proposals(tree, drafter, torch.cat(proposals[:n]).cpu()) if proposals else tree


def _chain_prefix(values: list[float], costs: StepCosts, level_rows, spine_depth: int) -> tuple[int, float, float]:
    """:func:`_value_prefix` of a chain: its first ``spine_depth`` nodes kept whatever, then the rest in depth
    order while they pay; the count includes the spine."""
    spine = list(range(min(spine_depth, len(values))))
    kept, tokens, cost = _value_prefix(values, list(range(len(spine), len(values))), costs, level_rows, spine)
    return len(spine) + kept, tokens, cost


def with_proposals(tree: DraftTree, drafter: Eagle3Drafter, q: torch.Tensor) -> DraftTree:
    """Attach [N, Vd] head-column probabilities and the columns' target ids (not spread over the target
    vocabulary: verification touches only these columns)."""
    tree.proposals = q
    tree.proposal_ids = drafter.draft_to_target(torch.arange(q.shape[1], device=drafter.d2t.device)).cpu()
    return tree


def _select(drafter, req, cand_ids, cand_scores, cand_values, cand_parents, cand_depths, cand_q,
            level_rows: tuple[int, ...], spine: list[int] = ()) -> DraftTree:
    """Keep the ``budget`` best candidates (with ``req.costs``: the ``spine``, then the best by path
    acceptance that pay for their rows, at most ``budget`` in all); ancestors always rank before
    descendants, so every kept node's ancestors are kept too."""
    scores = torch.cat(cand_scores).tolist()
    depths = torch.cat(cand_depths).tolist()
    parents = torch.cat(cand_parents).tolist()
    if req.costs is not None:
        values = torch.cat(cand_values).tolist()
        order = _ranked(values, depths, spine)[: req.budget - len(spine)]
        order = list(spine) + order[: _value_prefix(values, order, req.costs, level_rows, spine)[0]]
    else:
        order = _ranked(scores, depths)[: req.budget]
    if not order:
        return dataclasses.replace(DraftTree.empty(), level_rows=level_rows)
    kept = sorted(order)
    new_index = {old: new for new, old in enumerate(kept)}
    draft_ids = torch.cat(cand_ids)[kept]
    tree = DraftTree(
        tokens=drafter.draft_to_target(draft_ids).cpu(),
        parents=torch.tensor([new_index.get(parents[i], -1) for i in kept], dtype=torch.long),
        depths=torch.tensor([depths[i] for i in kept], dtype=torch.long),
        scores=torch.tensor([scores[i] for i in kept]),
        level_rows=level_rows,
    )
    return with_proposals(tree, drafter, torch.cat(cand_q)[kept].cpu()) if cand_q else tree
