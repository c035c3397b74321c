"""Verification of a draft tree against the target's logits from one forward pass.

Greedy: walk down the tree while a child equals the target's argmax; the target's own argmax at
the last accepted node is the bonus token. Output = the target's greedy output, token for token.

Sampling: recursive rejection sampling over the tree. At a node, children are tried in turn: child
x drawn from q is accepted with probability min(1, p(x) / q(x)); on rejection the target's
distribution becomes the residual norm(max(p - q, 0)) and the next sibling is tried against it.
A deterministically chosen child is a point mass (q = one-hot), so its test is "accept with
probability p(x)" and its residual removes x. q is zero outside the drafter's vocabulary, so
target tokens the drafter cannot propose keep their whole mass in the residual. When no child is
accepted, the bonus token is drawn from the residual: the emitted token follows p exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from evospec.runtime.sampling import nucleus, sample, softmax_weights
from evospec.runtime.tree import DraftTree


@dataclass
class Verdict:
    accepted_nodes: list[int]  # accepted draft node indices, root to leaf
    bonus: int  # the target's token after the last accepted node


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """``logits``: [1+N, V], row 0 at the root, row i+1 at node i."""
    best = _argmax_rows(logits)
    tokens = tree.tokens.tolist()
    children = tree.children()
    accepted: list[int] = []
    row = 0
    while True:
        target = best(row)
        match = next((c for c in children[row] if tokens[c] == target), None)
        if match is None:
            return Verdict(accepted, target)
        accepted.append(match)
        row = match + 1


def verify_sampling(
    tree: DraftTree, logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> Verdict:
    tokens = tree.tokens.tolist()
    children = tree.children()
    accepted: list[int] = []
    row = 0
    host = logits.cpu()  # an accelerator's logits come over in one copy: one sync per step
    while True:
        # the target's law at this row, computed only as far as the walk needs it (``TargetRow``); its
        # weights ``p`` (a fresh host tensor, updated in place) are the (residual) law up to the factor
        # ``total`` (a float64 sum): normalising a 151k-row vector costs a pass over it, and neither the
        # acceptance test nor ``sample`` needs it. Its full-length passes are numpy's (one thread; see
        # ``sampling`` for why torch's are avoided on the host)
        law = TargetRow(host[row], temperature, top_p)
        for index, child in enumerate(children[row]):
            x = tokens[child]
            u = float(torch.rand(1, generator=generator, dtype=torch.float64))
            qx = _proposal_mass(tree, child, x, law.dtype)
            if index == 0 and law.surely_accepts(x, u * qx):
                break  # the exact test below would accept too: the nucleus is not needed
            p, total = law.weights()
            if u * qx * total < float(p[x]):
                break
            if tree.proposals is None:
                p[x] = 0.0
            elif tree.proposal_ids is None:  # q over the target vocabulary
                q = tree.proposals[child].to(p.dtype)
                np.maximum(np.subtract(p.numpy(), q.numpy() * total, out=p.numpy()), 0.0, out=p.numpy())
            else:  # q over the head's columns: only they change
                q, columns = tree.proposals[child].to(p.dtype), tree.proposal_ids
                p.index_add_(0, columns, q, alpha=-total)  # repeated columns add up
                weights, changed = p.numpy(), columns.numpy()
                weights[changed] = np.maximum(weights[changed], 0.0)
            law.total = float(p.numpy().sum(dtype=np.float64))
            if not law.total > 0:
                raise RuntimeError("speculative sampling residual has no mass; this is a bug")
        else:
            return Verdict(accepted, sample(law.weights()[0], generator))
        accepted.append(child)
        row = child + 1


def _proposal_mass(tree: DraftTree, child: int, x: int, dtype: torch.dtype) -> float:
    """q(x) of the drafter's proposal at ``child`` in the law's dtype (the residual subtracts q in it too):
    1 for a deterministically chosen child (a point mass)."""
    if tree.proposals is None:
        return 1.0
    q = tree.proposals[child].to(dtype)
    if tree.proposal_ids is None:
        return float(q[x])
    return float(q[tree.proposal_ids == x].sum())  # repeated columns add up


# Relative slack on float64 sums of one row's probabilities: two orders of summing 151k non-negative terms
# differ by at most n * 2**-53 (~2e-11) relatively, so a decision with this much room is the exact one.
SUM_SLACK = 1e-9


class TargetRow:
    """The target's sampling law at one verified row (``sampling_weights``), computed in two steps.

    The softmax comes first; the nucleus (top-p), a histogram and threshold passes over the whole row,
    only when the walk needs it. A child x is accepted when ``u q(x) K < w(x)``, with K the nucleus's
    kept mass and w(x) x's weight in it. A token whose probability exceeds ``1 - top_p`` of the total is in
    every nucleus (the mass of it and every less likely token exceeds the budget), so there w(x) is its
    softmax weight, and K is at most the softmax total T: ``u q(x) T < w(x)`` then implies the exact test's
    acceptance, for the same u. Most accepted children pass that way and the row's nucleus is never built;
    every other case falls through to the exact test. Verdicts are identical either way, draw for draw.
    """

    def __init__(self, logits: torch.Tensor, temperature: float, top_p: float) -> None:
        self._scaled, self._probs = softmax_weights(logits, temperature)
        self.total = float(self._probs.numpy().sum(dtype=np.float64))
        self._top_p = top_p
        self._filtered = top_p >= 1.0  # without top-p the softmax is the law
        self.dtype = self._probs.dtype
        self.shortcuts = 0  # acceptances decided without the nucleus (tests read it)

    def surely_accepts(self, x: int, threshold: float) -> bool:
        """Whether the exact test would accept x for ``u q(x) == threshold``, decided without the nucleus;
        False means "not known", never "rejected"."""
        if self._filtered:
            return False
        weight = float(self._probs[x])
        budget = 1.0 - self._top_p
        limit = budget if self._probs.dtype == torch.float64 else budget * self.total
        if weight > limit * (1.0 + SUM_SLACK) and threshold * self.total * (1.0 + SUM_SLACK) < weight:
            self.shortcuts += 1
            return True
        return False

    def weights(self) -> tuple[torch.Tensor, float]:
        """The law up to its total, as ``sampling_weights`` gives it: ``(weights, total)``; the weights are
        this row's to change in place (residuals), and ``total`` is kept in step by the caller."""
        if not self._filtered:
            self._probs, self.total = nucleus(self._scaled, self._probs, 1.0 - self._top_p)
            self._filtered = True
        return self._probs, self.total


def _argmax_rows(logits: torch.Tensor) -> Callable[[int], int]:
    """The target's argmax at each tree row. On an accelerator all rows at once, one copy; on the CPU only
    the rows the walk reaches: a skinny head's logits are a transposed view, where an argmax over all 33
    rows of a 151k-token tree pass took ~30 ms and one row takes ~0.6 ms (numpy's argmax: one thread, the
    first maximum, as torch's; torch's own split over two threads waits on the busy host's scheduler)."""
    if logits.device.type != "cpu":
        best = logits.argmax(dim=-1).tolist()
        return best.__getitem__
    if logits.dtype not in (torch.float32, torch.float64):
        return lambda row: int(logits[row].argmax())
    host = logits.detach().numpy()
    return lambda row: int(host[row].argmax())
