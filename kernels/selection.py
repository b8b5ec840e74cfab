"""FOCUS keep rule: which rows of a block survive past the eviction layer.

Slots are block positions 0..S-1. ``masked[b, j]`` is True for a still-masked row;
False slots (decoded rows, or slots without a row) are always kept. With M the
still-masked slots of a sequence, delta_j = importance at layer 1 minus layer 0 and
K = budget, the rules apply in this order:

  a. |M| <= K             -> keep everything.
  b. gate / top-K         -> G = {j in M: delta_j >= mean + std} (mean and std over M);
                             keep G if |G| >= K, else the K rows of M with the largest
                             delta (ties: lower position).
                             ``gate_std="population"`` (default): std divides by n = |M|;
                             ``gate_std="sample"``: std divides by n - 1 (older behaviour).
                             Decided in float64 without sqrt (see ``_gate``): exact for
                             tied, integer or bf16-valued deltas, so a delta exactly on the
                             threshold is in G. The authors' kernel compares in float32;
                             the two can differ only within float32 rounding of mean + std.
  c. adjacency            -> a masked row whose right neighbour (position + 1) is a
                             masked row kept by b is kept too (one pass over b's result).
  d. nothing kept         -> keep all rows (a safety net: with K >= 1 and |M| > K, rule b
                             always keeps >= 1 masked row, so d only fires out of contract).
  e. progress             -> rightmost = largest position of a masked row kept by a-d.
     ``progress_rule="mark"`` (default): ``progress`` is the mark, the furthest block
                             position processed in earlier steps of this block (-1 at the
                             block start). An evicted masked row j < rightmost is kept
                             again only if j > mark, so every row up to the rightmost kept
                             one has KV at every layer without recomputing rows that
                             already have it. The mark is the caller's state: after the
                             step it sets mark = max(mark, rightmost kept row of any kind);
                             this function does not update it.
     ``progress_rule="fill"`` (older behaviour): ``progress`` is the first still-masked
                             slot, and every slot in [progress, rightmost] is kept.
  f. unmasked rows        -> always kept.

"rightmost" in e is taken over the masked rows kept by rules a-d, before f adds the
unmasked rows; otherwise an already decoded row at the end of the block would force
every masked row before it to be kept and eviction would do nothing.

The defaults follow the FOCUS authors' implementation (github.com/sands-lab/FOCUS):
rules b-e are ``_focus_select_enforce_ragged_kernel`` in
``lmdeploy/pytorch/kernels/cuda/focus.py`` (population variance, iterative top-K with
ties to the lower position, adjacency on base selection, ``positions > progress``
enforcement); the mark is ``FocusState.rightmost_processed`` in
``lmdeploy/pytorch/strategies/dllm/sequence.py`` (-1 at each block start,
``mark_processed`` keeps the max), advanced per step by
``_focus_processing_view_kernel`` (focus.py) and ``update_focus_progress_only``
(``lmdeploy/pytorch/model_inputs.py``); ``_prepare_focus_eviction`` in
``lmdeploy/pytorch/models/sdar.py`` applies rule a (``should_evict``).
"""

import torch

from .dispatch import TRITON_AVAILABLE, check_launchable, next_pow2, use_triton

if TRITON_AVAILABLE:
    import triton
    import triton.language as tl

GATE_STD_OPTIONS = ("population", "sample")
PROGRESS_RULE_OPTIONS = ("mark", "fill")


def _check_options(gate_std: str, progress_rule: str) -> tuple[bool, bool]:
    """Validate the two options -> (sample_std, fill) flags."""
    if gate_std not in GATE_STD_OPTIONS:
        raise ValueError(f"gate_std must be one of {GATE_STD_OPTIONS}, got {gate_std!r}")
    if progress_rule not in PROGRESS_RULE_OPTIONS:
        raise ValueError(f"progress_rule must be one of {PROGRESS_RULE_OPTIONS}, got {progress_rule!r}")
    return gate_std == "sample", progress_rule == "fill"


