"""Stamps of evidence kept in step order, so the newest tokens come out without sorting them all.

``EvoSpecPolicy`` stamps a token with the current step whenever evidence names it, and the tail
keeps the most recently stamped tokens (equal stamps: lower id first). Stamps only ever move to the
newest step, so tokens grouped by step in an ordered map (oldest step first) are already ranked:
the newest ``n`` are read from the back, dropping evidence older than a step pops buckets from the
front, and only the buckets a read actually visits are sorted (by id, cached until they change).

``stamp`` (token -> step) keeps exactly the order the policy's earlier single dict had (a new token
appended, a re-stamped one keeping its place, the memory bound reordering newest first): that order
decides which tokens of one step survive the memory bound, and the tail's order while it holds at
most ``n`` tokens, so active sets are unchanged (``tests/test_policy_bookkeeping.py`` checks this
against a copy of that version).
"""

from __future__ import annotations

from collections import OrderedDict


class RecencyIndex:
    """Token -> newest stamp, with the tokens of each step grouped (buckets, oldest step first)."""

    def __init__(self) -> None:
        self.stamp: dict[int, int] = {}
        self._buckets: OrderedDict[int, set[int]] = OrderedDict()  # step -> tokens stamped then
        self._by_id: dict[int, list[int]] = {}  # step -> its tokens by id, for buckets read since they changed

    def __len__(self) -> int:
        return len(self.stamp)

    def __contains__(self, token: int) -> bool:
        return token in self.stamp

    def mark(self, token: int, step: int) -> None:
        """Stamp ``token`` with ``step``, which must be the newest step seen (stamps only move forward)."""
        old = self.stamp.get(token)
        if old == step:
            return
        if self._buckets and step < next(reversed(self._buckets)):
            raise ValueError(f"stamp {step} is older than the newest bucket {next(reversed(self._buckets))}")
        if old is not None:
            self._leave(token, old)
        self.stamp[token] = step  # an existing key keeps its place in the dict's order, as before
        bucket = self._buckets.get(step)
        if bucket is None:
            bucket = self._buckets[step] = set()
        bucket.add(token)
        self._by_id.pop(step, None)

    def _leave(self, token: int, step: int) -> None:
        bucket = self._buckets[step]
        bucket.discard(token)
        self._by_id.pop(step, None)
        if not bucket:
            del self._buckets[step]

    def drop_before(self, step: int) -> None:
        """Forget every stamp older than ``step``: whole buckets from the front, O(tokens dropped)."""
        while self._buckets:
            oldest = next(iter(self._buckets))
            if oldest >= step:
                return
            for token in self._buckets.popitem(last=False)[1]:
                del self.stamp[token]
            self._by_id.pop(oldest, None)

    def newest(self, n: int) -> list[int]:
        """The ``n`` most recently stamped tokens, newest first, equal stamps by lower id; all of them in
        ``stamp``'s order when there are at most ``n`` (what the single-dict version handed out)."""
        if len(self.stamp) <= n:
            return list(self.stamp)
        out: list[int] = []
        for step in reversed(self._buckets):
            by_id = self._by_id.get(step)
            if by_id is None:
                by_id = self._by_id[step] = sorted(self._buckets[step])
            out.extend(by_id[: n - len(out)])
            if len(out) >= n:
                break
        return out

    def keep_newest(self, n: int) -> None:
        """Keep the ``n`` newest stamps, equal stamps in ``stamp``'s order (the earlier version's stable
        sort), and reorder ``stamp`` newest first as that sort did. Costs O(len) once per call; the policy
        calls it only when the index has doubled past ``n``, so O(1) per stamp over time."""
        position = {token: i for i, token in enumerate(self.stamp)}
        kept: list[int] = []
        for step in reversed(self._buckets):
            if len(kept) >= n:
                break
            taken = sorted(self._buckets[step], key=position.__getitem__)[: n - len(kept)]
            kept.extend(taken)
            boundary, partial = step, taken
        if not kept:
            self._buckets.clear()
            self._by_id.clear()
        else:
            while next(iter(self._buckets)) != boundary:
                self._by_id.pop(self._buckets.popitem(last=False)[0], None)
            self._buckets[boundary] = set(partial)
            self._by_id.pop(boundary, None)
        self.stamp = {token: self.stamp[token] for token in kept}
