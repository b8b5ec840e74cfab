"""DyLLM statistics: cheap context update of non-salient rows and their cosine saliency.

A non-salient row keeps its cached attention context ``c_old`` (softmax(qK^T) V per
head, before o_proj). When only some rows' values changed since the cache was made,
its context is refreshed with the attention-weighted change of V:

    c_new = c_old + softmax(q K^T * scale, masked) @ delta_V

(delta_V is zero on rows whose V did not change). A row becomes salient when the
cosine between its new context and its cached context drops below a threshold, so
the update and the cosine are fused: one pass, no extra read of c_new.
"""

import math

import torch

from .dispatch import TRITON_AVAILABLE, check_launchable, next_pow2, use_triton

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

COS_EPS = 1e-8


def _check_args(
    q: torch.Tensor, k: torch.Tensor, dv: torch.Tensor, c_old: torch.Tensor,
    key_mask: torch.Tensor, c_cached: torch.Tensor | None = None,
) -> None:
    """Shape checks up front: a GQA or mask mismatch would otherwise broadcast silently."""
    B, L, H, D = q.shape
    T, G = k.shape[1], k.shape[2]
    if k.shape != (B, T, G, D) or dv.shape != k.shape or H % G != 0:
        raise ValueError(f"q {tuple(q.shape)}, k {tuple(k.shape)}, dv {tuple(dv.shape)} mismatch")
    if c_old.shape != q.shape or key_mask.shape != (B, L, T):
        raise ValueError(f"c_old {tuple(c_old.shape)} / key_mask {tuple(key_mask.shape)} mismatch")
    if c_cached is not None and c_cached.shape != q.shape:
        raise ValueError(f"c_cached {tuple(c_cached.shape)} != q {tuple(q.shape)}")


def _scale(q: torch.Tensor, scale: float | None) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def _cosine_from_sums(dot: torch.Tensor, na: torch.Tensor, nb: torch.Tensor, eps: float) -> torch.Tensor:
    """cos = <a,b> / max(|a| |b|, eps): zero vectors give 0 (hence salient), never NaN."""
    return dot / (na * nb).sqrt().clamp(min=eps)


def cosine_rows(
    a: torch.Tensor,  # [B, L, ...] e.g. [B, L, H, D]
    b: torch.Tensor,  # same shape as a
    eps: float = COS_EPS,
) -> torch.Tensor:  # [B, L] float32
    """Cosine similarity per row over all trailing dims (flattened H*D), in float32.

    One memory-bound reduction: PyTorch on every device, no Triton kernel needed;
    the fused kernel below covers the hot path.
    """
    af, bf = a.flatten(2).float(), b.flatten(2).float()
    return _cosine_from_sums((af * bf).sum(-1), (af * af).sum(-1), (bf * bf).sum(-1), eps)


def dyllm_context_update_reference(
    q: torch.Tensor,  # [B, L, H, D] queries of non-salient rows
    k: torch.Tensor,  # [B, T, G, D] current keys of all positions
    dv: torch.Tensor,  # [B, T, G, D] V change since the cached step (0 where unchanged)
    c_old: torch.Tensor,  # [B, L, H, D] cached context
    key_mask: torch.Tensor,  # [B, L, T] bool, True = query may attend key
    scale: float | None = None,  # default 1/sqrt(D)
) -> torch.Tensor:  # [B, L, H, D], dtype of c_old
    """PyTorch reference; rows with no attendable key keep c_old (their softmax is empty)."""
    _check_args(q, k, dv, c_old, key_mask)
    return _update_fp32(q, k, dv, c_old, key_mask, _scale(q, scale)).to(c_old.dtype)