def _gate(delta: torch.Tensor, masked: torch.Tensor, sample_std: bool = False) -> torch.Tensor:
    """[B, S] bool: masked rows with delta >= mean + std (mean, std over the masked rows).

    Decided without sqrt or division, in float64: with u_j = n d_j - sum(d) = n (d_j - mean),
      population (std divides by n):      d_j >= mean + std  <=>  u_j >= 0 and n u_j^2 >= sum u^2
      sample (std divides by n - 1):                          <=>  u_j >= 0 and (n-1) u_j^2 >= sum u^2
    (n - 1 clamped to 1, as for |M| = 1 the std is 0 either way). For tied, integer or
    bf16-valued deltas of moderate range every term is exact in float64, so a delta lying
    exactly on the threshold (e.g. the larger of two equally frequent values) is in G
    whatever the summation order; a float32 mean + sqrt(var) rounds either way there, and
    the CPU reference and the GPU kernel could then disagree.
    """
    d = torch.where(masked, delta.double(), 0.0)  # unmasked deltas may be NaN
    n = masked.sum(1, keepdim=True).double()  # [B, 1]
    u = torch.where(masked, n * d - d.sum(1, keepdim=True), 0.0)
    ss = (u * u).sum(1, keepdim=True)
    c = (n - 1).clamp(min=1) if sample_std else n
    return masked & (u >= 0) & (c * (u * u) >= ss)


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


def _rightmost(sel: torch.Tensor) -> torch.Tensor:
    """[B, 1] largest index with sel True, -1 if none."""
    idx = torch.arange(sel.shape[1], device=sel.device)
    return torch.where(sel, idx, -1).amax(1, keepdim=True)


def _apply_progress_fill(sel: torch.Tensor, progress: torch.Tensor) -> torch.Tensor:
    """Rule e, "fill": keep every row in [progress, rightmost kept row]."""
    idx = torch.arange(sel.shape[1], device=sel.device)
    return sel | ((idx >= progress[:, None]) & (idx <= _rightmost(sel)))


def _apply_progress_mark(sel: torch.Tensor, masked: torch.Tensor, mark: torch.Tensor) -> torch.Tensor:
    """Rule e, "mark": keep an evicted masked row j < rightmost kept masked row iff j > mark."""
    idx = torch.arange(sel.shape[1], device=sel.device)
    need = masked & ~sel & (idx < _rightmost(sel & masked)) & (idx > mark[:, None])
    return sel | need


def focus_select_reference(
    delta: torch.Tensor,  # [B, S] float, importance delta (meaningful where masked)
    masked: torch.Tensor,  # [B, S] bool, True = still masked
    budget: torch.Tensor,  # [B] long, K >= 1
    progress: torch.Tensor,  # [B] long: the mark ("mark") or the first masked slot ("fill")
    *,
    gate_std: str = "population",
    progress_rule: str = "mark",
) -> torch.Tensor:  # [B, S] bool, True = row is kept
    """Vectorised PyTorch reference of the FOCUS keep rule (no loop over the batch)."""
    sample_std, fill = _check_options(gate_std, progress_rule)
    delta = delta.float()
    budget, progress = budget.long(), progress.long()
    n = masked.sum(1)  # [B]
    gate = _gate(delta, masked, sample_std)
    sel = torch.where((gate.sum(1) >= budget)[:, None], gate, _topk_masked(delta, masked, budget))
    sel = sel | (_shift_left(sel) & masked)  # c: masked left neighbour of each kept masked row
    sel = _apply_nothing_kept(sel, masked)  # d
    if fill:  # e
        sel = _apply_progress_fill(sel, progress)
    else:
        sel = _apply_progress_mark(sel, masked, progress)
    keep = sel | ~masked  # f
    return keep | (n <= budget)[:, None]  # a


