"""The FOCUS keep rule replayed offline on traces, and observed / simulated miss rates.

The rule is the decoder's (`focuslib.kernels.selection.focus_select_reference`; docs/design.md,
"FOCUS" section). With budget K, the step's masked rows M (one sequence, current block)
and delta = importance at layer 1 minus layer 0:
  a. |M| <= K: keep all;
  b. gate G = {delta >= mean + std} (mean and std over M); keep G if |G| >= K, else the
     top-K by delta (ties to the lower position). gate_std="population" (default, the
     FOCUS authors' rule): std divides by |M|; "sample": by |M| - 1 (focuslib's older rule).
     Decided exactly as the kernel does (float64, no sqrt; see `gate_mask`);
  c. adjacency: a kept row keeps its masked left neighbour (position - 1);
  d. nothing kept: keep all;
  e. progress, with rightmost = the right-most masked row kept by a-d:
     "mark" (default, the authors' rule): an evicted row left of rightmost is kept again
       only if its position is > mark, the furthest position kept at an EARLIER step of
       the same block (-1 at the block's first step: positions are >= 0, so -1 means
       "nothing processed yet"); after each step, mark = max(mark, rightmost);
     "fill" (focuslib's older rule): keep every masked row from the first one to rightmost;
     None / "none": no progress rule.
     progress=True means the default "mark" and False means None (the old boolean flag).

The mark can be kept in absolute positions (as the trace's `position`) or in block slots,
as long as `positions` and `mark` use the same units and it restarts per (seq, block).
`simulate_keep` and `simulated_miss_curve` carry it over the steps of each (seq, block)
in step order, so they need every step of a block from its first one (as `step_table`).

Approximation of the mark: the decoder advances it to the right-most kept row of ANY kind,
including unmasked rows computed at that step, which a trace (masked rows only) does not
list; the replay uses the right-most kept masked row. The two agree whenever no unmasked
row of the block lies right of both the mark and that row (e.g. when the right-most row
the decoder keeps is a masked one), and in particular whenever every unmasked row of the
block was committed at a step where the replayed rule kept it (a committed row had logits,
so it lay at or left of that step's mark). That holds on an eviction run's own trace and
on the steps where an eviction run and its dense run agree; on the rest of a dense trace
the dense run may have committed a row the replayed rule evicted, and the replay's mark
ignores that row.

With "mark" a larger budget is not always safer: it also moves the mark further, so later
steps bring fewer rows back; miss rates are nearly, not strictly, decreasing in alpha.

This is analysis code: a Python loop over steps is fine here, unlike in the decoder.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from focuslib.stats.labels import STEP_KEYS, budget, ensure_labels, step_table

GATE_STD_OPTIONS = ("population", "sample")
PROGRESS_OPTIONS = ("mark", "fill", None)


def progress_rule(progress: str | bool | None) -> str | None:
    """Normalise a `progress` option: "mark", "fill" or None (no progress rule).

    True (the old boolean flag's "on") means the default "mark"; False and "none" mean None.

    >>> progress_rule(True), progress_rule("fill"), progress_rule("none"), progress_rule(False)
    ('mark', 'fill', None, None)
    """
    if progress is True:
        return "mark"
    if progress is False or progress is None or progress == "none":
        return None
    if progress in ("mark", "fill"):
        return progress
    raise ValueError(f"progress must be 'mark', 'fill', None/'none' (or True/False), got {progress!r}")


def sample_std(gate_std: str = "population", ddof: int | None = None) -> bool:
    """True if the gate's std divides by n - 1 ("sample", ddof=1), False for n ("population", ddof=0).

    `ddof`, when given, overrides `gate_std` (the older keyword).

    >>> sample_std(), sample_std("sample"), sample_std(ddof=0)
    (False, True, False)
    """
    if ddof is not None:
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 (population) or 1 (sample), got {ddof!r}")
        return ddof == 1
    if gate_std not in GATE_STD_OPTIONS:
        raise ValueError(f"gate_std must be one of {GATE_STD_OPTIONS}, got {gate_std!r}")
    return gate_std == "sample"


def gate_mask(delta: np.ndarray, sample: bool = False) -> np.ndarray:
    """delta >= mean + std along the last axis, decided as the kernel does (`focuslib.kernels.selection._gate`).

    With u = n d - sum(d) = n (d - mean): d >= mean + std  <=>  u >= 0 and c u^2 >= sum(u^2),
    c = n (population std) or max(n - 1, 1) (sample std). In float64 without sqrt this is
    exact for tied, integer or float32-valued deltas of moderate range, so a delta exactly
    on the threshold is in the gate, as in the decoder.

    >>> gate_mask(np.array([1.0, 1.0, 3.0, 3.0])).tolist()  # mean 2, population std 1
    [False, False, True, True]
    >>> gate_mask(np.array([1.0, 1.0, 3.0, 3.0]), sample=True).tolist()  # sample std 1.15
    [False, False, False, False]
    """
    d = np.asarray(delta, dtype=float)
    n = d.shape[-1]
    u = n * d - d.sum(-1, keepdims=True)
    c = max(n - 1, 1) if sample else n
    return (u >= 0) & (c * (u * u) >= (u * u).sum(-1, keepdims=True))


def _top_k(positions: np.ndarray, delta: np.ndarray, k: int) -> np.ndarray:
    """Bool mask of the k largest deltas, ties broken towards the lower position."""
    order = np.lexsort((positions, -delta))
    keep = np.zeros(len(delta), dtype=bool)
    keep[order[:k]] = True
    return keep


def focus_keep_mask(positions: np.ndarray, delta: np.ndarray, budget: int, *, adjacency: bool = True,
                    progress: str | bool | None = "mark", mark: int = -1, gate_std: str = "population",
                    ddof: int | None = None) -> np.ndarray:
    """Rows of one step (one sequence's masked rows of the block) that FOCUS keeps.

    positions: block slots or absolute positions of the step's masked rows; mark: the
    furthest position (same units) kept at earlier steps of this block, -1 at its first
    step (used by progress="mark" only). ddof (0 or 1), if given, overrides gate_std.
    See the module docstring for the rules.

    >>> focus_keep_mask([0, 1, 2, 3, 4, 5], [0.0, -1.0, 3.0, -1.0, -0.4, -0.6], budget=2).tolist()
    [True, True, True, False, False, False]
    >>> d = [0.0, 0.0, 0.0, 0.0, 5.0, 0.0]  # gate {4}, adjacency adds 3
    >>> focus_keep_mask(range(6), d, 1).astype(int).tolist()  # mark -1: 0..2 forced back
    [1, 1, 1, 1, 1, 0]
    >>> focus_keep_mask(range(6), d, 1, mark=1).astype(int).tolist()  # 0, 1 were processed earlier
    [0, 0, 1, 1, 1, 0]
    >>> focus_keep_mask(range(6), d, 1, mark=1, progress="fill").astype(int).tolist()
    [1, 1, 1, 1, 1, 0]
    """
    rule, sample = progress_rule(progress), sample_std(gate_std, ddof)
    pos, d = np.asarray(positions), np.asarray(delta, dtype=float)
    n = len(d)
    if n <= budget:
        return np.ones(n, dtype=bool)
    gate = gate_mask(d, sample)
    keep = gate if gate.sum() >= budget else _top_k(pos, d, budget)
    if adjacency:
        keep = keep | np.isin(pos, pos[keep] - 1)
    if not keep.any():
        return np.ones(n, dtype=bool)
    rightmost = pos[keep].max()
    if rule == "fill":
        keep = keep | ((pos >= pos.min()) & (pos <= rightmost))
    elif rule == "mark":
        keep = keep | ((pos < rightmost) & (pos > mark))
    return keep


def _step_slices(trace: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """Step index per row (same order as `step_table`) and the row indices of each step."""
    codes = trace.groupby(STEP_KEYS, sort=True).ngroup().to_numpy()
    order = np.argsort(codes, kind="stable")
    return codes, np.split(order, np.cumsum(np.bincount(codes))[:-1])


def _step_blocks(steps: pd.DataFrame) -> list[tuple]:
    """(seq, block) of each row of a `step_table`: the key the progress mark is carried under."""
    return list(zip(steps["seq"].tolist(), steps["block"].tolist()))


def simulate_keep(trace: pd.DataFrame, alpha: float = 1.5, avg_decoded: float | None = None, *,
                  adjacency: bool = True, progress: str | bool | None = "mark",
                  gate_std: str = "population") -> pd.DataFrame:
    """Copy of `trace` with `budget`, `kept_sim` (the FOCUS rule applied offline) and `mark_sim`.

    Meant for a trace recorded with eviction `none` (importance computed, nothing
    evicted), so every step's full set M is present. `avg_decoded` fixes a; by
    default a is rebuilt per step as the decoder does (see `step_table`). `mark_sim` is
    the progress mark the step saw (in the trace's positions; -1 at a block's first
    step), carried over the steps of each (seq, block) as the module docstring says.

    >>> t = pd.DataFrame({"seq": 0, "block": 0, "step": 0, "position": [0, 1, 2],
    ...                   "delta": [1.0, 0.0, -1.0]})
    >>> simulate_keep(t, alpha=1.0)["kept_sim"].tolist()
    [True, False, False]
    >>> t2 = pd.DataFrame({"seq": 0, "block": 0, "step": [0, 0, 0, 1, 1, 1], "position": [0, 1, 2, 0, 1, 2],
    ...                    "delta": [0.0, 2.0, 0.0, 0.0, 0.0, 3.0]})
    >>> s = simulate_keep(t2, alpha=1.0, avg_decoded=1.0)  # K = 1; step 0 keeps {0, 1}: mark 1
    >>> s["kept_sim"].astype(int).tolist(), s["mark_sim"].tolist()
    ([1, 1, 0, 0, 1, 1], [-1, -1, -1, 1, 1, 1])
    """
    rule = progress_rule(progress)
    sample_std(gate_std)  # validate once, not per step
    out = trace.reset_index(drop=True)
    codes, slices = _step_slices(out)
    steps = step_table(out, alpha, avg_decoded)
    k, blocks = steps["budget"].to_numpy(), _step_blocks(steps)
    pos, d = out["position"].to_numpy(), out["delta"].to_numpy(dtype=float)
    kept = np.zeros(len(out), dtype=bool)
    marks: dict[tuple, int] = {}
    mark_sim = np.full(len(out), -1, dtype=np.int64)
    for s, idx in enumerate(slices):
        mark = marks.get(blocks[s], -1)
        keep = focus_keep_mask(pos[idx], d[idx], int(k[s]), adjacency=adjacency, progress=rule, mark=mark,
                               gate_std=gate_std)
        kept[idx], mark_sim[idx] = keep, mark
        marks[blocks[s]] = max(mark, int(pos[idx][keep].max()))
    return out.assign(budget=k[codes], kept_sim=kept, mark_sim=mark_sim)


def simulated_miss_curve(dense_trace: pd.DataFrame, alphas: np.ndarray, avg_decoded: float | None = None,
                         label: str = "decodable_now", *, adjacency: bool = True,
                         progress: str | bool | None = "mark", gate_std: str = "population") -> np.ndarray:
    """`simulated_miss_rate` for several alphas in one pass.

    Each alpha carries its own progress mark over the steps of each (seq, block) (see the
    module docstring). Without the mark rule, steps without decodable rows are skipped.

    >>> t = pd.DataFrame({"seq": 0, "block": 0, "step": 0, "position": [0, 1, 2],
    ...                   "delta": [1.0, 0.0, -1.0], "committed_step": [0, 1, 0]})
    >>> simulated_miss_curve(t, [1.0, 3.0]).tolist()
    [0.5, 0.0]
    """
    rule = progress_rule(progress)
    sample_std(gate_std)
    t = ensure_labels(dense_trace.reset_index(drop=True), label)
    _, slices = _step_slices(t)
    steps = step_table(t, 1.0, avg_decoded)
    blocks = _step_blocks(steps)
    ks = np.stack([budget(float(al), steps["a"].to_numpy()) for al in np.atleast_1d(alphas)], axis=1)  # [steps, A]
    pos, d, y = t["position"].to_numpy(), t["delta"].to_numpy(dtype=float), t[label].to_numpy(dtype=bool)
    missed = np.zeros(ks.shape[1])
    no_mark = np.full(ks.shape[1], -1, dtype=np.int64)
    marks: dict[tuple, np.ndarray] = {}
    for s, idx in enumerate(slices):
        ys = y[idx]
        if rule != "mark" and not ys.any():
            continue
        p = pos[idx]
        mk = marks.get(blocks[s], no_mark) if rule == "mark" else no_mark
        new = mk.copy()
        for k, m in np.unique(np.stack([ks[s], mk], axis=1), axis=0):
            keep = focus_keep_mask(p, d[idx], int(k), adjacency=adjacency, progress=rule, mark=int(m),
                                   gate_std=gate_std)
            which = (ks[s] == k) & (mk == m)
            missed[which] += (ys & ~keep).sum()
            new[which] = max(int(m), int(p[keep].max()))
        if rule == "mark":
            marks[blocks[s]] = new
    return missed / y.sum() if y.any() else np.full(ks.shape[1], np.nan)


def _miss_rate(kept: np.ndarray, label: np.ndarray) -> float:
    """Fraction of labelled rows not kept (NaN without labelled rows)."""
    label = label.astype(bool)
    return float((label & ~kept.astype(bool)).sum() / label.sum()) if label.any() else float("nan")


def simulated_miss_rate(dense_trace: pd.DataFrame, alpha: float = 1.5, avg_decoded: float | None = None,
                        label: str = "decodable_now", *, adjacency: bool = True,
                        progress: str | bool | None = "mark", gate_std: str = "population") -> float:
    """Fraction of decodable rows of a dense trace that the FOCUS rule would evict.

    A one-trace estimator: labels come from the dense run itself, so it ignores that
    evicting a row changes later steps (see `observed_miss_rate` for the paired one); the
    progress mark is carried over the replayed keep sets of the dense run's steps.

    >>> t = pd.DataFrame({"seq": 0, "block": 0, "step": 0, "position": [0, 1, 2],
    ...                   "delta": [1.0, 0.0, -1.0], "committed_step": [0, 1, 0]})
    >>> simulated_miss_rate(t, alpha=1.0)
    0.5
    """
    return float(simulated_miss_curve(dense_trace, [alpha], avg_decoded, label, adjacency=adjacency,
                                      progress=progress, gate_std=gate_std)[0])


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
