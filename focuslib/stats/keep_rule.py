"""The FOCUS keep rule replayed offline on traces, and observed / simulated miss rates.

The rule follows kernels/selection.py (DESIGN.md section 4): with budget K and the
step's masked rows M,
  a. |M| <= K: keep all;
  b. G = {delta >= mean + unbiased std}; keep G if |G| >= K, else the top-K by delta
     (ties to the lower position);
  c. adjacency: a kept row keeps its left neighbour (position - 1);
  d. nothing kept: keep all;
  e. progress: keep every row from the first masked position up to the rightmost kept.
This is analysis code: a Python loop over steps is fine here, unlike in the decoder.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from focuslib.stats.labels import STEP_KEYS, budget, ensure_labels, step_table


def _top_k(positions: np.ndarray, delta: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k largest deltas, ties broken towards the lower position."""
    order = np.lexsort((positions, -delta))
    keep = np.zeros(len(delta), dtype=bool)
    keep[order[:k]] = True
    return keep


def focus_keep_mask(positions: np.ndarray, delta: np.ndarray, budget: int, *, adjacency: bool = True,
                    progress: bool = True, ddof: int = 1) -> np.ndarray:
    """Rows of one step (one sequence's masked rows of the block) that FOCUS keeps.

    >>> focus_keep_mask([0, 1, 2, 3, 4, 5], [0.0, -1.0, 3.0, -1.0, -0.4, -0.6], budget=2).tolist()
    [True, True, True, False, False, False]
    """
    pos, d = np.asarray(positions), np.asarray(delta, dtype=float)
    n = len(d)
    if n <= budget:
        return np.ones(n, dtype=bool)
    gate = d >= d.mean() + (d.std(ddof=ddof) if n > ddof else 0.0)
    keep = gate if gate.sum() >= budget else _top_k(pos, d, budget)
    if adjacency:
        keep = keep | np.isin(pos, pos[keep] - 1)
    if not keep.any():
        return np.ones(n, dtype=bool)
    if progress:
        keep = keep | ((pos >= pos.min()) & (pos <= pos[keep].max()))
    return keep