if TRITON_AVAILABLE:

    @triton.jit
    def _focus_select_kernel(
        delta_ptr, masked_ptr, budget_ptr, progress_ptr, keep_ptr,
        S,
        sdb, sds, smb, sms, skb, sks,
        BLOCK_S: tl.constexpr,  # power of two >= S
        SAMPLE_STD: tl.constexpr,  # gate std divides by n - 1 (else n)
        FILL: tl.constexpr,  # progress rule "fill" (else "mark")
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

        # b. gate: d >= mean + std over masked rows, exact-friendly float64 form (see _gate)
        n = tl.sum(m.to(tl.int32), axis=0)
        nf = n.to(tl.float64)
        d64 = d.to(tl.float64)
        u = tl.where(m, nf * d64 - tl.sum(d64, axis=0), 0.0)  # n (d_j - mean)
        ss = tl.sum(u * u, axis=0)
        if SAMPLE_STD:
            c = tl.maximum(nf - 1.0, 1.0)
        else:
            c = nf
        gate = m & (u >= 0) & (c * (u * u) >= ss)
        n_gate = tl.sum(gate.to(tl.int32), axis=0)

        # b. top-K fallback: rank_j = #masked i beating j (larger delta, or equal and i < j)
        di = d[:, None]
        dj = d[None, :]
        beats = (di > dj) | ((di == dj) & (idx[:, None] < idx[None, :]))
        beats = beats & m[:, None]
        rank = tl.sum(beats.to(tl.int32), axis=0)
        topk = m & (rank < k)
        sel = tl.where(n_gate >= k, gate, topk)

        # c. adjacency: masked j is kept if j + 1 is kept (shift done as a [S, S] reduction)
        right = tl.sum(((idx[:, None] == idx[None, :] + 1) & sel[:, None]).to(tl.int32), axis=0)
        sel = sel | ((right > 0) & m)

        # d. nothing kept -> keep all
        n_kept = tl.sum((sel & m).to(tl.int32), axis=0)
        sel = sel | (n_kept == 0)

        # e. progress
        if FILL:  # keep every slot in [progress, rightmost kept]
            rightmost = tl.max(tl.where(sel & in_s, idx, -1), axis=0)
            sel = sel | ((idx >= prog) & (idx <= rightmost))
        else:  # evicted masked rows left of the rightmost kept masked row, past the mark
            rightmost = tl.max(tl.where(sel & m, idx, -1), axis=0)
            sel = sel | (m & (idx < rightmost) & (idx > prog))

        # f. unmasked rows, then a. the |M| <= K shortcut
        keep = sel | ~m | (n <= k)
        tl.store(keep_ptr + b * skb + idx * sks, keep.to(tl.uint8), mask=in_s)


def focus_select_triton(
    delta: torch.Tensor,
    masked: torch.Tensor,
    budget: torch.Tensor,
    progress: torch.Tensor,
    *,
    gate_std: str = "population",
    progress_rule: str = "mark",
) -> torch.Tensor:
    """Triton path of :func:`focus_select` (same contract)."""
    sample_std, fill = _check_options(gate_std, progress_rule)
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
        BLOCK_S=next_pow2(S), SAMPLE_STD=sample_std, FILL=fill,
    )
    return keep


def focus_select(
    delta: torch.Tensor,  # [B, S] float
    masked: torch.Tensor,  # [B, S] bool, True = still masked
    budget: torch.Tensor,  # [B] long, K >= 1
    progress: torch.Tensor,  # [B] long: mark ("mark", -1 = none yet) or first masked slot ("fill")
    *,
    gate_std: str = "population",  # "population" (divide by n) or "sample" (n - 1)
    progress_rule: str = "mark",  # "mark" (authors' rule) or "fill" (older rule)
) -> torch.Tensor:  # [B, S] bool, True = row is kept (computed past the eviction layer)
    """FOCUS keep mask for one block per sequence; Triton on CUDA, reference otherwise.

    See the module docstring for the rules and the two options.
    """
    _check_options(gate_std, progress_rule)
    fn = focus_select_triton if use_triton(delta, masked, budget, progress) else focus_select_reference
    return fn(delta, masked, budget, progress, gate_std=gate_std, progress_rule=progress_rule)
