"""The target's sampling law at one row of logits, computed only as far as a decision needs it.

``sampling_weights`` defines the law: temperature, softmax, then the top-p nucleus. The nucleus costs a
histogram and several threshold passes over the whole 151k-token row, and at T = 1 with top-p it was most
of verification's time. Most decisions do not need it:

- accepting a likely drafted child: a token whose probability exceeds ``1 - top_p`` of the total is in every
  nucleus, and the nucleus keeps at most the softmax total, so ``u q(x) T < s(x)`` implies the exact test;
- drawing the bonus token, from the law or from its residual after one rejected child: by rejection from the
  softmax s (the envelope: the law's weights never exceed s). A proposed y is in the nucleus when the mass of
  it and every less likely token exceeds the budget (one masked sum over the row decides it, outside a thin
  band of rounding), and the residual's weight at y is ``max(s(y) - K q(y), 0)`` with the kept mass K known
  to lie in ``[T - budget T, T]``, which decides acceptance outside a band of the same width.

Whenever a bound does not settle a decision, or a few proposals are rejected in a row, the full nucleus is
built and the decision is made as before: every draw follows the exact law. Bounds carry a slack of
``SUM_SLACK`` of the total: two float64 sums of one row's probabilities in different orders differ by at most
n 2**-53 (~2e-11 of the total for 151k tokens).
"""

from __future__ import annotations

import numpy as np
import torch

from evospec.runtime.sampling import BlockSampler, nucleus, row_scratch, sample, softmax_weights
from evospec.runtime.tree import DraftTree

SUM_SLACK = 1e-9  # of the row's total: > 151,851 * 2**-53 by a wide margin
LIKELY_GATHER = 8192  # at most this many tokens at or above a probability: their mass is gathered, not masked
DRAW_ATTEMPTS = 3  # proposals from the softmax before the exact law is built (each is accepted with prob >= mass / T)


