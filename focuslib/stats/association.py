"""Does a signal (imp0, imp1, delta, confidence) predict a binary label (decodable)?

AUC answers "how often does a decodable row outrank a non-decodable one", which is
what a ranking eviction rule needs; Spearman and point-biserial are reported beside
it for readers used to correlations. Confidence intervals come from a bootstrap that
can resample whole groups (e.g. steps): rows of one step share a softmax and are not
independent.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from focuslib.stats.labels import ensure_labels

SIGNALS = ("imp0", "imp1", "delta", "confidence")
"""Trace columns compared against decodability by default (`association_table`)."""


def _clean(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop rows whose score is NaN (evicted rows have no confidence); labels -> bool."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels).astype(bool)
    ok = ~np.isnan(s)
    return s[ok], y[ok]


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counted 1/2.

    Rank (Mann-Whitney) formula with average ranks; NaN scores are dropped; NaN if a
    class is empty.

    >>> auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    0.75
    >>> auc([1.0, 1.0], [0, 1])
    0.5
    """
    s, y = _clean(scores, labels)
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) for the rule "score >= threshold", thresholds decreasing.

    Starts at (0, 0) with threshold +inf; tied scores form one point, so the
    trapezoid area equals `auc` (ties 1/2): `np.trapezoid(tpr, fpr)`.

    >>> fpr, tpr, thr = roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    >>> fpr.tolist(), tpr.tolist()
    ([0.0, 0.0, 0.5, 0.5, 1.0], [0.0, 0.5, 0.5, 1.0, 1.0])
    """
    s, y = _clean(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = last + 1 - tps
    fpr = np.r_[0.0, fps / max(len(y) - y.sum(), 1)]
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    return fpr, tpr, np.r_[np.inf, s[last]]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (scipy.stats.spearmanr); NaN pairs dropped; NaN if constant.

    >>> round(spearman([1, 2, 3, 4], [10, 20, 30, 25]), 6)
    0.8
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = ~(np.isnan(x) | np.isnan(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x[ok], y[ok]).statistic)


def point_biserial(scores: np.ndarray, labels: np.ndarray) -> float:
    """Point-biserial correlation (Pearson r of score against a 0/1 label), scipy.stats.

    >>> round(point_biserial([1.0, 2.0, 3.0, 4.0], [0, 0, 1, 1]), 4)
    0.8944
    """
    s, y = _clean(scores, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.pointbiserialr(y, s).statistic)


def binary_association(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """[auc, spearman, point_biserial] with one ranking (fast path for the bootstrap).

    With a binary label, Spearman equals Pearson between rank(score) and the label
    (ranks of a 0/1 variable are an affine map of it), so one rankdata serves both.

    >>> binary_association([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]).round(4).tolist()
    [0.75, 0.4472, 0.6476]
    """
    s, y = _clean(scores, labels)
    n1 = int(y.sum())
    if n1 == 0 or n1 == len(y) or np.ptp(s) == 0:
        return np.array([auc(s, y), np.nan, np.nan])
    ranks = stats.rankdata(s)
    area = (ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1))
    yf = y.astype(float)
    return np.array([area, np.corrcoef(ranks, yf)[0, 1], np.corrcoef(s, yf)[0, 1]])


def _group_rows(groups: np.ndarray) -> list[np.ndarray]:
    """Row indices of each distinct group value (groups: 1-D, one value per row)."""
    codes, _ = pd.factorize(np.asarray(groups))
    order = np.argsort(codes, kind="stable")
    return np.split(order, np.cumsum(np.bincount(codes))[:-1])


def bootstrap_ci(stat_fn: Callable[..., float | np.ndarray], *arrays: np.ndarray, n_resamples: int = 1000,
                 confidence: float = 0.95, seed: int = 0, groups: np.ndarray | None = None,
                 method: str = "percentile") -> tuple:
    """Bootstrap (lo, hi) of stat_fn(*arrays) via scipy.stats.bootstrap; rows resampled jointly.

    `groups` (one value per row, e.g. a step id) switches to a cluster bootstrap that
    resamples whole groups, the right thing when rows of a group are dependent. The
    default "percentile" method is used because BCa needs a jackknife (one call per
    row or group). A vector-valued stat_fn gives arrays lo, hi.

    >>> x = np.arange(100.0)
    >>> lo, hi = bootstrap_ci(np.mean, x, n_resamples=200)
    >>> bool(lo < 49.5 < hi)
    True
    """
    arrays = tuple(np.asarray(a) for a in arrays)
    kw = dict(n_resamples=n_resamples, confidence_level=confidence, method=method,
              rng=np.random.default_rng(seed), vectorized=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if groups is None:
            res = stats.bootstrap(arrays, stat_fn, paired=True, **kw)
        else:
            rows = _group_rows(np.asarray(groups))

            def on_groups(g: np.ndarray) -> float | np.ndarray:
                idx = np.concatenate([rows[i] for i in g.astype(int)])
                return stat_fn(*(a[idx] for a in arrays))

            res = stats.bootstrap((np.arange(len(rows)),), on_groups, **kw)
    lo, hi = res.confidence_interval
    return (float(lo), float(hi)) if np.ndim(lo) == 0 else (np.asarray(lo), np.asarray(hi))


def _group_ids(trace: pd.DataFrame, groups: str | Sequence[str] | None) -> np.ndarray | None:
    """One integer id per row for the cluster bootstrap (None: resample rows)."""
    if groups is None:
        return None
    cols = [groups] if isinstance(groups, str) else list(groups)
    return trace.groupby(cols, sort=False).ngroup().to_numpy()


def association_table(trace: pd.DataFrame, signals: Sequence[str] = SIGNALS, label: str = "decodable_now",
                      n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                      groups: str | Sequence[str] | None = None) -> pd.DataFrame:
    """One row per signal: n, n_pos, auc, spearman, point_biserial and their bootstrap CIs.

    `groups=("seq", "step")` resamples whole steps. Rows with NaN signal are dropped per
    signal (confidence is NaN where a row was evicted).

    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"delta": rng.normal(size=200), "decodable_now": np.arange(200) % 4 == 0})
    >>> t.loc[t.decodable_now, "delta"] += 2.0
    >>> tab = association_table(t, signals=["delta"], n_resamples=100)
    >>> bool(tab.loc["delta", "auc_lo"] < tab.loc["delta", "auc"] < tab.loc["delta", "auc_hi"])
    True
    """
    trace = ensure_labels(trace, label)
    names = ["auc", "spearman", "point_biserial"]
    out = []
    for sig in signals:
        ok = trace[sig].notna().to_numpy()
        s, y = trace[sig].to_numpy(dtype=float)[ok], trace[label].to_numpy(dtype=bool)[ok]
        gid = _group_ids(trace.loc[ok], groups)
        est = binary_association(s, y)
        lo, hi = bootstrap_ci(binary_association, s, y, n_resamples=n_resamples, confidence=confidence,
                              seed=seed, groups=gid)
        row = {"signal": sig, "n": int(len(y)), "n_pos": int(y.sum())}
        for i, name in enumerate(names):
            row.update({name: est[i], f"{name}_lo": lo[i], f"{name}_hi": hi[i]})
        out.append(row)
    return pd.DataFrame(out).set_index("signal")


def within_step_auc(trace: pd.DataFrame, score: str = "score", label: str = "dense_commit",
                    steps: Sequence[str] = ("seq", "step"), n_resamples: int = 1000, confidence: float = 0.95,
                    seed: int = 0) -> dict[str, float]:
    """Mean over steps of the AUC of `score` for `label` among one step's rows, with a step-bootstrap CI.

    What a ranking eviction rule needs: within one step, do the rows about to be committed
    outrank the others? Steps where every row (or no row) has the label carry no ranking
    information and are skipped (`n_steps` counts the informative ones). Rows with a NaN
    score are dropped. Default label: `dense_commit` of `generate(..., dense_labels=True)`.

    >>> t = pd.DataFrame({"seq": 0, "step": [0, 0, 0, 1, 1, 1], "score": [3.0, 1, 2, 1, 2, 3],
    ...                   "dense_commit": [True, False, False, False, True, False]})
    >>> within_step_auc(t, n_resamples=50)["auc"]
    0.75
    """
    ok = trace[score].notna().to_numpy()
    t = trace.loc[ok]
    per_step = np.array([auc(g[score].to_numpy(dtype=float), g[label].to_numpy(dtype=bool))
                         for _, g in t.groupby(list(steps), sort=False)])
    per_step = per_step[~np.isnan(per_step)]
    if len(per_step) == 0:
        return {"auc": float("nan"), "auc_lo": float("nan"), "auc_hi": float("nan"), "n_steps": 0}
    lo, hi = ((float("nan"),) * 2 if len(per_step) < 2 else
              bootstrap_ci(np.mean, per_step, n_resamples=n_resamples, confidence=confidence, seed=seed))
    return {"auc": float(per_step.mean()), "auc_lo": lo, "auc_hi": hi, "n_steps": int(len(per_step))}


def miss_rate(trace: pd.DataFrame, label: str = "dense_commit", kept: str = "kept") -> float:
    """Share of the rows with `label` (about to be committed without eviction) that eviction dropped.

    >>> miss_rate(pd.DataFrame({"kept": [True, False, False], "dense_commit": [True, True, False]}))
    0.5
    """
    y = trace[label].to_numpy(dtype=bool)
    return float((y & ~trace[kept].to_numpy(dtype=bool)).sum() / y.sum()) if y.any() else float("nan")


def keep_rule_precision_recall(trace: pd.DataFrame, label: str = "decodable_now",
                               kept: str = "kept") -> dict[str, float]:
    """Precision P(label | kept), recall P(kept | label) and miss rate 1 - recall of a keep column.

    Use it on a dense trace with a simulated keep column (`simulate_keep` -> kept_sim),
    or with labels from a paired dense run: in an eviction run an evicted row can never
    be committed at that step, so its own labels would make recall 1 by construction.

    >>> t = pd.DataFrame({"kept": [True, True, False, False], "decodable_now": [True, False, True, False]})
    >>> keep_rule_precision_recall(t)["recall"]
    0.5
    """
    trace = ensure_labels(trace, label)
    k, y = trace[kept].to_numpy(dtype=bool), trace[label].to_numpy(dtype=bool)
    tp = float((k & y).sum())
    precision = tp / float(k.sum()) if k.any() else float("nan")
    recall = tp / float(y.sum()) if y.any() else float("nan")
    return {"precision": precision, "recall": recall, "miss_rate": 1.0 - recall,
            "keep_fraction": float(k.mean()) if len(k) else float("nan"),
            "n": int(len(k)), "n_kept": int(k.sum()), "n_label": int(y.sum())}