def _update_fp32(q, k, dv, c_old, key_mask, scale: float) -> torch.Tensor:  # fp32 [B, L, H, D]
    rep = q.shape[2] // k.shape[2]
    kf = k.float().repeat_interleave(rep, dim=2)  # [B, T, H, D]
    dvf = dv.float().repeat_interleave(rep, dim=2)
    s = torch.einsum("blhd,bthd->bhlt", q.float(), kf) * scale  # [B, H, L, T]
    allowed = key_mask[:, None]  # [B, 1, L, T]
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    p = torch.where(allowed, p, torch.zeros((), dtype=p.dtype))  # NaN rows -> 0
    return c_old.float() + torch.einsum("bhlt,bthd->blhd", p, dvf)


def dyllm_update_and_cosine_reference(
    q: torch.Tensor,  # [B, L, H, D]
    k: torch.Tensor,  # [B, T, G, D]
    dv: torch.Tensor,  # [B, T, G, D]
    c_old: torch.Tensor,  # [B, L, H, D]
    c_cached: torch.Tensor,  # [B, L, H, D]
    key_mask: torch.Tensor,  # [B, L, T] bool
    scale: float | None = None,
    eps: float = COS_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:  # c_new [B, L, H, D], cos [B, L] float32
    """Reference of the fused op; the cosine uses c_new in fp32, before the dtype cast."""
    _check_args(q, k, dv, c_old, key_mask, c_cached)
    c_new = _update_fp32(q, k, dv, c_old, key_mask, _scale(q, scale))
    return c_new.to(c_old.dtype), cosine_rows(c_new, c_cached, eps)


if TRITON_AVAILABLE:

    @triton.jit
    def _dyllm_update_kernel(
        q_ptr, k_ptr, dv_ptr, c_old_ptr, c_cached_ptr, mask_ptr, out_ptr, sums_ptr,
        T, D, REP, scale,
        sqb, sql, sqh, sqd,
        skb, skt, skh, skd,
        svb, svt, svh, svd,
        scb, scl, sch, scd,
        sab, sal, sah, sad,
        smb, sml, smt,
        sob, sol, soh, sod,
        COMPUTE_COS: tl.constexpr,  # also accumulate <c_new, c_cached>, |c_new|^2, |c_cached|^2
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        """One program per (batch, query row, head): online softmax over key tiles."""
        b = tl.program_id(0).to(tl.int64)
        l = tl.program_id(1).to(tl.int64)
        h = tl.program_id(2)
        g = h // REP
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        q = tl.load(q_ptr + b * sqb + l * sql + h * sqh + offs_d * sqd, mask=d_ok, other=0.0)
        q = q.to(tl.float32) * scale  # [BLOCK_D]

        m_i = tl.full([], float("-inf"), tl.float32)  # running max
        l_i = tl.zeros([], tl.float32)  # running softmax denominator
        acc = tl.zeros([BLOCK_D], tl.float32)  # running sum p * dv
        for start in range(0, T, BLOCK_T):
            t = start + tl.arange(0, BLOCK_T)
            ok = tl.load(mask_ptr + b * smb + l * sml + t * smt, mask=t < T, other=0) != 0
            tile_ok = ok[:, None] & d_ok[None, :]
            kt = tl.load(k_ptr + b * skb + g * skh + t[:, None] * skt + offs_d[None, :] * skd,
                         mask=tile_ok, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_D]
            s = tl.where(ok, tl.sum(kt * q[None, :], axis=1), float("-inf"))  # [BLOCK_T]
            m_new = tl.maximum(m_i, tl.max(s, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no (-inf) - (-inf)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(s - m_safe)  # masked keys: exp(-inf) = 0
            dvt = tl.load(dv_ptr + b * svb + g * svh + t[:, None] * svt + offs_d[None, :] * svd,
                          mask=tile_ok, other=0.0).to(tl.float32)
            acc = acc * alpha + tl.sum(p[:, None] * dvt, axis=0)
            l_i = l_i * alpha + tl.sum(p, axis=0)
            m_i = m_new

        c_old = tl.load(c_old_ptr + b * scb + l * scl + h * sch + offs_d * scd, mask=d_ok, other=0.0)
        c_new = c_old.to(tl.float32) + acc / tl.where(l_i > 0, l_i, 1.0)  # l_i = 0: acc = 0
        tl.store(out_ptr + b * sob + l * sol + h * soh + offs_d * sod,
                 c_new.to(out_ptr.dtype.element_ty), mask=d_ok)
        if COMPUTE_COS:
            c_ref = tl.load(c_cached_ptr + b * sab + l * sal + h * sah + offs_d * sad,
                            mask=d_ok, other=0.0).to(tl.float32)
            row = sums_ptr + (b * tl.num_programs(1) + l) * 3  # sums is [B, L, 3] contiguous
            tl.atomic_add(row + 0, tl.sum(c_new * c_ref, axis=0))
            tl.atomic_add(row + 1, tl.sum(c_new * c_new, axis=0))
            tl.atomic_add(row + 2, tl.sum(c_ref * c_ref, axis=0))


def _launch(q, k, dv, c_old, c_cached, key_mask, scale: float, compute_cos: bool):
    """Run the kernel; returns c_new and (if compute_cos) the [B, L, 3] fp32 partial sums."""
    _check_args(q, k, dv, c_old, key_mask, c_cached)
    check_launchable(_dyllm_update_kernel, q)
    B, L, H, D = q.shape
    T = k.shape[1]
    out = torch.empty_like(c_old)
    sums = torch.zeros(B, L, 3, dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, sums
    c_ref = c_cached if compute_cos else c_old  # a valid pointer either way
    mask_u8 = key_mask.view(torch.uint8)
    _dyllm_update_kernel[(B, L, H)](
        q, k, dv, c_old, c_ref, mask_u8, out, sums,
        T, D, H // k.shape[2], scale,
        *q.stride(), *k.stride(), *dv.stride(), *c_old.stride(), *c_ref.stride(),
        *mask_u8.stride(), *out.stride(),
        COMPUTE_COS=compute_cos,
        BLOCK_T=min(next_pow2(T, 16), 64),
        BLOCK_D=next_pow2(D, 16),
    )
    return out, sums


def dyllm_context_update(
    q: torch.Tensor,  # [B, L, H, D]
    k: torch.Tensor,  # [B, T, G, D]
    dv: torch.Tensor,  # [B, T, G, D]
    c_old: torch.Tensor,  # [B, L, H, D]
    key_mask: torch.Tensor,  # [B, L, T] bool, True = may attend
    scale: float | None = None,  # default 1/sqrt(D)
) -> torch.Tensor:  # c_new [B, L, H, D], dtype of c_old
    """c_new = c_old + softmax(q K^T * scale, masked) @ dv; Triton on CUDA."""
    if use_triton(q, k, dv, c_old, key_mask):
        return _launch(q, k, dv, c_old, None, key_mask, _scale(q, scale), False)[0]
    return dyllm_context_update_reference(q, k, dv, c_old, key_mask, scale)


def dyllm_update_and_cosine(
    q: torch.Tensor,  # [B, L, H, D]
    k: torch.Tensor,  # [B, T, G, D]
    dv: torch.Tensor,  # [B, T, G, D]
    c_old: torch.Tensor,  # [B, L, H, D] context the update starts from
    c_cached: torch.Tensor,  # [B, L, H, D] context the saliency cosine compares against
    key_mask: torch.Tensor,  # [B, L, T] bool
    scale: float | None = None,
    eps: float = COS_EPS,
) -> tuple[torch.Tensor, torch.Tensor]:  # c_new [B, L, H, D], cos [B, L] float32
    """Fused update + cosine(c_new, c_cached) per row; salient rows are cos < tau."""
    if use_triton(q, k, dv, c_old, c_cached, key_mask):
        out, sums = _launch(q, k, dv, c_old, c_cached, key_mask, _scale(q, scale), True)
        return out, _cosine_from_sums(sums[..., 0], sums[..., 1], sums[..., 2], eps)
    return dyllm_update_and_cosine_reference(q, k, dv, c_old, c_cached, key_mask, scale, eps)
