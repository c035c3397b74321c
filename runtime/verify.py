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

from evospec.runtime.sampling import sample, sampling_weights
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
    rows = _target_rows(logits, temperature, top_p)
    while True:
        # ``p`` (a fresh host tensor, updated in place) is the target's (residual) law up to the factor
        # ``total`` (a float64 sum): normalising a 151k-row vector costs a pass over it, and neither the
        # acceptance test nor ``sample`` needs it. Its full-length passes are numpy's (one thread; see
        # ``sampling`` for why torch's are avoided on the host)
        p, total = rows(row)
        for child in children[row]:
            x = tokens[child]
            u = float(torch.rand(1, generator=generator, dtype=torch.float64))
            if tree.proposals is None:
                if u * total < float(p[x]):
                    break
                p[x] = 0.0
            elif tree.proposal_ids is None:  # q over the target vocabulary
                q = tree.proposals[child].to(p.dtype)
                if u * float(q[x]) * total < float(p[x]):
                    break
                np.maximum(np.subtract(p.numpy(), q.numpy() * total, out=p.numpy()), 0.0, out=p.numpy())
            else:  # q over the head's columns: only they change
                q, columns = tree.proposals[child].to(p.dtype), tree.proposal_ids
                if u * float(q[columns == x].sum()) * total < float(p[x]):
                    break
                p.index_add_(0, columns, q, alpha=-total)  # repeated columns add up
                weights, changed = p.numpy(), columns.numpy()
                weights[changed] = np.maximum(weights[changed], 0.0)
            total = float(p.numpy().sum(dtype=np.float64))
            if not total > 0:
                raise RuntimeError("speculative sampling residual has no mass; this is a bug")
        else:
            return Verdict(accepted, sample(p, generator))
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


def _target_rows(logits: torch.Tensor, temperature: float, top_p: float) -> Callable[[int], tuple[torch.Tensor, float]]:
    """The target's law at each tree row up to its total (``sampling_weights``), on the host and only for
    the rows the walk reaches (accepted + 1 of 1 + N). An accelerator's logits come over in one copy (one
    sync per step), so the law is computed by the same host arithmetic as the plain decoding path's."""
    host = logits.cpu()
    return lambda row: sampling_weights(host[row], temperature, top_p)
