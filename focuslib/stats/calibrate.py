"""Model-predicted miss rates on a dense trace, and the choice of alpha.

The FOCUS rule is invariant to an affine change of a step's deltas (the gate is
mean + std, the rest is ranking), so the noise model is fitted per step: noise rows of
step s ~ N(mu_s, sigma_s^2), and each decodable row has SNR x = (delta - mu_s) /
sigma_s. The prediction keeps every decodable row at its observed x and position,
redraws the noise rows from the model (n_draws times, Monte Carlo) and applies the
exact keep rule with that step's K: the decoder's rule (docs/design.md, "FOCUS"
section; population-std gate and progress mark by default, as in
`focuslib.stats.keep_rule`), each draw being one trajectory through the steps of a
block that carries its own progress mark. Why not a closed form: conditioning on the
observed gate while treating the noise as fresh understates misses when |G| is near
K (the gate and the noise counts are dependent), and averaging each row over
N(x, 1) would count its own noise twice. The closed forms of `focuslib.stats.miss` are
for one SNR value; `step_noise_snr` gives the per-row inputs to compare them with.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from focuslib.stats.keep_rule import gate_mask, progress_rule, sample_std, simulated_miss_curve
from focuslib.stats.labels import STEP_KEYS, budget, ensure_labels, step_table


def step_noise_snr(trace: pd.DataFrame, label: str = "decodable_now", *, ddof: int = 1,
                   gate_ddof: int = 0) -> pd.DataFrame:
    """Copy of `trace` with snr (delta in units of its step's noise rows), n_noise, gate_snr.

    mu_s, sigma_s = mean and std (an estimator of the noise scale: unbiased, ddof=1, by
    default) of the step's non-decodable rows; where a step has < 2 of them or they do
    not vary, the mean and std of all its rows are used instead. gate_snr = the FOCUS
    gate, the step's mean + std of all rows with the decoder's population std (gate_ddof=0;
    1 for the older sample-std gate), in the same units. Feed snr of decodable rows to
    `miss_probability`.

    >>> t = pd.DataFrame({"seq": 0, "step": 0, "delta": [1.0, 2.0, 3.0, 7.0],
    ...                   "committed_step": [1, 1, 1, 0]})
    >>> step_noise_snr(t)[["snr", "n_noise"]].values.tolist()
    [[-1.0, 3.0], [0.0, 3.0], [1.0, 3.0], [5.0, 3.0]]
    >>> round(float(step_noise_snr(t)["gate_snr"].iloc[0]), 4)  # (3.25 + population std 2.2776 - 2) / 1
    3.5276
    """
    t = ensure_labels(trace, label).copy()
    keys = [t[k] for k in STEP_KEYS]
    noise = t["delta"].where(~t[label].to_numpy(dtype=bool)).groupby(keys)
    every = t["delta"].groupby(keys)
    mu_all, sd_all = every.transform("mean"), every.transform("std", ddof=ddof)
    n, mu, sd = noise.transform("count"), noise.transform("mean"), noise.transform("std", ddof=ddof)
    fallback = (n < 2) | ~(sd > 0)
    mu, sd = mu.where(~fallback, mu_all), sd.where(~fallback, sd_all)
    sd = sd.where(sd > 0)
    t["snr"] = (t["delta"] - mu) / sd
    t["n_noise"] = n
    t["gate_snr"] = (mu_all + every.transform("std", ddof=gate_ddof) - mu) / sd
    return t


def _expected_misses(pos: np.ndarray, dec: np.ndarray, x: np.ndarray, draws: np.ndarray, ks: np.ndarray,
                     rule: str, adjacency: bool, progress: str | None, sample: bool,
                     marks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean number of decodable rows evicted in one step, one value per budget in ks [A].

    pos sorted; draws [R, M] standard normal, used on noise rows. The keep set of
    gate-or-top-K is the top max(K, |G|) rows by delta (ties to the lower position).
    marks [A, R]: each draw's progress mark before this step (progress "mark" only);
    returned advanced past this step (None otherwise).
    """
    d = np.where(dec, x, draws)  # [R, M]
    r, m = d.shape
    rank = np.empty((r, m), dtype=int)
    np.put_along_axis(rank, np.argsort(-d, axis=1, kind="stable"), np.arange(m)[None, :], axis=1)
    gate = gate_mask(d, sample).sum(1) if rule == "focus" else np.zeros(r, dtype=int)
    out = np.zeros(len(ks))
    new = None if marks is None else marks.copy()
    for k in np.unique(ks):
        a = ks == k
        if k >= m:  # |M| <= K keeps everything
            if new is not None:
                new[a] = np.maximum(marks[a], pos.max())
            continue
        keep = rank < np.maximum(k, gate)[:, None]
        if adjacency:
            keep[:, :-1] |= keep[:, 1:] & (pos[1:] == pos[:-1] + 1)
        right = np.where(keep, pos, pos.min() - 1).max(1)  # [R] right-most kept row (k >= 1 keeps one)
        if progress == "fill":
            keep |= pos[None, :] <= right[:, None]
        if progress == "mark":
            back = (pos[None, None, :] < right[None, :, None]) & (pos[None, None, :] > marks[a][:, :, None])
            out[a] = (~(keep[None] | back)[:, :, dec]).sum((1, 2)) / r
            new[a] = np.maximum(marks[a], right[None, :])
        else:
            out[a] = (~keep[:, dec]).sum() / r
    return out, new


def predicted_miss_curve(trace: pd.DataFrame, alphas: np.ndarray, avg_decoded: float | None = None,
                         label: str = "decodable_now", *, rule: str = "focus", n_draws: int = 200, seed: int = 0,
                         adjacency: bool = True, progress: str | bool | None = "mark",
                         gate_std: str = "population") -> np.ndarray:
    """Model-predicted fraction of decodable rows evicted, one value per alpha.

    rule "focus" (gate or top-K) or "topk" (no gate); adjacency, progress ("mark",
    "fill", None) and gate_std as in `focuslib.stats.keep_rule.focus_keep_mask`. The same
    noise draws serve every alpha, so the curve is monotone for progress "fill" or None;
    with "mark" (each draw carries its own mark through the steps of a block, so steps
    without decodable rows are simulated too) a larger budget also moves the mark further,
    which can bring fewer rows back at later steps, so it is only nearly monotone. Steps
    whose decodable SNR is undefined (a single row, or constant deltas) count as no miss:
    the rule keeps everything there.

    >>> rng = np.random.default_rng(0)
    >>> t = pd.DataFrame({"seq": np.repeat(np.arange(50), 16), "block": 0, "step": 0,
    ...                   "position": np.tile(np.arange(16), 50), "delta": rng.normal(size=800)})
    >>> t["committed_step"] = np.where(t.position == 3, 0, 1)
    >>> t.loc[t.position == 3, "delta"] += 2.0
    >>> p = predicted_miss_curve(t, [1.0, 3.0], progress=None)
    >>> bool(0 < p[1] < p[0] < 0.5)
    True
    """
    if rule not in ("focus", "topk"):
        raise ValueError(f"rule must be 'focus' or 'topk', got {rule!r}")
    progress, sample = progress_rule(progress), sample_std(gate_std)
    alphas = np.atleast_1d(np.asarray(alphas, dtype=float))
    t = step_noise_snr(trace.reset_index(drop=True), label)
    steps = step_table(t, 1.0, avg_decoded)
    budgets = np.stack([budget(al, steps["a"].to_numpy()) for al in alphas], axis=1)  # [steps, alphas]
    blocks = list(zip(steps["seq"].tolist(), steps["block"].tolist()))
    codes = t.groupby(STEP_KEYS, sort=True).ngroup().to_numpy()  # same order as step_table
    order = np.lexsort((t["position"].to_numpy(), codes))
    pos, y, x = (t[c].to_numpy()[order] for c in ("position", label, "snr"))
    y = y.astype(bool)
    rng = np.random.default_rng(seed)
    missed = np.zeros(len(alphas))
    marks: dict[tuple, np.ndarray] = {}
    bounds = np.r_[0, np.cumsum(np.bincount(codes))]
    for s in range(len(bounds) - 1):
        sl = slice(bounds[s], bounds[s + 1])
        mk = marks.get(blocks[s], np.full((len(alphas), n_draws), -1)) if progress == "mark" else None
        if y[sl].any() and not np.isfinite(x[sl][y[sl]]).all():  # undefined SNR: the rule keeps everything
            if mk is not None:
                marks[blocks[s]] = np.maximum(mk, pos[sl].max())
            continue
        if not y[sl].any() and mk is None:
            continue
        draws = rng.standard_normal((n_draws, sl.stop - sl.start))
        out, mk = _expected_misses(pos[sl], y[sl], x[sl], draws, budgets[s], rule, adjacency, progress, sample, mk)
        missed += out
        if mk is not None:
            marks[blocks[s]] = mk
    return missed / y.sum() if y.any() else np.full(len(alphas), np.nan)


def predicted_miss_rate(trace: pd.DataFrame, alpha: float = 1.5, avg_decoded: float | None = None,
                        label: str = "decodable_now", **kw: object) -> float:
    """`predicted_miss_curve` at one alpha (keyword options as there).

    >>> t = pd.DataFrame({"seq": 0, "block": 0, "step": 0, "position": [0, 1],
    ...                   "delta": [1.0, -1.0], "committed_step": [0, 1]})
    >>> predicted_miss_rate(t, alpha=1.5)  # |M| = 2 <= K = 2: nothing is evicted
    0.0
    """
    return float(predicted_miss_curve(trace, [alpha], avg_decoded, label, **kw)[0])


def _smallest(alphas: np.ndarray, ok: np.ndarray) -> float:
    return float(alphas[ok].min()) if ok.any() else float("nan")


def calibrate_alpha(trace: pd.DataFrame, target: float, alphas: np.ndarray = np.linspace(0.5, 4, 36),
                    method: str = "both", avg_decoded: float | None = None, label: str = "decodable_now", *,
                    adjacency: bool = True, progress: str | bool | None = "mark", gate_std: str = "population",
                    n_draws: int = 200, seed: int = 0) -> dict[str, object]:
    """Smallest alpha whose miss rate is <= target, from a dense trace.

    method "predicted" (noise model, `predicted_miss_curve`), "simulated" (the rule
    replayed on the recorded deltas, `simulated_miss_curve`) or "both" (both must be <=
    target). adjacency, progress and gate_std select the keep rule of both curves (defaults:
    the decoder's, see `focuslib.stats.keep_rule`). Returns alpha (NaN if none qualifies),
    alpha_<method> for each curve, and the table of rates per alpha (plot it). A larger
    target never gives a larger alpha.

    >>> t = pd.DataFrame({"seq": 0, "block": 0, "step": 0, "position": [0, 1, 2],
    ...                   "delta": [1.0, 0.0, -1.0], "committed_step": [0, 1, 0]})
    >>> calibrate_alpha(t, 0.0, alphas=[1.0, 2.0, 3.0], method="simulated")["alpha"]
    3.0
    """
    if method not in ("both", "predicted", "simulated"):
        raise ValueError(f"method must be 'both', 'predicted' or 'simulated', got {method!r}")
    alphas = np.asarray(alphas, dtype=float)
    rule_kw = {"adjacency": adjacency, "progress": progress, "gate_std": gate_std}
    table = pd.DataFrame({"alpha": alphas})
    if method != "simulated":
        table["predicted"] = predicted_miss_curve(trace, alphas, avg_decoded, label, n_draws=n_draws, seed=seed,
                                                  **rule_kw)
    if method != "predicted":
        table["simulated"] = simulated_miss_curve(trace, alphas, avg_decoded, label, **rule_kw)
    rates = table.drop(columns="alpha")
    result: dict[str, object] = {"alpha": _smallest(alphas, (rates <= target).all(axis=1).to_numpy()),
                                 "target": target}
    for col in rates.columns:
        result[f"alpha_{col}"] = _smallest(alphas, (rates[col] <= target).to_numpy())
    result["table"] = table
    return result