def _step_slices(trace: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """Step index per row (same order as `step_table`) and the row indices of each step."""
    codes = trace.groupby(STEP_KEYS, sort=True).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    return codes, np.split(order, np.cumsum(np.bincount(codes))[:-1])


def simulate_keep(trace: pd.DataFrame, alpha: float = 1.5, avg_decoded: float | None = None, *,
                  adjacency: bool = True, progress: bool = True) -> pd.DataFrame:
    """Copy of `trace` with `budget` and `kept_sim` (the FOCUS rule applied offline).

    Meant for a trace recorded with eviction `none` (importance computed, nothing
    evicted), so every step's full set M is present. `avg_decoded` fixes a; by
    default a is rebuilt per step as the decoder does (see `step_table`).

    >>> t = pd.DataFrame({"seq": 0, "block": 0, "step": 0, "position": [0, 1, 2],
    ...                   "delta": [1.0, 0.0, -1.0]})
    >>> simulate_keep(t, alpha=1.0)["kept_sim"].tolist()
    [True, False, False]
    """
    out = trace.reset_index(drop=True)
    codes, slices = _step_slices(out)
    k = step_table(out, alpha, avg_decoded)["budget"].to_numpy()
    pos, d = out["position"].to_numpy(), out["delta"].to_numpy(dtype=float)
    kept = np.zeros(len(out), dtype=bool)
    for s, idx in enumerate(slices):
        kept[idx] = focus_keep_mask(pos[idx], d[idx], int(k[s]), adjacency=adjacency, progress=progress)
    return out.assign(budget=k[codes], kept_sim=kept)


def simulated_miss_curve(dense_trace: pd.DataFrame, alphas: np.ndarray, avg_decoded: float | None = None,
                         label: str = "decodable_now", *, adjacency: bool = True, progress: bool = True) -> np.ndarray:
    """`simulated_miss_rate` for several alphas in one pass (steps without decodable rows skipped).

    >>> t = pd.DataFrame({"seq": 0, "block": 0, "step": 0, "position": [0, 1, 2],
    ...                   "delta": [1.0, 0.0, -1.0], "committed_step": [0, 1, 0]})
    >>> simulated_miss_curve(t, [1.0, 3.0]).tolist()
    [0.5, 0.0]
    """
    t = ensure_labels(dense_trace.reset_index(drop=True), label)
    _, slices = _step_slices(t)
    a = step_table(t, 1.0, avg_decoded)["a"].to_numpy()
    ks = np.stack([budget(float(al), a) for al in np.atleast_1d(alphas)], axis=1)  # [steps, alphas]
    pos, d, y = t["position"].to_numpy(), t["delta"].to_numpy(dtype=float), t[label].to_numpy(dtype=bool)
    missed = np.zeros(ks.shape[1])
    for s, idx in enumerate(slices):
        if not y[idx].any():
            continue
        for k in np.unique(ks[s]):
            keep = focus_keep_mask(pos[idx], d[idx], int(k), adjacency=adjacency, progress=progress)
            missed[ks[s] == k] += (y[idx] & ~keep).sum()
    return missed / y.sum() if y.any() else np.full(ks.shape[1], np.nan)


def _miss_rate(kept: np.ndarray, label: np.ndarray) -> float:
    """Fraction of labelled rows not kept (NaN without labelled rows)."""
    label = label.astype(bool)
    return float((label & ~kept.astype(bool)).sum() / label.sum()) if label.any() else float("nan")


def simulated_miss_rate(dense_trace: pd.DataFrame, alpha: float = 1.5, avg_decoded: float | None = None,
                        label: str = "decodable_now", *, adjacency: bool = True, progress: bool = True) -> float:
    """Fraction of decodable rows of a dense trace that the FOCUS rule would evict.

    A one-trace estimator: labels come from the dense run itself, so it ignores that
    evicting a row changes later steps (see `observed_miss_rate` for the paired one).

    >>> t = pd.DataFrame({"seq": 0, "block": 0, "step": 0, "position": [0, 1, 2],
    ...                   "delta": [1.0, 0.0, -1.0], "committed_step": [0, 1, 0]})
    >>> simulated_miss_rate(t, alpha=1.0)
    0.5
    """
    return float(simulated_miss_curve(dense_trace, [alpha], avg_decoded, label, adjacency=adjacency,
                                      progress=progress)[0])


def _step_signature(trace: pd.DataFrame) -> pd.DataFrame:
    """Per (seq, step): the block and the set of still-masked positions, as a string."""
    return trace.groupby(STEP_KEYS, sort=True).agg(
        block=("block", "first"), masked=("position", lambda p: ",".join(map(str, sorted(p)))))


def agreeing_steps(evict_trace: pd.DataFrame, dense_trace: pd.DataFrame) -> pd.DataFrame:
    """(seq, step) pairs at which the two runs are still in the same block state.

    Same state = same block and same set of masked positions, at this step and every
    earlier step of the sequence (agreement is a prefix: once the runs diverge they
    are not compared again, even if the masks happen to match later).

    >>> e = pd.DataFrame({"seq": 0, "step": [0, 0, 1], "block": 0, "position": [0, 1, 1]})
    >>> d = pd.DataFrame({"seq": 0, "step": [0, 0, 1], "block": 0, "position": [0, 1, 0]})
    >>> agreeing_steps(e, d).values.tolist()
    [[0, 0]]
    """
    sig = _step_signature(evict_trace).merge(_step_signature(dense_trace), how="outer", left_index=True,
                                             right_index=True, suffixes=("_e", "_d")).sort_index()
    same = (sig["block_e"] == sig["block_d"]) & (sig["masked_e"] == sig["masked_d"])
    prefix = same.astype(int).groupby(level="seq").cummin().astype(bool)
    return sig.index[prefix.to_numpy()].to_frame(index=False)


def agreeing_rows(evict_trace: pd.DataFrame, dense_trace: pd.DataFrame,
                  label: str = "decodable_now") -> pd.DataFrame:
    """Rows of agreeing steps: `kept` from the eviction run, labels and delta from the dense run.

    >>> e = pd.DataFrame({"seq": 0, "step": 0, "block": 0, "position": [0, 1], "kept": [True, False]})
    >>> d = pd.DataFrame({"seq": 0, "step": 0, "block": 0, "position": [0, 1], "delta": [0.5, -0.5],
    ...                   "committed_step": [1, 0]})
    >>> agreeing_rows(e, d)[["position", "kept", "decodable_now"]].values.tolist()
    [[0, True, False], [1, False, True]]
    """
    steps = agreeing_steps(evict_trace, dense_trace)
    dense = ensure_labels(dense_trace, label)
    cols = [c for c in ("block", "delta", label, "committed_step") if c in dense.columns]
    ev = evict_trace[STEP_KEYS + ["position", "kept"]].merge(steps, on=STEP_KEYS)
    return ev.merge(dense[STEP_KEYS + ["position"] + cols], on=STEP_KEYS + ["position"])


def observed_miss_rate(evict_trace: pd.DataFrame, dense_trace: pd.DataFrame, label: str = "decodable_now") -> float:
    """Fraction of rows decodable in the dense run that the eviction run evicted.

    Counted over the steps where both runs still agree (`agreeing_steps`). A miss
    usually makes the runs diverge, so each sequence is observed until about its first
    miss; the ratio of summed misses to summed decodable rows is used (an average of
    per-sequence rates would over-weight short, miss-ended observations). The agreeing
    steps are not a random sample of the dense run's steps, though: they over-represent
    the first steps of each sequence (block starts, small budgets). To compare with a
    model prediction, predict on the same steps, e.g.
    `predicted_miss_rate(dense.merge(agreeing_steps(evict, dense), on=["seq", "step"]), alpha)`
    (agreement is a prefix of each sequence, so the per-step budgets are unchanged).

    >>> e = pd.DataFrame({"seq": 0, "step": 0, "block": 0, "position": [0, 1], "kept": [True, False]})
    >>> d = pd.DataFrame({"seq": 0, "step": 0, "block": 0, "position": [0, 1], "committed_step": [0, 0]})
    >>> observed_miss_rate(e, d)
    0.5
    """
    rows = agreeing_rows(evict_trace, dense_trace, label)
    return _miss_rate(rows["kept"].to_numpy(), rows[label].to_numpy())
