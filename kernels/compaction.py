"""Row compaction: turn a keep mask into a packed row index and gather those rows.

After FOCUS evicts rows, each sequence keeps a different number of rows. Packing the
kept rows to the front (in their original order, so positions stay sorted) and
padding to the batch maximum lets the remaining layers run on a dense
[B, L', ...] tensor; ``valid`` marks which packed rows are real. Padding repeats the
last kept index so padded rows read a real row (no out-of-bounds reads) and can be
masked out downstream.
"""

import torch

from .dispatch import TRITON_AVAILABLE, check_launchable, next_pow2, use_triton

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl


def _packed_width(keep: torch.Tensor) -> int:
    """L' = max kept count over the batch (a host sync: the output shape depends on it)."""
    return int(keep.sum(1).max().item()) if keep.numel() else 0


def compact_rows_reference(
    keep: torch.Tensor,  # [B, L] bool, True = keep the row
    width: int | None = None,  # L' when the caller already read it (else one host sync here)
) -> tuple[torch.Tensor, torch.Tensor]:  # index [B, L'] long, valid [B, L'] bool
    """Stable sort puts kept rows first in their original order; pad with the last one."""
    B, L = keep.shape
    width = _packed_width(keep) if width is None else width
    order = torch.sort((~keep).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    count = keep.sum(1)  # [B]
    valid = torch.arange(width, device=keep.device)[None, :] < count[:, None]
    if width == 0:
        return order.long(), valid
    last = order.gather(1, (count - 1).clamp(min=0)[:, None])  # [B, 1]
    last = torch.where(count[:, None] > 0, last, torch.zeros_like(last))
    return torch.where(valid, order, last).long(), valid


def gather_rows_reference(
    x: torch.Tensor,  # [B, L, C...]
    index: torch.Tensor,  # [B, L'] long
) -> torch.Tensor:  # [B, L', C...]
    """Batched row gather: out[b, r] = x[b, index[b, r]]."""
    batch = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[batch, index]


if TRITON_AVAILABLE:

    @triton.jit
    def _compact_index_kernel(
        keep_ptr, index_ptr, valid_ptr,
        L, L_OUT,
        skb, skl,
        BLOCK_L: tl.constexpr,
    ):
        """One program per batch row: prefix sum of keep gives each kept row its slot."""
        b = tl.program_id(0)
        offs = tl.arange(0, BLOCK_L)
        count = 0
        last = 0
        for start in range(0, L, BLOCK_L):  # tiles over L, carrying the running count
            j = start + offs
            kj = (tl.load(keep_ptr + b * skb + j * skl, mask=j < L, other=0) != 0).to(tl.int32)
            slot = count + tl.cumsum(kj, axis=0) - 1  # [BLOCK_L]: packed position of row j
            tl.store(index_ptr + b * L_OUT + slot, j.to(tl.int64), mask=kj != 0)
            count += tl.sum(kj, axis=0)
            last = tl.maximum(last, tl.max(tl.where(kj != 0, j, 0), axis=0))
        for start in range(0, L_OUT, BLOCK_L):  # padding slots and the valid mask
            p = start + offs
            in_out = p < L_OUT
            tl.store(index_ptr + b * L_OUT + p, last.to(tl.int64), mask=in_out & (p >= count))
            tl.store(valid_ptr + b * L_OUT + p, (p < count).to(tl.uint8), mask=in_out)

    @triton.jit
    def _gather_rows_kernel(
        x_ptr, index_ptr, out_ptr,
        C, L_OUT,
        sxb, sxl, sxc, sib, sil,
        BLOCK_C: tl.constexpr,
    ):
        """Grid (B, L', C tiles): copy one tile of row index[b, r] of x into out[b, r]."""
        b = tl.program_id(0).to(tl.int64)  # int64: B * L' * C can exceed 2**31
        r = tl.program_id(1).to(tl.int64)
        offs = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
        c_ok = offs < C
        src = tl.load(index_ptr + b * sib + r * sil)
        row = tl.load(x_ptr + b * sxb + src * sxl + offs * sxc, mask=c_ok)
        tl.store(out_ptr + (b * L_OUT + r) * C + offs, row, mask=c_ok)


def compact_rows_triton(keep: torch.Tensor, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton path of :func:`compact_rows` (same contract)."""
    B, L = keep.shape
    check_launchable(_compact_index_kernel, keep)
    width = _packed_width(keep) if width is None else width
    index = torch.empty(B, width, dtype=torch.long, device=keep.device)
    valid = torch.empty(B, width, dtype=torch.bool, device=keep.device)
    if B * width == 0:
        return index, valid
    keep_u8 = keep.view(torch.uint8)
    _compact_index_kernel[(B,)](
        keep_u8, index, valid.view(torch.uint8), L, width, *keep_u8.stride(),
        BLOCK_L=min(next_pow2(L), 1024),
    )
    return index, valid


def gather_rows_triton(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Triton path of :func:`gather_rows`: trailing dims are flattened to C elements per row."""
    B, L = x.shape[:2]
    width = index.shape[1]
    check_launchable(_gather_rows_kernel, x)
    tail = x.shape[2:]
    x3 = x.reshape(B, L, -1)  # [B, L, C]; a view whenever the trailing dims allow it
    out = torch.empty(B, width, x3.shape[2], dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out.reshape(B, width, *tail)
    if x.dtype == torch.bool:  # Triton pointers to bool are awkward; copy bytes instead
        x3, out_view = x3.view(torch.uint8), out.view(torch.uint8)
    else:
        out_view = out
    C = x3.shape[2]
    block_c = min(next_pow2(C), 1024)
    grid = (B, width, triton.cdiv(C, block_c))
    _gather_rows_kernel[grid](
        x3, index, out_view, C, width, *x3.stride(), *index.stride(),
        BLOCK_C=block_c,
    )
    return out.reshape(B, width, *tail)


def compact_rows(
    keep: torch.Tensor,  # [B, L] bool, True = keep the row
    width: int | None = None,  # L' = max kept count, when the caller already read it (else one host sync)
) -> tuple[torch.Tensor, torch.Tensor]:  # index [B, L'] long, valid [B, L'] bool (True = real)
    """Packed indices of kept rows (increasing), padded with the last kept index (or 0)."""
    if use_triton(keep):
        return compact_rows_triton(keep, width)
    return compact_rows_reference(keep, width)


def gather_rows(
    x: torch.Tensor,  # [B, L, C...]
    index: torch.Tensor,  # [B, L'] long
) -> torch.Tensor:  # [B, L', C...]
    """out[b, r] = x[b, index[b, r]]; Triton row copy on CUDA, advanced indexing otherwise."""
    if use_triton(x, index):
        return gather_rows_triton(x, index)
    return gather_rows_reference(x, index)
