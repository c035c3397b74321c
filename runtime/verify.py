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

from dataclasses import dataclass

import torch

from evospec.runtime.sampling import sample, sampling_probs
from evospec.runtime.tree import DraftTree


@dataclass
class Verdict:
    accepted_nodes: list[int]  # accepted draft node indices, root to leaf
    bonus: int  # the target's token after the last accepted node


def verify_greedy(tree: DraftTree, logits: torch.Tensor) -> Verdict:
    """``logits``: [1+N, V], row 0 at the root, row i+1 at node i."""
    best = logits.argmax(dim=-1).tolist()
    tokens = tree.tokens.tolist()
    children = tree.children()
    accepted: list[int] = []
    row = 0
    while True:
        match = next((c for c in children[row] if tokens[c] == best[row]), None)
        if match is None:
            return Verdict(accepted, best[row])
        accepted.append(match)
        row = match + 1


def verify_sampling(
    tree: DraftTree, logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> Verdict:
    tokens = tree.tokens.tolist()
    children = tree.children()
    accepted: list[int] = []
    row = 0
    # every row at once, where the logits are, then one copy to the host (not a sync per tree level)
    probs = sampling_probs(logits, temperature, top_p).cpu()
    while True:
        p = probs[row]
        for child in children[row]:
            x = tokens[child]
            u = float(torch.rand(1, generator=generator, dtype=torch.float64))
            if tree.proposals is None:
                if u < float(p[x]):
                    break
                p = p.clone()
                p[x] = 0.0
            else:
                q = tree.proposals[child].to(p.dtype)
                if u * float(q[x]) < float(p[x]):
                    break
                p = (p - q).clamp_min(0.0)
            total = p.sum()
            if not total > 0:
                raise RuntimeError("speculative sampling residual has no mass; this is a bug")
            p = p / total
        else:
            return Verdict(accepted, sample(p, generator))
        accepted.append(child)
        row = child + 1
