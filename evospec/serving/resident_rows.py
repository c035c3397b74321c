"""K resident head rows whose token ids change between steps, copied in place (static shapes).

vLLM's EAGLE-3 drafter scores ``draft_vocab_size`` rows (``lm_head.weight`` [K, d]) and maps draft
id k to target id ``k + draft_id_to_target_id[k]``. Both are allocated once at load; a living
vocabulary must change what they hold without changing their shapes, or vLLM's compiled and graphed
paths would see new tensors. ``ResidentRows`` keeps every retained token in its column and writes
entering tokens only into the columns of leaving ones, so a step that changes 3 tokens copies 3 rows.
Column order means nothing to vLLM: it scatters the K logits to their target ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from evospec.core.errors import SettingsError


@dataclass(frozen=True)
class RowChange:
    """Columns to overwrite and the target ids that move into them (both [n], long)."""

    cols: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return int(self.cols.numel())


class ResidentRows:
    """Which target id each of the K resident columns holds, and the reservoir the rows come from.

    Args:
        reservoir_ids: [N] target ids that have a row (sorted or not, unique).
        reservoir_rows: [N, d] their head rows.
        initial: [K] target ids resident at start (a subset of ``reservoir_ids``).
    """

    def __init__(self, reservoir_ids: torch.Tensor, reservoir_rows: torch.Tensor, initial: torch.Tensor) -> None:
        if reservoir_ids.ndim != 1 or reservoir_rows.ndim != 2 or reservoir_rows.shape[0] != reservoir_ids.numel():
            raise SettingsError(f"reservoir: {reservoir_ids.numel()} ids for rows of shape {tuple(reservoir_rows.shape)}")
        if reservoir_ids.unique().numel() != reservoir_ids.numel():
            raise SettingsError("reservoir ids must be unique")
        size = int(reservoir_ids.max()) + 1
        self.row_of = torch.full((size,), -1, dtype=torch.long)  # target id -> reservoir row, -1: no row
        self.row_of[reservoir_ids.long()] = torch.arange(reservoir_ids.numel())
        self.rows = reservoir_rows
        self.ids = self._checked(initial).clone()  # [K] target id held by each column

    @property
    def k(self) -> int:
        return int(self.ids.numel())

    def has_row(self, ids: torch.Tensor) -> torch.Tensor:
        """[n] bool: which of ``ids`` the reservoir can supply."""
        ids = ids.long()
        inside = ids < self.row_of.numel()
        found = torch.zeros_like(inside)
        found[inside] = self.row_of[ids[inside]] >= 0
        return found

    def _checked(self, wanted: torch.Tensor) -> torch.Tensor:
        wanted = wanted.long().flatten()
        if wanted.unique().numel() != wanted.numel():
            raise SettingsError("an active set must not repeat a token id")
        if not bool(self.has_row(wanted).all()):
            raise SettingsError(f"{int((~self.has_row(wanted)).sum())} active ids have no reservoir row")
        return wanted

    def plan(self, wanted: torch.Tensor, current: torch.Tensor | None = None) -> RowChange:
        """The columns to rewrite so that the resident ids equal the set ``wanted`` ([K] ids, any order).

        ``current``: the resident ids to plan against (default: now's); a worker thread passes the
        snapshot it was given, so planning reads nothing the engine thread writes."""
        wanted = self._checked(wanted)
        current = self.ids if current is None else current
        if wanted.numel() != self.k:
            raise SettingsError(f"an active set must hold exactly K={self.k} ids (got {wanted.numel()})")
        leaving = torch.nonzero(~torch.isin(current, wanted)).flatten()
        entering = wanted[~torch.isin(wanted, current)]
        return RowChange(leaving, entering)  # equal lengths: both sets hold K distinct ids

    def apply(self, change: RowChange, weight: torch.Tensor, d2t: torch.Tensor | None) -> None:
        """Copy the entering rows into ``weight`` [K, d] in place and set vLLM's offsets ``d2t`` [K]
        (target id minus draft id) for the changed columns; shapes and storage never change."""
        if not len(change):
            return
        cols = change.cols.to(weight.device)
        weight.data[cols] = self.rows[self.row_of[change.ids]].to(device=weight.device, dtype=weight.dtype)
        if d2t is not None:
            d2t.data[cols] = (change.ids - change.cols).to(device=d2t.device, dtype=d2t.dtype)
        self.ids[change.cols] = change.ids

    def load_into(self, weight: torch.Tensor, d2t: torch.Tensor | None) -> None:
        """Write every resident column (after vLLM has loaded the checkpoint's own rows)."""
        everything = RowChange(torch.arange(self.k), self.ids.clone())
        self.apply(everything, weight, d2t)
