"""FOCUS attention importance over the still-masked rows of a block.

Importance of key j = how much attention it receives from the masked set, after the
scores are max-pooled along the key axis (window 3 by default), so that a key next
to a strongly attended key also counts as attended. FOCUS evicts rows whose
importance does not grow between layer 0 and layer 1.
"""

import math

import torch
import torch.nn.functional as F

from .dispatch import TRITON_AVAILABLE, check_launchable, next_pow2, use_triton

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl


def _check_args(q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, window: int) -> None:
    B, M, H, D = q.shape
    if k.shape[:2] != (B, M) or k.shape[3] != D or H % k.shape[2] != 0:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} do not match")
    if valid.shape != (B, M):
        raise ValueError(f"valid {tuple(valid.shape)} must be [B, M] = {(B, M)}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1, got {window}")


def focus_importance_reference(
    q: torch.Tensor,  # [B, M, H, D]
    k: torch.Tensor,  # [B, M, G, D]
    valid: torch.Tensor,  # [B, M] bool, True = row is in the set
    window: int = 3,
) -> torch.Tensor:  # [B, M] float32
    """PyTorch reference: dense scores, pooled with -inf outside the valid set."""
    _check_args(q, k, valid, window)
    B, M, H, D = q.shape
    rep = H // k.shape[2]
    qf = q.float()
    kf = k.float().repeat_interleave(rep, dim=2)  # [B, M, H, D]: head h -> kv head h // rep
    s = torch.einsum("bihd,bjhd->bhij", qf, kf) / math.sqrt(D)  # [B, H, M(i), M(j)]
    key_ok = valid[:, None, None, :]  # [B, 1, 1, M]
    s = s.masked_fill(~key_ok, float("-inf"))
    if window > 1:
        # max_pool1d pads with -inf, matching "out-of-range = -inf"
        s = F.max_pool1d(s.reshape(-1, 1, M), window, stride=1, padding=window // 2)
        s = s.reshape(B, H, M, M).masked_fill(~key_ok, float("-inf"))
    p = torch.softmax(s, dim=-1)  # rows with no valid key are NaN; dropped below
    pair_ok = valid[:, None, :, None] & key_ok  # [B, 1, M, M]
    p = torch.where(pair_ok, p, torch.zeros((), dtype=p.dtype))
    return p.sum(dim=(1, 2))  # [B, M]: sum over heads and queries


if TRITON_AVAILABLE:

    @triton.jit
    def _focus_importance_kernel(
        q_ptr, k_ptr, valid_ptr, out_ptr,
        M, D, REP, scale,
        sqb, sqm, sqh, sqd,
        skb, skm, skh, skd,
        svb, svm,
        HALF: tl.constexpr,  # window // 2
        BLOCK_Q: tl.constexpr,  # query rows per program
        BLOCK_M: tl.constexpr,  # all key rows (>= M)
        BLOCK_D: tl.constexpr,  # head dim (>= D)
    ):
        """One program per (batch, query head, query tile); atomically adds into out[b, :]."""
        b = tl.program_id(0)
        h = tl.program_id(1)
        g = h // REP
        offs_i = tl.program_id(2) * BLOCK_Q + tl.arange(0, BLOCK_Q)
        offs_j = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D

        vi = tl.load(valid_ptr + b * svb + offs_i * svm, mask=offs_i < M, other=0) != 0
        vj = tl.load(valid_ptr + b * svb + offs_j * svm, mask=offs_j < M, other=0) != 0
        q = tl.load(
            q_ptr + b * sqb + h * sqh + offs_i[:, None] * sqm + offs_d[None, :] * sqd,
            mask=vi[:, None] & d_ok[None, :], other=0.0,
        ).to(tl.float32)  # [BLOCK_Q, BLOCK_D]; fp32 also avoids the interpreter's bf16 dot bug

        # Max-pool over keys without shuffling registers: pooled[i, j] is the max over
        # offsets o of <q_i, k_{j+o}>, so load K shifted by o and take a running max.
        s = tl.full((BLOCK_Q, BLOCK_M), float("-inf"), tl.float32)
        for o in tl.static_range(-HALF, HALF + 1):
            jo = offs_j + o
            in_range = (jo >= 0) & (jo < M)
            vo = tl.load(valid_ptr + b * svb + jo * svm, mask=in_range, other=0) != 0
            kt = tl.load(
                k_ptr + b * skb + g * skh + jo[None, :] * skm + offs_d[:, None] * skd,
                mask=vo[None, :] & d_ok[:, None], other=0.0,
            ).to(tl.float32)  # [BLOCK_D, BLOCK_M] = K^T shifted by o
            so = tl.dot(q, kt, input_precision="ieee") * scale
            s = tl.maximum(s, tl.where(vo[None, :], so, float("-inf")))
        s = tl.where(vj[None, :], s, float("-inf"))

        # Softmax over keys; rows without any valid key give zeros instead of NaN.
        row_max = tl.max(s, axis=1)
        row_max = tl.where(row_max == float("-inf"), 0.0, row_max)
        p = tl.exp(s - row_max[:, None])
        denom = tl.sum(p, axis=1)
        denom = tl.where(denom > 0, denom, 1.0)
        p = p / denom[:, None]
        p = tl.where(vi[:, None] & vj[None, :], p, 0.0)

        col = tl.sum(p, axis=0)  # [BLOCK_M]: this tile's contribution to I_j
        tl.atomic_add(out_ptr + b * M + offs_j, col, mask=vj)


def focus_importance_triton(
    q: torch.Tensor, k: torch.Tensor, valid: torch.Tensor, window: int = 3
) -> torch.Tensor:
    """Triton path of :func:`focus_importance` (same contract)."""
    _check_args(q, k, valid, window)
    B, M, H, D = q.shape
    check_launchable(_focus_importance_kernel, q)
    out = torch.zeros(B, M, dtype=torch.float32, device=q.device)
    if B * M == 0:
        return out
    valid_u8 = valid.view(torch.uint8)  # zero-copy: Triton reads bool tensors as bytes
    block_m = next_pow2(M, 16)  # tl.dot needs every dim >= 16
    block_q = min(block_m, 64)
    grid = (B, H, triton.cdiv(M, block_q))
    _focus_importance_kernel[grid](
        q, k, valid_u8, out,
        M, D, H // k.shape[2], 1.0 / math.sqrt(D),
        *q.stride(), *k.stride(), *valid_u8.stride(),
        HALF=window // 2, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_D=next_pow2(D, 16),
    )
    return out


def focus_importance(
    q: torch.Tensor,  # [B, M, H, D] queries of the rows in the set (post-norm, post-RoPE)
    k: torch.Tensor,  # [B, M, G, D] keys of the same rows
    valid: torch.Tensor,  # [B, M] bool, True = row belongs to the set
    window: int = 3,
) -> torch.Tensor:  # [B, M] float32; 0 on invalid rows; sums to H * n_valid per batch row
    """Importance I_j = sum over heads and valid queries of pooled-softmax weights.

    Dispatches to Triton on CUDA (or when forced), to the reference otherwise.
    """
    if use_triton(q, k, valid):
        return focus_importance_triton(q, k, valid, window)
    return focus_importance_reference(q, k, valid, window)


def masked_importance(
    q: torch.Tensor,  # [B, L, H, D] post-RoPE queries of the rows
    k: torch.Tensor,  # [B, L, G, D] keys of the rows
    masked: torch.Tensor,  # [B, L] bool, True = row is in the set (the block's still-masked rows)
    window: int = 3,
    round_to: torch.dtype | None = None,
    width: int | None = None,
) -> torch.Tensor:  # [B, L] float32, 0 on rows outside the set
    """FOCUS importance of every row of the set among the set (queries and keys restricted to it, position order).

    round_to: round the importance to this dtype before returning it (the FOCUS authors'
    code stores it in the model dtype, so deltas are taken between rounded values).
    width: masked.sum(1).max() (or more) when the caller knows it on the host; else one host sync.
    """
    from .compaction import compact_rows, gather_rows

    index, valid = compact_rows(masked, width)  # [B, M]
    imp = focus_importance(gather_rows(q, index), gather_rows(k, index), valid, window)  # [B, M]
    if round_to is not None:
        imp = imp.to(round_to).float()
    out = torch.zeros(masked.shape, dtype=torch.float32, device=imp.device)
    return out.scatter_add_(1, index, torch.where(valid, imp, 0.0))
