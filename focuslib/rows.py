"""Row bookkeeping: turning [B, T] position masks into compact row tensors and back.

The decoder works on "rows": the positions it actually computes at a step, packed
to the left of a [B, L] tensor (L = most rows of any sequence). Padding rows carry
valid False and point at a harmless position.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kernels.compaction import compact_rows, gather_rows


@dataclass
class Rows:
    """Positions being computed: pos [B, L] long, valid [B, L] bool (True = real row, False = padding)."""

    pos: Tensor
    valid: Tensor

    @classmethod
    def from_mask(cls, mask: Tensor) -> "Rows":
        """Rows for the True entries of mask [B, T], in increasing position order."""
        index, valid = compact_rows(mask)
        return cls(torch.where(valid, index, 0), valid)

    def select(self, keep: Tensor) -> tuple["Rows", Tensor]:
        """Keep rows where keep [B, L] is True; also returns the gather index [B, L'] into the old rows."""
        index, valid = compact_rows(keep & self.valid)
        return Rows(gather_rows(self.pos, index), valid), index

    @property
    def count(self) -> int:
        return int(self.valid.sum())

    def as_mask(self, positions: int) -> Tensor:
        """[B, T] bool, True = position is one of the valid rows."""
        mask = torch.zeros(self.pos.shape[0], positions + 1, dtype=torch.bool, device=self.pos.device)
        mask.scatter_(1, torch.where(self.valid, self.pos, positions), True)
        return mask[:, :positions]

    def lookup(self, positions: int) -> Tensor:
        """[B, T] long: row index of each position, -1 where the position is not a valid row."""
        table = torch.full((self.pos.shape[0], positions + 1), -1, dtype=torch.long, device=self.pos.device)
        rank = torch.arange(self.pos.shape[1], device=self.pos.device).expand_as(self.pos)
        table.scatter_(1, torch.where(self.valid, self.pos, positions), rank)
        return table[:, :positions]