class TargetRow:
    """The law at one row: the softmax first, the nucleus only when a decision needs it.

    ``weights()`` returns ``(weights, total)`` exactly as ``sampling_weights`` would (the caller may update
    them in place into residuals and keep ``total`` in step). ``decide`` and ``draw`` decide without them
    where bounds allow. ``shortcuts`` and ``fallbacks`` count decisions each way (tests read them).
    """

    def __init__(self, logits: torch.Tensor, temperature: float, top_p: float) -> None:
        self._scaled, self._probs = softmax_weights(logits, temperature)
        self._softmax = self._probs.numpy()  # read until ``weights()`` zeroes the removed tokens in place
        self.dtype = self._probs.dtype
        self._softmax_sampler = BlockSampler(self._softmax)  # its block sums give the total (and later draws)
        self.total = float(self._softmax_sampler.cumulative[-1])
        self._budget = 1.0 - top_p
        self._filtered = top_p >= 1.0  # without top-p the softmax is the law
        self._limit = self._budget if self.dtype == torch.float64 else self._budget * self.total
        self._margin = SUM_SLACK * self.total
        # the nucleus keeps a mass K in [T - limit, T] (``total`` follows the residual once the weights are built)
        self._kept_high = self.total + self._margin
        self._kept_low = self.total - self._limit - 2 * self._margin
        # memberships proven so far, by probability (membership is monotone in it: ``_in_nucleus``)
        self._kept_from = np.inf  # every token more likely than this is kept
        self._removed_below = -np.inf  # every token less likely than this is removed
        self.shortcuts = 0
        self.fallbacks = 0

    # -- decisions without the nucleus ------------------------------------------------------------------
    def decide(self, x: int, threshold: float) -> bool | None:
        """The exact test ``threshold * K < w(x)`` (``threshold = u q(x)``) on this row's untouched law, decided
        without the nucleus where the bounds allow; None where they do not (build ``weights()`` and test)."""
        if self._filtered:
            p, total = self.weights()
            return threshold * total < float(p[x])
        kept = self._in_nucleus(x)
        if kept is False:
            return False  # w(x) = 0
        if kept is True:
            s = float(self._softmax[x])
            if threshold * self._kept_high < s:
                self.shortcuts += 1
                return True
            if threshold * self._kept_low >= s:
                self.shortcuts += 1
                return False
        return None

    def draw(self, generator: torch.Generator, rejected: Proposal | None = None) -> int:
        """One token from the law, or, after the one child ``rejected`` was tested against this row's untouched
        law and rejected, from the residual ``max(w - K q, 0)``."""
        if self._filtered:  # the weights are built (or the softmax is the law): draw them directly
            return sample(self._residual(rejected), generator)
        for _ in range(DRAW_ATTEMPTS):
            # rejection from the softmax s: y ~ s is kept with probability r(y) / s(y), r the law (or residual)
            y = self._softmax_sampler.draw(generator)
            v = float(torch.rand(1, generator=generator, dtype=torch.float64))
            q = 0.0 if rejected is None else rejected.mass(y)
            keep = self._keeps_draw(y, v, q)
            if keep is None:  # this proposal is settled on the exact law (a fresh draw here would bias the law)
                s = float(self._softmax[y])  # read before the nucleus zeroes the removed tokens in place
                p, total = self.weights()
                keep = v * s < max(float(p[y]) - total * q, 0.0)
                if keep:
                    return y
                break  # rejected: the weights are built, draw from them
            if keep:
                self.shortcuts += 1
                return y
        self.fallbacks += 1  # a draw from the exact law after rejections leaves the law unchanged
        return sample(self._residual(rejected), generator)

    def _keeps_draw(self, y: int, v: float, q: float) -> bool | None:
        """Whether the proposal y (uniform ``v``) is kept, ``v s(y) < max(w(y) - K q(y), 0)``, by the bounds;
        None where they do not settle it."""
        kept = self._in_nucleus(y)
        if kept is not True:
            return kept  # False: w(y) = 0; None: not known
        s = float(self._softmax[y])
        if v * s < s - self._kept_high * q:
            return True
        if v * s >= s - self._kept_low * q:
            return False
        return None

    def _in_nucleus(self, y: int) -> bool | None:
        """Whether the nucleus keeps y: it does when the mass of y and every token the nucleus orders below it
        exceeds the limit. That mass lies between ``below + s(y)`` and ``below + ties * s(y)`` (tokens of equal
        probability are ordered by logit); None when the rounding band around the limit holds it.

        Membership is monotone in probability, so each answer also settles every token strictly more likely
        (kept) or strictly less likely (removed): later questions about those cost no pass over the row.
        And the kept mass K of a nucleus is at most ``T - limit + s(b)``, b its least likely kept token, so a
        token proven kept tightens the bound on K that ``decide`` and ``draw`` use (``_kept_high``)."""
        s = float(self._softmax[y])
        if s > self._kept_from or s > self._limit + self._margin:
            return self._kept(s)
        if s < self._removed_below:
            return False
        below, ties = self._mass_below(self._softmax[y])
        if below + s > self._limit + self._margin:
            return self._kept(s)
        if below + ties * s < self._limit - self._margin:
            self._removed_below = max(self._removed_below, s)
            return False
        return None

    def _kept(self, s: float) -> bool:
        """Record that a token of probability ``s`` is kept: the nucleus's least likely token is at most that
        likely, so it removes more than ``limit - s`` (``total`` and the limit carry ``margin`` each)."""
        if s < self._kept_from:
            self._kept_from = s
            self._kept_high = min(self._kept_high, self.total - self._limit + s + 3 * self._margin)
        return True

    def _mass_below(self, s: np.floating) -> tuple[float, int]:
        """The mass of the tokens less likely than ``s`` and the number as likely. Likely tokens are
        few: their mass is gathered and taken from the total (a compare pass and a gather, a third of a masked
        sum's cost; the two sums' rounding differs by far less than ``margin``); otherwise the masked sum."""
        p = self._softmax
        mask = row_scratch.get("at_least", p.size, torch.bool).numpy()
        np.greater_equal(p, s, out=mask)
        if np.count_nonzero(mask) <= LIKELY_GATHER:
            values = p[np.flatnonzero(mask)]
            return self.total - float(values.sum(dtype=np.float64)), int(np.count_nonzero(values == s))
        np.logical_not(mask, out=mask)
        masked = row_scratch.get("masked", p.size, self.dtype).numpy()
        np.multiply(p, mask, out=masked)  # exact: each value kept or zeroed (``np.sum(where=)`` is 3x slower)
        return float(masked.sum(dtype=np.float64)), int(np.count_nonzero(p == s))

    # -- the exact law ----------------------------------------------------------------------------------
    def weights(self) -> tuple[torch.Tensor, float]:
        """The law up to its total, as ``sampling_weights`` gives it: ``(weights, total)``, this row's to
        change in place (residuals); ``total`` is kept in step by the caller."""
        if not self._filtered:
            self._probs, self.total = nucleus(self._scaled, self._probs, self._budget)  # the softmax is not read again
            self._filtered = True
        return self._probs, self.total

    def _residual(self, rejected: Proposal | None) -> torch.Tensor:
        """The law's weights, less K q of the one rejected proposal if there was one."""
        p, total = self.weights()
        if rejected is not None:
            rejected.subtract(p, total)
        return p


class Proposal:
    """The drafter's proposal q at one child, in the law's dtype (the residual subtracts q in it): a point mass
    at the child's token (a deterministically chosen child), q over the target vocabulary, or q over the head's
    columns (a padded active set repeats id 0 with q = 0: a token's q is the sum over its columns)."""

    def __init__(self, tree: DraftTree, child: int, dtype: torch.dtype) -> None:
        self.token = int(tree.tokens[child])
        self.q = None if tree.proposals is None else tree.proposals[child].to(dtype)
        self.columns = tree.proposal_ids

    def mass(self, y: int) -> float:
        if self.q is None:
            return float(y == self.token)
        if self.columns is None:
            return float(self.q[y])
        # numpy's compare and gather: a third of torch's boolean indexing on the 16k columns, called per proposal
        return float(self.q.numpy()[self.columns.numpy() == y].sum())

    def subtract(self, p: torch.Tensor, total: float) -> None:
        """``p <- max(p - total q, 0)``, in place (the residual after this child's rejection)."""
        if self.q is None:
            p[self.token] = 0.0
        elif self.columns is None:
            np.maximum(np.subtract(p.numpy(), self.q.numpy() * total, out=p.numpy()), 0.0, out=p.numpy())
        else:  # only the head's columns change; repeated columns add up
            p.index_add_(0, self.columns, self.q, alpha=-total)
            weights, changed = p.numpy(), self.columns.numpy()
            weights[changed] = np.maximum(weights[changed], 0.0)
