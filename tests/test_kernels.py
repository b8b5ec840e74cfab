"""Tests for the kernels package.

Three layers:
1. each PyTorch reference against a naive loop implementation written here;
2. hand-built focus_select cases whose expected masks are worked out in comments;
3. each Triton kernel against its reference, under TRITON_INTERPRET=1 on CPU.

Triton picks interpreted vs compiled kernels when ``@triton.jit`` runs, i.e. when
``kernels`` is first imported, and other test modules may import it before this one.
So layer 3 runs in one subprocess started with TRITON_INTERPRET=1 and
FOCUSLIB_FORCE_TRITON=1 (this file doubles as its script, see ``__main__``); each
pytest test then reports its own case from that run.
"""

import json
import math
import os
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
import torch

import focuslib.kernels as kernels
from focuslib.kernels import compaction, dyllm, importance, selection

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------
# naive implementations (loops, Python floats): the oracles for the references
# ---------------------------------------------------------------------------------------


def naive_importance(q, k, valid, window):
    B, M, H, D = q.shape
    rep = H // k.shape[2]
    out = torch.zeros(B, M, dtype=torch.float64)
    for b in range(B):
        rows = [i for i in range(M) if valid[b, i]]
        for h in range(H):
            for i in rows:
                s = {j: float(q[b, i, h].double() @ k[b, j, h // rep].double()) / math.sqrt(D)
                     for j in rows}
                pooled = {j: max(s[jj] for jj in range(j - window // 2, j + window // 2 + 1)
                                 if jj in s) for j in rows}
                top = max(pooled.values())
                z = sum(math.exp(v - top) for v in pooled.values())
                for j in rows:
                    out[b, j] += math.exp(pooled[j] - top) / z
    return out.float()


def naive_select_row(delta, masked, k, progress):
    """The older rule set (OLD_RULES: sample std, progress fill); tests/test_focus_reference.py
    has the port of the authors' rule set (the defaults)."""
    S = len(delta)
    M = [j for j in range(S) if masked[j]]
    if len(M) <= k:  # a
        return [True] * S
    vals = [delta[j] for j in M]
    mean = sum(vals) / len(vals)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
    gate = [j for j in M if delta[j] >= mean + std]  # b
    kept = set(gate) if len(gate) >= k else set(sorted(M, key=lambda j: (-delta[j], j))[:k])
    kept |= {p - 1 for p in kept if p > 0}  # c (kept holds masked rows only here)
    if not any(masked[j] for j in kept):  # d
        kept = set(range(S))
    kept |= set(range(progress, max(kept) + 1))  # e
    kept |= {j for j in range(S) if not masked[j]}  # f
    return [j in kept for j in range(S)]


def naive_select(delta, masked, budget, progress):
    rows = [naive_select_row(delta[b].tolist(), masked[b].tolist(), int(budget[b]), int(progress[b]))
            for b in range(delta.shape[0])]
    return torch.tensor(rows, dtype=torch.bool)


def naive_compact(keep):
    rows = [[j for j in range(keep.shape[1]) if keep[b, j]] for b in range(keep.shape[0])]
    width = max(len(r) for r in rows)
    index = [r + [r[-1] if r else 0] * (width - len(r)) for r in rows]
    valid = [[p < len(r) for p in range(width)] for r in rows]
    return torch.tensor(index, dtype=torch.long).reshape(len(rows), width), \
        torch.tensor(valid, dtype=torch.bool).reshape(len(rows), width)


def naive_gather(x, index):
    return torch.stack([torch.stack([x[b, int(i)] for i in index[b]]) for b in range(x.shape[0])])


def naive_dyllm(q, k, dv, c_old, key_mask, scale):
    B, L, H, D = q.shape
    rep = H // k.shape[2]
    out = c_old.double().clone()
    for b in range(B):
        for l in range(L):
            for h in range(H):
                ts = [t for t in range(k.shape[1]) if key_mask[b, l, t]]
                if not ts:
                    continue
                s = [float(q[b, l, h].double() @ k[b, t, h // rep].double()) * scale for t in ts]
                top = max(s)
                w = [math.exp(v - top) for v in s]
                z = sum(w)
                for wt, t in zip(w, ts):
                    out[b, l, h] += wt / z * dv[b, t, h // rep].double()
    return out


def naive_cosine(a, b, eps=1e-8):
    out = torch.zeros(a.shape[:2])
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            x, y = a[i, j].flatten().double(), b[i, j].flatten().double()
            out[i, j] = float(x @ y) / max(math.sqrt(float(x @ x) * float(y @ y)), eps)
    return out


# ---------------------------------------------------------------------------------------
# input builders (shared by the in-process tests and the interpreter subprocess)
# ---------------------------------------------------------------------------------------


def prefix_valid(lengths, M):
    """[B, M] bool with the first lengths[b] rows valid (rows are compacted)."""
    return torch.arange(M)[None, :] < torch.tensor(lengths)[:, None]


def random_select_inputs(B, S, seed, ties=False):
    """Inputs that honour the contract: rows < progress decoded, row `progress` masked."""
    g = torch.Generator().manual_seed(seed)
    delta = torch.randint(-2, 3, (B, S), generator=g).float() if ties else torch.randn(B, S, generator=g)
    progress = torch.randint(0, S, (B,), generator=g)
    idx = torch.arange(S)
    masked = (torch.rand(B, S, generator=g) < 0.7) & (idx >= progress[:, None])
    masked |= idx == progress[:, None]
    budget = torch.randint(1, S + 1, (B,), generator=g)
    delta = torch.where(masked, delta, torch.full_like(delta, float("nan")))  # garbage off M
    return delta, masked, budget, progress


# hand-built cases, S = 8; every expected mask is derived in the comment. They were
# worked out for the older rule set (sample std, progress fill), so they run with OLD_RULES;
# tests/test_focus_reference.py has hand cases for the default (authors') options.
T, F = True, False
OLD_RULES = dict(gate_std="sample", progress_rule="fill")
ALL_RULES = [dict(gate_std=g, progress_rule=p) for g in ("population", "sample") for p in ("mark", "fill")]
HAND_CASES = {
    # a. |M| = 3 <= K = 3: everything kept, although the gate alone would keep only row 3.
    "shortcut": ([0, 0, 0, 10, 0, 0, 0, 0], [F, F, T, T, F, T, F, F], 3, 2, [T] * 8),
    # b. gate: mean 3.75, std sqrt((3*6.25^2 + 5*3.75^2)/7) = 5.175, threshold 8.93 ->
    #    G = {0,1,2}, |G| = 3 >= K = 2 so all of G is kept (top-2 would keep only {0,1}).
    "gate": ([10, 10, 10, 0, 0, 0, 0, 0], [T] * 8, 2, 0, [T, T, T, F, F, F, F, F]),
    # b. fallback: mean 1.5, std sqrt(34/7) = 2.20, threshold 3.70 -> G = {0,1}, 2 < K = 3,
    #    so top-3 by delta: 5, 5, then the tie 1 (row 2) vs 1 (row 3) goes to row 2.
    #    (the wrong tie rule would keep row 3, and adjacency would then add row 2 as well)
    "topk_tie": ([5, 5, 1, 1, 0, 0, 0, 0], [T] * 8, 3, 0, [T, T, T, F, F, F, F, F]),
    # c. adjacency, isolated by a progress mark past row 4 (out of contract on purpose:
    #    within the contract progress fill already covers p - 1). Threshold 1.25 + 3.54:
    #    G = {5}, K = 1 -> keep 5; adjacency adds 4; progress [5, 5] adds nothing.
    "adjacency": ([0, 0, 0, 0, 0, 10, 0, 0], [T] * 8, 1, 5, [F, F, F, F, T, T, F, F]),
    # e. progress: masked 2..7 (deltas 0,0,0,10,0,0): threshold 1.67 + 4.08 -> G = {5};
    #    adjacency adds 4; fill [2, 5] adds 2, 3; unmasked 0, 1 kept; 6, 7 evicted.
    "progress": ([0, 0, 0, 0, 0, 10, 0, 0], [F, F, T, T, T, T, T, T], 1, 2, [T, T, T, T, T, T, F, F]),
    # f. unmasked rows 0, 3, 6 kept even past the rightmost kept masked row. Masked deltas
    #    (rows 1,2,4,5,7) = 10,0,0,0,0: threshold 2 + sqrt(20) = 6.47 -> G = {1}; adjacency
    #    adds 0; fill [1, 1]. NaN deltas on unmasked rows must not leak into the stats.
    "unmasked": ([math.nan, 10, 0, math.nan, 0, 0, math.nan, 0], [F, T, T, F, T, T, F, T], 1, 1,
                 [T, T, F, T, F, F, T, F]),
    # d. out of contract (K = 0): deltas 0, 1 give threshold 0.5 + 0.71 > 1, so G is empty,
    #    |G| = 0 >= K keeps nothing, and the nothing-kept rule keeps every row.
    "nothing_kept": ([0, 1, 0, 0, 0, 0, 0, 0], [T, T, F, F, F, F, F, F], 0, 0, [T] * 8),
}


def hand_batch(names):
    """Stack hand cases into one batch (also checks that rows do not interact)."""
    cols = list(zip(*(HAND_CASES[n] for n in names)))
    return (torch.tensor(cols[0], dtype=torch.float32), torch.tensor(cols[1]),
            torch.tensor(cols[2]), torch.tensor(cols[3]), torch.tensor(cols[4]))


def random_dyllm_inputs(B, L, T_, H, G, D, seed, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    q, k, dv = r(B, L, H, D), r(B, T_, G, D), r(B, T_, G, D)
    dv = dv * (torch.rand(B, T_, 1, 1, generator=g) < 0.5)  # most rows unchanged
    c_old, c_cached = r(B, L, H, D), r(B, L, H, D)
    c_cached[0, 0] = c_old[0, 0]  # a row whose cosine is ~1
    key_mask = torch.rand(B, L, T_, generator=g) < 0.6
    key_mask[0, -1] = False  # a row that may attend nothing
    return q, k, dv, c_old, c_cached, key_mask


# ---------------------------------------------------------------------------------------
# 1. references vs naive loops
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 3, 5])
@pytest.mark.parametrize("H,G", [(4, 4), (4, 2), (2, 1)])
def test_importance_reference_vs_naive(window, H, G):
    g = torch.Generator().manual_seed(window * 10 + H + G)
    B, M, D = 3, 7, 8
    q, k = torch.randn(B, M, H, D, generator=g), torch.randn(B, M, G, D, generator=g)
    valid = prefix_valid([7, 4, 1], M)
    got = importance.focus_importance_reference(q, k, valid, window)
    torch.testing.assert_close(got, naive_importance(q, k, valid, window), rtol=1e-5, atol=1e-5)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.sum(1), H * valid.sum(1).float())  # sum_j I_j = H n_valid
    assert (got[~valid] == 0).all()


def test_importance_empty_set_is_zero():
    q, k = torch.randn(2, 5, 2, 4), torch.randn(2, 5, 2, 4)
    got = importance.focus_importance_reference(q, k, prefix_valid([0, 5], 5))
    assert (got[0] == 0).all() and torch.isfinite(got).all()


def test_importance_rejects_even_window():
    q = torch.randn(1, 3, 2, 4)
    with pytest.raises(ValueError):
        importance.focus_importance_reference(q, q, prefix_valid([3], 3), window=2)


@pytest.mark.parametrize("ties", [False, True])
def test_select_reference_vs_naive(ties):
    for seed in range(4):
        args = random_select_inputs(64, 13, seed, ties)
        torch.testing.assert_close(selection.focus_select_reference(*args, **OLD_RULES), naive_select(*args))


@pytest.mark.parametrize("name", sorted(HAND_CASES))
def test_select_hand_case(name):
    delta, masked, budget, progress, expected = hand_batch([name])
    got = selection.focus_select_reference(delta, masked, budget, progress, **OLD_RULES)
    assert got.tolist() == expected.tolist()
    if int(budget[0]) >= 1:  # the naive oracle agrees on every in-contract case
        assert naive_select(delta, masked, budget, progress).tolist() == expected.tolist()


def test_select_hand_cases_batched():
    delta, masked, budget, progress, expected = hand_batch(sorted(HAND_CASES))
    got = selection.focus_select_reference(delta, masked, budget, progress, **OLD_RULES)
    assert got.tolist() == expected.tolist()


def test_select_nothing_kept_rule_directly():
    """Rule d cannot fire with K >= 1 (rule b keeps >= min(K, |M|) >= 1 masked rows),
    so its helper is tested on its own as well."""
    masked = torch.tensor([[T, T, F, F], [T, T, F, F]])
    sel = torch.tensor([[F, F, T, F], [F, T, F, F]])  # row 0: only an unmasked row is kept
    got = selection._apply_nothing_kept(sel, masked)
    assert got.tolist() == [[T, T, T, T], [F, T, F, F]]


def test_select_progress_rule_directly():
    sel = torch.tensor([[F, F, F, T, F, F], [F, F, F, F, F, F]])
    got = selection._apply_progress_fill(sel, torch.tensor([1, 2]))
    assert got.tolist() == [[F, T, T, T, F, F], [F] * 6]  # nothing kept -> nothing filled


def test_select_progress_mark_rule_directly():
    # row 0: rightmost kept masked row 4, mark 1 -> evicted masked rows 2, 3 (> mark) come
    #        back, rows 0, 1 (processed earlier) stay out; row 5 is right of 4; the
    #        unmasked row 3 is left alone (rule f keeps it later).
    # row 1: the kept row 5 is unmasked, so the rightmost kept *masked* row is 1: only
    #        row 0 comes back (rows 2-4 are right of it).
    # row 2: mark -1 (block start): every evicted masked row left of 4 comes back.
    sel = torch.tensor([[F, F, F, F, T, F], [F, T, F, F, F, T], [F, F, F, F, T, F]])
    masked = torch.tensor([[T, T, T, F, T, T], [T, T, T, T, T, F], [T] * 6])
    got = selection._apply_progress_mark(sel, masked, torch.tensor([1, -1, -1]))
    assert got.tolist() == [[F, F, T, F, T, F], [T, T, F, F, F, T], [T, T, T, T, T, F]]


def test_select_rejects_unknown_options():
    args = hand_batch(["gate"])[:4]
    for fn in (selection.focus_select_reference, kernels.focus_select):
        with pytest.raises(ValueError, match="population"):
            fn(*args, gate_std="unbiased")
        with pytest.raises(ValueError, match="fill"):
            fn(*args, progress_rule="rightmost")


def test_compact_reference_vs_naive():
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(5, 11, generator=g) < 0.4
    keep[1] = False  # pads with 0
    keep[2] = True
    index, valid = compaction.compact_rows_reference(keep)
    n_index, n_valid = naive_compact(keep)
    assert index.dtype == torch.long and valid.dtype == torch.bool
    assert torch.equal(index, n_index) and torch.equal(valid, n_valid)


def test_compact_reference_nothing_kept_anywhere():
    index, valid = compaction.compact_rows_reference(torch.zeros(3, 4, dtype=torch.bool))
    assert index.shape == (3, 0) and valid.shape == (3, 0)


def test_gather_reference_vs_naive():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 9, 2, 5, generator=g)
    index = torch.randint(0, 9, (3, 4), generator=g)
    assert torch.equal(compaction.gather_rows_reference(x, index), naive_gather(x, index))


@pytest.mark.parametrize("H,G", [(4, 4), (4, 2)])
def test_dyllm_reference_vs_naive(H, G):
    q, k, dv, c_old, c_cached, key_mask = random_dyllm_inputs(2, 3, 9, H, G, 8, seed=H + G)
    scale = 0.3
    want = naive_dyllm(q, k, dv, c_old, key_mask, scale)
    got = dyllm.dyllm_context_update_reference(q, k, dv, c_old, key_mask, scale)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[0, -1], c_old[0, -1])  # no attendable key: unchanged
    c_new, cos = dyllm.dyllm_update_and_cosine_reference(q, k, dv, c_old, c_cached, key_mask, scale)
    torch.testing.assert_close(c_new, got)
    torch.testing.assert_close(cos, naive_cosine(want.float(), c_cached), rtol=1e-5, atol=1e-5)


def test_dyllm_default_scale_is_inverse_sqrt_d():
    args = random_dyllm_inputs(1, 2, 5, 2, 2, 16, seed=3)
    q, k, dv, c_old, _, key_mask = args
    torch.testing.assert_close(dyllm.dyllm_context_update_reference(q, k, dv, c_old, key_mask),
                               dyllm.dyllm_context_update_reference(q, k, dv, c_old, key_mask, 0.25))


def test_cosine_rows_vs_naive_and_zero_safe():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 4, 3, 5, generator=g), torch.randn(2, 4, 3, 5, generator=g)
    a[0, 0] = 0  # zero vector: cosine 0, not NaN
    b[1, 1] = 2 * a[1, 1]
    got = dyllm.cosine_rows(a, b)
    torch.testing.assert_close(got, naive_cosine(a, b), rtol=1e-5, atol=1e-6)
    assert got[0, 0] == 0 and abs(float(got[1, 1]) - 1) < 1e-6


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------


def test_dispatch_uses_reference_on_cpu(monkeypatch):
    monkeypatch.delenv(kernels.FORCE_ENV, raising=False)
    assert not kernels.use_triton(torch.zeros(1))


def test_forced_triton_without_triton_raises(monkeypatch):
    monkeypatch.setenv(kernels.FORCE_ENV, "1")
    monkeypatch.setattr(kernels.dispatch, "TRITON_AVAILABLE", False)  # where use_triton reads it
    with pytest.raises(RuntimeError, match="triton"):
        kernels.focus_select(*hand_batch(["gate"])[:4])


def test_forced_compiled_kernel_on_cpu_raises_clearly(monkeypatch):
    if not kernels.TRITON_AVAILABLE:
        pytest.skip(f"triton failed to import: {kernels.TRITON_IMPORT_ERROR}")
    if type(selection._focus_select_kernel).__name__ == "InterpretedFunction":
        pytest.skip("suite itself runs under TRITON_INTERPRET=1: the kernel would just run")
    monkeypatch.setenv(kernels.FORCE_ENV, "1")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        kernels.focus_select(*hand_batch(["gate"])[:4])


# ---------------------------------------------------------------------------------------
# 3. Triton vs reference (bodies run in the interpreter subprocess)
# ---------------------------------------------------------------------------------------


def close(a, b, tol=1e-5):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def case_importance():
    g = torch.Generator().manual_seed(0)
    configs = [  # B, M, H, G, D, window, valid lengths
        (2, 11, 4, 2, 16, 3, [11, 6]),
        (2, 5, 2, 2, 8, 1, [0, 1]),
        (1, 9, 4, 1, 12, 5, [9]),
        (1, 70, 2, 1, 8, 3, [67]),  # two query tiles (BLOCK_Q = 64)
    ]
    for B, M, H, G, D, window, lengths in configs:
        q = torch.randn(B, M, H, D, generator=g)
        k = torch.randn(B, M, G, D, generator=g)
        valid = prefix_valid(lengths, M)
        close(kernels.focus_importance(q, k, valid, window),
              importance.focus_importance_reference(q, k, valid, window))
    # non-contiguous (head-major) inputs and bf16 inputs (kernels compute in fp32)
    q = torch.randn(2, 4, 8, 6, generator=g).transpose(1, 2)  # [B, M=8, H=4, D=6]
    k = torch.randn(2, 8, 2, 6, generator=g)
    valid = prefix_valid([8, 3], 8)
    close(kernels.focus_importance(q, k, valid), importance.focus_importance_reference(q, k, valid))
    qb, kb = q.bfloat16(), k.bfloat16()
    close(kernels.focus_importance(qb, kb, valid), importance.focus_importance_reference(qb, kb, valid))


def case_select():
    for S, ties in [(13, False), (13, True), (32, False), (5, True)]:
        args = random_select_inputs(12, S, seed=S, ties=ties)
        for opts in ALL_RULES:
            assert torch.equal(kernels.focus_select(*args, **opts),
                               selection.focus_select_reference(*args, **opts)), opts
    delta, masked, budget, progress, expected = hand_batch(sorted(HAND_CASES))
    assert kernels.focus_select(delta, masked, budget, progress, **OLD_RULES).tolist() == expected.tolist()


def case_select_options():
    """Both values of both options on random grids with arbitrary masked sets, marks in
    [-1, S), bf16-rounded or tied deltas; the default call must equal the reference."""
    g = torch.Generator().manual_seed(7)
    for S in (1, 3, 8, 17):
        B = 10
        masked = torch.rand(B, S, generator=g) < 0.75
        delta = torch.randn(B, S, generator=g).bfloat16().float()
        delta[: B // 2] = torch.randint(-1, 2, (B // 2, S), generator=g).float()  # ties
        delta = torch.where(masked, delta, torch.full_like(delta, float("nan")))
        budget = torch.randint(1, S + 2, (B,), generator=g)
        mark = torch.randint(-1, S, (B,), generator=g)
        for opts in ALL_RULES:
            got = kernels.focus_select(delta, masked, budget, mark, **opts)
            assert torch.equal(got, selection.focus_select_reference(delta, masked, budget, mark, **opts)), opts
        assert torch.equal(kernels.focus_select(delta, masked, budget, mark),
                           selection.focus_select_reference(delta, masked, budget, mark))


def case_compact():
    g = torch.Generator().manual_seed(0)
    keep = torch.rand(4, 13, generator=g) < 0.5
    keep[1], keep[2] = False, True
    for kp in (keep, torch.rand(2, 1030, generator=g) < 0.3):  # 1030: two L tiles of 1024
        index, valid = kernels.compact_rows(kp)
        r_index, r_valid = compaction.compact_rows_reference(kp)
        assert torch.equal(index, r_index) and torch.equal(valid, r_valid)
        width = int(kp.sum(1).max())  # read by the caller (focuslib.rows): the same rows
        for got in (kernels.compact_rows(kp, width), compaction.compact_rows_reference(kp, width)):
            assert torch.equal(got[0], r_index) and torch.equal(got[1], r_valid)


def case_gather():
    g = torch.Generator().manual_seed(0)
    index, _ = compaction.compact_rows_reference(torch.rand(2, 9, generator=g) < 0.6)
    xs = [
        torch.randn(2, 9, 3, 5, generator=g),
        torch.randn(2, 9, 6, generator=g).bfloat16(),
        torch.randint(0, 100, (2, 9), generator=g),  # no trailing dims
        torch.rand(2, 9, 4, generator=g) < 0.5,  # bool
        torch.randn(2, 6, 9, generator=g).transpose(1, 2),  # non-contiguous
    ]
    for x in xs:
        assert torch.equal(kernels.gather_rows(x, index), compaction.gather_rows_reference(x, index))


def case_dyllm():
    for B, L, T_, H, G, D in [(2, 4, 21, 4, 2, 16), (1, 2, 100, 2, 1, 8)]:  # 100: two key tiles
        q, k, dv, c_old, c_cached, key_mask = random_dyllm_inputs(B, L, T_, H, G, D, seed=T_)
        k[:, 64:] *= 4  # large scores in the second tile force the online-softmax rescale
        c_new, cos = kernels.dyllm_update_and_cosine(q, k, dv, c_old, c_cached, key_mask)
        r_new, r_cos = dyllm.dyllm_update_and_cosine_reference(q, k, dv, c_old, c_cached, key_mask)
        close(c_new, r_new)
        close(cos, r_cos)
        close(kernels.dyllm_context_update(q, k, dv, c_old, key_mask, 0.2),
              dyllm.dyllm_context_update_reference(q, k, dv, c_old, key_mask, 0.2))
    # bf16 in, bf16 out: identical fp32 math, so at most one bf16 rounding step apart
    args = random_dyllm_inputs(1, 3, 10, 2, 2, 8, seed=5, dtype=torch.bfloat16)
    c_new, cos = kernels.dyllm_update_and_cosine(*args)
    r_new, r_cos = dyllm.dyllm_update_and_cosine_reference(*args)
    assert c_new.dtype == torch.bfloat16
    close(c_new.float(), r_new.float(), tol=1e-2)
    close(cos, r_cos)


TRITON_CASES = {
    "importance": case_importance,
    "select": case_select,
    "select_options": case_select_options,
    "compact": case_compact,
    "gather": case_gather,
    "dyllm": case_dyllm,
}


def _run_cases() -> dict:
    """Run every Triton case in this (interpreter) process; name -> traceback or None."""
    assert type(selection._focus_select_kernel).__name__ == "InterpretedFunction"
    results = {}
    for name, fn in TRITON_CASES.items():
        try:
            fn()
            results[name] = None
        except Exception:  # noqa: BLE001 - reported back to the parent test
            results[name] = traceback.format_exc()
    return results


@pytest.fixture(scope="module")
def triton_results():
    if not kernels.TRITON_AVAILABLE:
        pytest.skip(f"triton failed to import: {kernels.TRITON_IMPORT_ERROR}")
    env = dict(os.environ, TRITON_INTERPRET="1", FOCUSLIB_FORCE_TRITON="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, __file__], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert proc.returncode == 0 and lines, f"interpreter run failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", list(TRITON_CASES))
def test_triton_matches_reference(triton_results, name):
    assert triton_results[name] is None, triton_results[name]


if __name__ == "__main__":
    print(json.dumps(_run_cases()))
