"""Ids grouped by cluster and gathered per chosen clusters (``ClusterGroups``), and DynaSpec's shortlist built
on it: both against the slice-by-slice code they replaced."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evospec.runtime.vocab.cluster_groups import ClusterGroups
from evospec.runtime.vocab.dynaspec import Shortlister, cluster_rows, train_router


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=0, max_size=40), st.data())
def test_rows_of_owners_and_enough_match_slicing_each_group(groups, data):
    ids = torch.arange(100, 100 + len(groups))
    grouped = ClusterGroups(ids, torch.tensor(groups, dtype=torch.long), 6)
    order = np.array(data.draw(st.permutations(range(6))), dtype=np.int64)
    slices = [grouped.members[grouped.offsets[c] : grouped.offsets[c + 1]].tolist() for c in order]
    assert grouped.rows_of(order).tolist() == [i for part in slices for i in part]
    group_of = dict(zip(ids.tolist(), groups))
    assert grouped.owners(order).tolist() == [group_of[i] for i in grouped.rows_of(order).tolist()]
    for c in range(6):  # inside a group, the given order is kept
        assert grouped.members[grouped.offsets[c] : grouped.offsets[c + 1]].tolist() == [
            i for i, g in zip(ids.tolist(), groups) if g == c]
    need = data.draw(st.integers(1, 45))
    prefix = grouped.enough(order, need)
    held = np.cumsum([len(part) for part in slices])
    shortest = next((i + 1 for i, h in enumerate(held) if h >= need), 6)
    assert prefix.tolist() == order[:shortest].tolist()


def _shortlist_by_slices(s: Shortlister, scores: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The shortlist as it was built before ``ClusterGroups``: a slice per cluster in router order."""
    parts, size, used = [s.backbone], s.backbone_size, []
    for c in torch.argsort(scores, descending=True, stable=True).tolist():
        if size >= s.k:
            break
        part = s.groups.members[s.groups.offsets[c] : s.groups.offsets[c + 1]][: s.k - size]
        if part.numel():
            parts.append(part)
            used.append(c)
            size += part.numel()
    return torch.cat(parts), tuple(used)


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(2, 60), clusters=st.integers(1, 6), data=st.data())
def test_dynaspec_shortlist_equals_the_slice_by_slice_one(vocab, clusters, data):
    clusters = min(clusters, vocab)
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16)))
    labels = cluster_rows(torch.randn(vocab, 8, generator=g), clusters)
    router = train_router(torch.randn(16, 8, generator=g), torch.randint(vocab, (16, 2), generator=g), labels, vocab,
                          hidden=0, steps=2, counts=torch.randint(0, 3, (vocab,), generator=g))
    s = Shortlister(router, data.draw(st.integers(1, vocab)), data.draw(st.sampled_from([0.0, 0.25, 0.5, 1.0])))
    for state in torch.randn(4, 8, generator=g):
        scores = router.scores(state)
        ids, used = s.ids(scores)
        expected_ids, expected_used = _shortlist_by_slices(s, scores)
        assert ids.tolist() == expected_ids.tolist() and used == expected_used
