"""Decodability labels, per-step standardisation and per-step budgets of a trace.

A trace (see `focuslib.trace`) has one row per (step, seq, still-masked position of
the current block). The set of rows sharing (seq, step) is the set M that the FOCUS
keep rule sees at that step, so (seq, step) is the natural group for everything here.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

STEP_KEYS = ["seq", "step"]  # one FOCUS decision (the set M of one sequence at one step)
BLOCK_KEYS = ["seq", "block"]
BUDGET_EPS = 1e-6  # same epsilon as focuslib.policies.budget.FocusBudget: ceil(1.5 * 2) == 3 despite rounding


def group_keys(by: str) -> list[str]:
    """Columns that define a group: "step" -> (seq, step), "block" -> (seq, block), "pooled" -> none.

    >>> group_keys("step")
    ['seq', 'step']
    """
    keys = {"step": STEP_KEYS, "block": BLOCK_KEYS, "pooled": []}
    if by not in keys:
        raise ValueError(f"by must be one of {sorted(keys)}, got {by!r}")
    return list(keys[by])


def decodability_labels(trace: pd.DataFrame, k: int = 1) -> pd.DataFrame:
    """Copy of `trace` with `decodable_now`, `decodable_within_k` and `steps_to_commit`.

    `decodable_now` = the row is committed at this very step; `decodable_within_k` =
    committed fewer than k steps from now (k=1 equals decodable_now). Positions never
    committed (committed_step < 0, e.g. the run stopped at EOS) are not decodable and
    get steps_to_commit = NaN, so a negative difference is never read as "soon".

    >>> t = pd.DataFrame({"step": [0, 0, 1], "committed_step": [0, 2, -1]})
    >>> decodability_labels(t, k=3)[["decodable_now", "decodable_within_k", "steps_to_commit"]].values.tolist()
    [[True, True, 0.0], [False, True, 2.0], [False, False, nan]]
    """
    out = trace.copy()
    committed = out["committed_step"].to_numpy(dtype=float)
    steps = np.where(committed >= 0, committed - out["step"].to_numpy(dtype=float), np.nan)
    out["steps_to_commit"] = steps
    out["decodable_now"] = steps == 0
    out["decodable_within_k"] = steps < k  # NaN compares False
    return out


def ensure_labels(trace: pd.DataFrame, label: str) -> pd.DataFrame:
    """`trace` itself if it has column `label`, else with decodability labels added (k=1)."""
    return trace if label in trace.columns else decodability_labels(trace)


def standardize_within_steps(trace: pd.DataFrame, column: str = "delta", ddof: int = 0) -> pd.Series:
    """(x - mean) / std of `column` within each (seq, step), over all rows of the step.

    Why: deltas sum to ~0 in a step and their spread changes from step to step, so
    pooling raw deltas mixes scales (a scale mixture looks heavy-tailed even when each
    step is Gaussian). The mean and the population std (ddof=0, default) over all masked
    rows are exactly what the FOCUS gate uses (docs/design.md, "FOCUS" section), so the
    gate sits at z = 1 in these units; ddof=1 gives the units of focuslib's older
    sample-std gate. NaN where a step has fewer than 2 rows or zero spread.

    >>> t = pd.DataFrame({"seq": 0, "step": [0, 0, 0, 0], "delta": [1.0, 1.0, 3.0, 3.0]})
    >>> standardize_within_steps(t).tolist()  # mean 2, population std 1
    [-1.0, -1.0, 1.0, 1.0]
    >>> standardize_within_steps(t.iloc[:3], ddof=1).round(4).tolist()  # mean 5/3, sample std 1.1547
    [-0.5774, -0.5774, 1.1547]
    """
    grouped = trace.groupby(STEP_KEYS, sort=False)[column]
    mean = grouped.transform("mean")
    std = grouped.transform("std", ddof=ddof)
    z = (trace[column] - mean) / std.where(std > 0)
    return z.rename(f"{column}_z")


def budget(alpha: float, a: np.ndarray | float) -> np.ndarray:
    """FOCUS budget K = max(1, ceil(alpha * max(a, 1))) (same rounding as FocusBudget).

    >>> budget(1.5, np.array([0.5, 2.0, 3.0])).tolist()
    [2, 3, 5]
    """
    a = np.maximum(np.asarray(a, dtype=float), 1.0)
    return np.maximum(1, np.ceil(alpha * a - BUDGET_EPS)).astype(int)


def step_table(trace: pd.DataFrame, alpha: float = 1.5, avg_decoded: float | None = None) -> pd.DataFrame:
    """One row per (seq, step): block, n_rows (= |M|), a (tokens decoded per step so far
    in the block, 1 at block start), budget K.

    `a` is rebuilt the way the decoder does it: (masked rows at the block's first step
    - masked rows now) / steps already spent in the block. Pass `avg_decoded` to use a
    fixed a instead. Needs the complete trace of each step (no row filtering).

    >>> t = pd.DataFrame({"seq": 0, "block": 0, "step": [0, 0, 0, 0, 1, 1]})
    >>> step_table(t, alpha=1.5)[["step", "n_rows", "a", "budget"]].values.tolist()
    [[0.0, 4.0, 1.0, 2.0], [1.0, 2.0, 2.0, 3.0]]
    """
    steps = (trace.groupby(STEP_KEYS, sort=True).agg(block=("block", "first"), n_rows=("block", "size"))
             .reset_index())
    in_block = steps.groupby(BLOCK_KEYS, sort=False)
    spent = in_block.cumcount().to_numpy()
    decoded = (in_block["n_rows"].transform("first") - steps["n_rows"]).to_numpy()
    a = np.where(spent > 0, decoded / np.maximum(spent, 1), 1.0)
    steps["a"] = a if avg_decoded is None else float(avg_decoded)
    steps["budget"] = budget(alpha, steps["a"].to_numpy())
    return steps

