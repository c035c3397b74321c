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

from evospec.runtime.sampling import sample
from evospec.runtime.target_law import Proposal, TargetRow
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
        # the target's law at this row, computed only as far as the walk needs it (``TargetRow``). Its weights
        # ``p`` (a host tensor, updated in place into residuals) are the law up to the factor ``total`` (a
        # float64 sum): neither the acceptance test nor a draw needs them normalised
        law = TargetRow(host[row], temperature, top_p)
        kids = children[row]
        for index, child in enumerate(kids):
            proposal = Proposal(tree, child, law.dtype)
            threshold = float(torch.rand(1, generator=generator, dtype=torch.float64)) * proposal.mass(tokens[child])
            if index == 0:  # the untouched law: bounds may decide without the nucleus
                decided = law.decide(tokens[child], threshold)
                if decided is True:
                    break
                if decided is False and len(kids) == 1:
                    return Verdict(accepted, law.draw(generator, proposal))
            p, total = law.weights()
            if threshold * total < float(p[tokens[child]]):
                break
            proposal.subtract(p, total)
            law.total = float(p.numpy().sum(dtype=np.float64))
            if not law.total > 0:
                raise RuntimeError("speculative sampling residual has no mass; this is a bug")
        else:
            return Verdict(accepted, sample(law.weights()[0], generator) if kids else law.draw(generator))
        accepted.append(child)
        row = child + 1


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
