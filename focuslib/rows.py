"""Row bookkeeping: turning [B, T] position masks into compact row tensors and back.

The decoder works on "rows": the positions it actually computes at a step, packed
to the left of a [B, L] tensor (L = most rows of any sequence). Padding rows carry
valid False and point at a harmless position.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from focuslib.kernels.compaction import compact_rows, gather_rows


class RowPacker:
    """Packs the valid rows of [B, L, ...] tensors into [1, N, ...] and back.

    Projections, norms, RoPE and the FFN act on each row alone, so they only need the
    N valid rows; ragged batches (sequences at different stages, finished sequences,
    evicted rows) otherwise spend much of the time on padding. Attention needs the
    [B, L] layout and runs unpacked. With no padding, pack/unpack are the identity.
    """

    def __init__(self, valid: Tensor, n_valid: int | None = None) -> None:
        """valid [B, L] bool, True = real row; n_valid: its count when already read (else one host sync)."""
        self.shape = valid.shape
        self.identity = n_valid == valid.numel()
        if not self.identity:
            flat = valid.flatten()
            found = flat.nonzero() if n_valid is None else torch.nonzero_static(flat, size=n_valid)
            self.index = found.squeeze(1)  # [N] flat row index
            self.identity = self.index.numel() == valid.numel()

    def pack(self, t: Tensor) -> Tensor:
        """[B, L, ...] -> [1, N, ...]"""
        return t if self.identity else t.flatten(0, 1).index_select(0, self.index)[None]

    def unpack(self, t: Tensor) -> Tensor:
        """[1, N, ...] -> [B, L, ...] with zeros on padding rows."""
        if self.identity:
            return t
        out = torch.zeros((self.shape.numel(), *t.shape[2:]), dtype=t.dtype, device=t.device)
        return out.index_copy_(0, self.index, t[0]).view(*self.shape, *t.shape[2:])


@dataclass
class Rows:
    """Positions being computed: pos [B, L] long, valid [B, L] bool (True = real row, False = padding)."""

    pos: Tensor
    valid: Tensor
    n_valid: int | None = None  # valid.sum() when known on the host (the packer then needs no sync of its own)
    last_pos: int | None = None  # the largest valid position when known on the host (-1: no valid row)
    # (lo, hi) when every sequence's rows are exactly positions lo..hi-1, all valid (known on the host):
    # the common dense step, whose gathers and scatters become slices
    span: tuple[int, int] | None = None
    _masks: dict[int, Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)  # as_mask by T

    @classmethod
    def from_mask(cls, mask: Tensor) -> "Rows":
        """Rows for the True entries of mask [B, T], in increasing position order (one host sync)."""
        return cls.from_stats(mask, torch.cat(cls.stats(mask)).tolist())

    @staticmethod
    def ends_table(positions: int, device: torch.device | str) -> tuple[Tensor, Tensor]:
        """(positions and their negatives [2, 1, T], fills [2, 1, 1]): with them one `where` and one `amax`
        give a mask's last and (negated) first True position (`stats`). Build it once per T."""
        at = torch.arange(positions, device=device)
        return torch.stack([at, -at])[:, None], torch.tensor([-1, -positions], device=device)[:, None, None]

    @staticmethod
    def stats(mask: Tensor, table: tuple[Tensor, Tensor] | None = None) -> list[Tensor]:
        """What `from_stats` needs to know of mask [B, T] on the host, as 1-D long tensors on the device.

        Concatenated they read [fewest, most, total, last, -first]: the fewest and most True entries of
        a sequence, their total, the largest and (negated) smallest True position (-1 and -T when there
        is none). Read them alone (`from_mask`) or concatenated with other counters, in one host sync.
        table: `ends_table(T)` when the caller keeps one.
        """
        if not mask.numel():
            return [torch.tensor([0, 0, 0, -1, -mask.shape[1]], device=mask.device)]
        counts = mask.sum(1)
        at, fill = Rows.ends_table(mask.shape[1], mask.device) if table is None else table
        ends = torch.where(mask, at, fill).amax((1, 2))  # [2]: mask [B, T] broadcasts to [2, B, T]
        if mask.shape[0] == 1:  # one sequence: its count is the fewest, the most and the total
            return [counts, counts, counts, ends]
        return [*torch.aminmax(counts, dim=0, keepdim=True), counts.sum(0, keepdim=True), ends]

    @classmethod
    def from_stats(cls, mask: Tensor, stats: list[int], last_rows: "Rows | None" = None) -> "Rows":
        """Rows for the True entries of mask [B, T], given `stats(mask)` read on the host (no sync).

        last_rows: rows of an earlier step, returned as they are (with their cached masks and
        packer) when both are the same span of the same batch.
        """
        b, _ = mask.shape
        if not mask.numel():
            return cls(*compact_rows(mask, 0), 0, -1)
        fewest, width, total, last, first = stats
        first = -first
        if fewest == width == last - first + 1:  # each sequence holds width positions in a range of width
            if last_rows is not None and last_rows.span == (first, last + 1) and last_rows.pos.shape[0] == b:
                return last_rows
            pos = torch.arange(first, last + 1, device=mask.device).expand(b, width)
            return cls(pos, torch.ones(b, width, dtype=torch.bool, device=mask.device), total, last, (first, last + 1))
        index, valid = compact_rows(mask, width)
        return cls(torch.where(valid, index, 0), valid, total, last)

    @cached_property
    def packer(self) -> RowPacker:
        """RowPacker of the valid rows: every layer over the same rows shares it."""
        return RowPacker(self.valid, self.n_valid)

    def select(self, keep: Tensor) -> tuple["Rows", Tensor]:
        """Keep rows where keep [B, L] is True (one host sync); also returns the gather index [B, L'] into the
        old rows."""
        index, valid, n, last = _compact(keep & self.valid, self.pos)
        return Rows(gather_rows(self.pos, index), valid, n, last), index

    def by_position(self, values: Tensor, positions: int, fill: float | bool | int) -> Tensor:
        """Row values [B, L, ...] -> [B, T+1, ...] by absolute position; padding rows land in column T.

        Every other position holds `fill`. The one scatter behind `as_mask`, `lookup` and the
        policies' per-position caches, so all agree on where padding rows go.
        """
        out = torch.full((values.shape[0], positions + 1, *values.shape[2:]), fill, dtype=values.dtype,
                         device=values.device)
        idx = torch.where(self.valid, self.pos, positions).view(*self.pos.shape, *([1] * (values.dim() - 2)))
        return out.scatter_(1, idx.expand_as(values), values)

    def as_mask(self, positions: int) -> Tensor:
        """[B, T] bool, True = position is one of the valid rows (built once per T: treat it as read-only)."""
        masks = self._masks
        if positions not in masks:
            if self.span is not None:
                out = torch.zeros(self.pos.shape[0], positions, dtype=torch.bool, device=self.pos.device)
                out[:, self.span[0]:self.span[1]] = True
            else:
                out = self.by_position(self.valid, positions, False)[:, :positions]
            masks[positions] = out
        return masks[positions]

    def lookup(self, positions: int) -> Tensor:
        """[B, T] long: row index of each position, -1 where the position is not a valid row."""
        rank = torch.arange(self.pos.shape[1], device=self.pos.device).expand_as(self.pos)
        return self.by_position(rank, positions, -1)[:, :positions]

    def rows_at(self, at: Tensor, positions: int) -> Tensor:
        """[B, S] row index of the positions `at` [B, S] (each < T), -1 where the position is not a valid row."""
        if self.span is not None:
            lo, hi = self.span
            return torch.where((at >= lo) & (at < hi), at - lo, -1)
        return self.lookup(positions).gather(1, at)

    def take(self, values: Tensor) -> Tensor:
        """values [B, T] at the rows' positions: [B, L] (a slice when the rows are a span)."""
        if self.span is not None:
            return values[:, self.span[0]:self.span[1]]
        return values.gather(1, self.pos)


def _compact(keep: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, int, int]:
    """`compact_rows` of keep [B, L], the kept total and the largest kept position of pos [B, L] (-1: none).

    The packed width, the total and the largest position are read in one host sync.
    """
    if not keep.numel():
        return *compact_rows(keep, 0), 0, -1
    counts = keep.sum(1)
    width, total, last = torch.stack([counts.max(), counts.sum(), torch.where(keep, pos, -1).max()]).tolist()
    index, valid = compact_rows(keep, width)
    return index, valid, total, last


def block_positions(start: Tensor, span: int, positions: int) -> tuple[Tensor, Tensor]:
    """Absolute positions [B, S] of blocks of `span` starting at start [B] (clamped to T - 1), and [B, S] True = < T.

    The one definition of "the current block's positions" for the decoder, eviction policies and traces.
    """
    raw = start[:, None] + torch.arange(span, device=start.device)
    return raw.clamp(max=positions - 1), raw < positions
