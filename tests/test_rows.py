"""Row bookkeeping (focuslib.rows): the span fast path of a dense step agrees with the general compaction."""
from __future__ import annotations

import pytest
import torch

from focuslib.contract import KVSlot
from focuslib.kernels import compact_rows
from focuslib.rows import Rows


def _mask(t: int, *ranges: tuple[int, int]) -> torch.Tensor:
    out = torch.zeros(len(ranges), t, dtype=torch.bool)
    for b, (lo, hi) in enumerate(ranges):
        out[b, lo:hi] = True
    return out


def _general(mask: torch.Tensor) -> Rows:
    """Rows the way every non-span step builds them: compaction of the mask."""
    width = int(mask.sum(1).max())
    index, valid = compact_rows(mask, width)
    return Rows(torch.where(valid, index, 0), valid)


@pytest.mark.parametrize("mask, span", [
    (_mask(12, (4, 9), (4, 9)), (4, 9)),
    (_mask(12, (0, 12)), (0, 12)),
    (_mask(12, (4, 9), (3, 8)), None),   # same width, different positions
    (_mask(12, (4, 9), (4, 8)), None),   # ragged
    (_mask(12, (4, 9), (0, 0)), None),   # a finished sequence computes nothing
])
def test_span_fast_path_agrees_with_compaction(mask, span):
    rows, ref = Rows.from_mask(mask), _general(mask)
    assert rows.span == span
    assert torch.equal(rows.valid, ref.valid) and torch.equal(rows.pos[rows.valid], ref.pos[ref.valid])
    t = mask.shape[1]
    assert torch.equal(rows.as_mask(t), mask) and torch.equal(rows.as_mask(t), ref.as_mask(t))
    at = torch.arange(t).expand(mask.shape[0], t)
    assert torch.equal(rows.rows_at(at, t), ref.rows_at(at, t))
    values = torch.arange(mask.numel()).view_as(mask)
    assert torch.equal(rows.take(values)[rows.valid], ref.take(values)[ref.valid])
    assert rows.n_valid == int(mask.sum()) and rows.last_pos == int(torch.where(mask, torch.arange(t), -1).max())


def test_kv_write_of_a_span_is_the_scatter_it_replaces():
    mask = _mask(10, (2, 6), (2, 6))
    rows = Rows.from_mask(mask)
    k, v = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    fast, slow = (KVSlot(torch.zeros(2, 11, 3, 5), torch.zeros(2, 11, 3, 5)) for _ in range(2))
    fast.write(rows.pos, rows.valid, k, v, rows.span)
    slow.write(rows.pos, rows.valid, k, v)
    assert rows.span == (2, 6) and torch.equal(fast.k, slow.k) and torch.equal(fast.v, slow.v)


def test_a_plan_reuses_the_last_rows_only_for_the_same_span():
    """Rows of an unchanged span are handed back as they are (their masks, packer and the decoder's RoPE
    tables with them); any other set of rows is built afresh."""
    same = _mask(12, (4, 9), (4, 9))
    last = Rows.from_mask(same)
    assert Rows.from_stats(same, torch.cat(Rows.stats(same)).tolist(), last) is last
    for other in (_mask(12, (4, 10), (4, 10)), _mask(12, (4, 9)), _mask(12, (4, 9), (4, 8))):
        rows = Rows.from_stats(other, torch.cat(Rows.stats(other)).tolist(), last)
        assert rows is not last and torch.equal(rows.as_mask(12), other)


def test_row_stats_read_counts_and_ends_of_a_mask():
    """[fewest, most, total, last, -first] of a hand-made mask, of a sequence without rows, and of an empty one."""
    mask = _mask(10, (3, 6), (2, 9))  # rows 3..5 and 2..8
    assert torch.cat(Rows.stats(mask)).tolist() == [3, 7, 10, 8, -2]
    assert torch.cat(Rows.stats(_mask(10, (3, 6), (0, 0)))).tolist() == [0, 3, 3, 5, -3]
    assert torch.cat(Rows.stats(torch.zeros(2, 10, dtype=torch.bool))).tolist() == [0, 0, 0, -1, -10]
    assert torch.cat(Rows.stats(torch.zeros(0, 10, dtype=torch.bool))).tolist() == [0, 0, 0, -1, -10]
