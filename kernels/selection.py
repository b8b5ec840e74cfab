"""FOCUS keep rule: which rows of a block survive past the eviction layer.

Rules, applied in this order (see DESIGN.md section 4):
  a. |M| <= K             -> keep everything.
  b. gate / top-K         -> G = {masked j: delta_j >= mean + std}; keep G if |G| >= K,
                             else the K masked rows with the largest delta (ties: lower index).
  c. adjacency            -> a kept masked row p > 0 keeps p - 1 (its left neighbour).
  d. nothing kept         -> keep all rows (a safety net: with K >= 1 and |M| > K, rule b
                             always keeps >= 1 masked row, so d only fires out of contract).
  e. progress fill        -> keep [progress, rightmost row kept by a-d]: every row up to the
                             rightmost kept one then has KV at every layer.
  f. unmasked rows        -> always kept.
"rightmost kept" in e is taken over the rows kept by rules a-d, before f adds the
unmasked rows; otherwise an already decoded row at the end of the block would force
every masked row before it to be kept and eviction would do nothing.
"""

import torch

from kernels import TRITON_AVAILABLE, check_launchable, next_pow2, use_triton

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl


def _gate_threshold(delta: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """mean + unbiased std of delta over masked rows, per batch row -> [B]; std=0 if |M|<=1."""
    n = masked.sum(1)  # [B]
    d = torch.where(masked, delta, torch.zeros((), dtype=delta.dtype))  # unmasked may be NaN
    mean = d.sum(1) / n.clamp(min=1)
    sq = torch.where(masked, (delta - mean[:, None]) ** 2, torch.zeros((), dtype=delta.dtype))
    var = sq.sum(1) / (n - 1).clamp(min=1)
    return mean + var.sqrt()


def _topk_masked(delta: torch.Tensor, masked: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[B, S] bool: the k[b] masked rows with the largest delta, ties to the lower index.

    rank_j = number of masked rows that beat j; a pairwise count (S is a block, <= ~64)
    gives an exact, deterministic tie rule that the Triton kernel reproduces.
    """
    S = delta.shape[1]
    idx = torch.arange(S, device=delta.device)
    di, dj = delta[:, :, None], delta[:, None, :]  # i beats j
    beats = (di > dj) | ((di == dj) & (idx[:, None] < idx[None, :]))
    rank = (beats & masked[:, :, None]).sum(1)  # [B, S]
    return masked & (rank < k[:, None])


def _shift_left(x: torch.Tensor) -> torch.Tensor:
    """out[:, j] = x[:, j + 1], False at the right edge."""
    return torch.cat([x[:, 1:], torch.zeros_like(x[:, :1])], dim=1)


def _apply_nothing_kept(sel: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Rule d: if no masked row is kept, keep every row."""
    none = ~(sel & masked).any(1, keepdim=True)  # [B, 1]
    return sel | none


def _apply_progress(sel: torch.Tensor, progress: torch.Tensor) -> torch.Tensor:
    """Rule e: keep every row in [progress, rightmost kept row]."""
    S = sel.shape[1]
    idx = torch.arange(S, device=sel.device)
    rightmost = torch.where(sel, idx, -1).amax(1, keepdim=True)  # [B, 1]; -1 if none
    return sel | ((idx >= progress[:, None]) & (idx <= rightmost))


def focus_select_reference(
    delta: torch.Tensor,  # [B, S] float, importance delta (meaningful where masked)
    masked: torch.Tensor,  # [B, S] bool, True = still masked
    budget: torch.Tensor,  # [B] long, K >= 1
    progress: torch.Tensor,  # [B] long, first still-masked index in the block
) -> torch.Tensor:  # [B, S] bool, True = row is kept
    """Vectorised PyTorch reference of the FOCUS keep rule (no loop over the batch)."""
    delta = delta.float()
    budget, progress = budget.long(), progress.long()
    n = masked.sum(1)  # [B]
    gate = masked & (delta >= _gate_threshold(delta, masked)[:, None])
    sel = torch.where((gate.sum(1) >= budget)[:, None], gate, _topk_masked(delta, masked, budget))
    sel = sel | _shift_left(sel)  # c: left neighbour of each kept masked row
    sel = _apply_nothing_kept(sel, masked)  # d
    sel = _apply_progress(sel, progress)  # e
    keep = sel | ~masked  # f
    return keep | (n <= budget)[:, None]  # a


if TRITON_AVAILABLE:

    @triton.jit
    def _focus_select_kernel(
        delta_ptr, masked_ptr, budget_ptr, progress_ptr, keep_ptr,
        S,
        sdb, sds, smb, sms, skb, sks,
        BLOCK_S: tl.constexpr,  # power of two >= S
    ):
        """One program per batch row; the whole block lives in registers."""
        b = tl.program_id(0)
        idx = tl.arange(0, BLOCK_S)
        in_s = idx < S
        m = (tl.load(masked_ptr + b * smb + idx * sms, mask=in_s, other=0) != 0) & in_s
        d = tl.load(delta_ptr + b * sdb + idx * sds, mask=in_s, other=0.0).to(tl.float32)
        d = tl.where(m, d, 0.0)  # unmasked deltas are meaningless (maybe NaN)
        k = tl.load(budget_ptr + b)
        prog = tl.load(progress_ptr + b)

        # b. gate: mean + unbiased std over masked rows
        n = tl.sum(m.to(tl.int32), axis=0)
        mean = tl.sum(d, axis=0) / tl.maximum(n, 1).to(tl.float32)
        dev = tl.where(m, d - mean, 0.0)
        var = tl.sum(dev * dev, axis=0) / tl.maximum(n - 1, 1).to(tl.float32)
        gate = m & (d >= mean + tl.sqrt(var))
        n_gate = tl.sum(gate.to(tl.int32), axis=0)

        # b. top-K fallback: rank_j = #masked i beating j (larger delta, or equal and i < j)
        di = d[:, None]
        dj = d[None, :]
        beats = (di > dj) | ((di == dj) & (idx[:, None] < idx[None, :]))
        beats = beats & m[:, None]
        rank = tl.sum(beats.to(tl.int32), axis=0)
        topk = m & (rank < k)
        sel = tl.where(n_gate >= k, gate, topk)

        # c. adjacency: j is kept if j + 1 is kept (shift done as a [S, S] reduction)
        right = tl.sum(((idx[:, None] == idx[None, :] + 1) & sel[:, None]).to(tl.int32), axis=0)
        sel = sel | (right > 0)

        # d. nothing kept -> keep all
        n_kept = tl.sum((sel & m).to(tl.int32), axis=0)
        sel = sel | (n_kept == 0)

        # e. progress fill up to the rightmost kept row
        rightmost = tl.max(tl.where(sel & in_s, idx, -1), axis=0)
        sel = sel | ((idx >= prog) & (idx <= rightmost))

        # f. unmasked rows, then a. the |M| <= K shortcut
        keep = sel | ~m | (n <= k)
        tl.store(keep_ptr + b * skb + idx * sks, keep.to(tl.uint8), mask=in_s)


def focus_select_triton(
    delta: torch.Tensor, masked: torch.Tensor, budget: torch.Tensor, progress: torch.Tensor
) -> torch.Tensor:
    """Triton path of :func:`focus_select` (same contract)."""
    B, S = delta.shape
    check_launchable(_focus_select_kernel, delta)
    keep = torch.empty(B, S, dtype=torch.bool, device=delta.device)
    if B * S == 0:
        return keep
    keep_u8, masked_u8 = keep.view(torch.uint8), masked.view(torch.uint8)
    budget = budget.to(torch.int64).contiguous()
    progress = progress.to(torch.int64).contiguous()
    _focus_select_kernel[(B,)](
        delta, masked_u8, budget, progress, keep_u8,
        S, *delta.stride(), *masked_u8.stride(), *keep_u8.stride(),
        BLOCK_S=next_pow2(S),
    )
    return keep


def focus_select(
    delta: torch.Tensor,  # [B, S] float
    masked: torch.Tensor,  # [B, S] bool, True = still masked
    budget: torch.Tensor,  # [B] long, K >= 1
    progress: torch.Tensor,  # [B] long
) -> torch.Tensor:  # [B, S] bool, True = row is kept (computed past the eviction layer)
    """FOCUS keep mask for one block per sequence; Triton on CUDA, reference otherwise."""
    if use_triton(delta, masked, budget, progress):
        return focus_select_triton(delta, masked, budget, progress)
    return focus_select_reference(delta, masked, budget, progress)
