"""Gaussian noise model of importance deltas (docs/design.md, "FOCUS" section).

Non-decodable rows: delta ~ N(mu, sigma^2), i.i.d.; a decodable row has delta
mu + m and SNR = m / sigma. Fits use only non-decodable rows, so the decodable ones
are what the model tries to separate, not part of the noise.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from focuslib.stats.labels import ensure_labels, group_keys, standardize_within_steps

# Anderson-Darling critical values for the normal case with estimated mean and variance
# (D'Agostino & Stephens 1986, Table 4.7), scaled by 1 / (1 + 0.75/n + 2.25/n^2).
AD_LEVELS = np.array([15.0, 10.0, 5.0, 2.5, 1.0])  # significance, percent
_AD_BASE = np.array([0.561, 0.631, 0.752, 0.873, 1.035])


@dataclass(frozen=True)
class NoiseModel:
    """N(mu, sigma^2) fitted to n deltas of non-decodable rows.

    >>> m = NoiseModel(mu=0.5, sigma=2.0, n=100)
    >>> m.mu, m.sigma
    (0.5, 2.0)
    """

    mu: float
    sigma: float
    n: int

    def z(self, x: np.ndarray) -> np.ndarray:
        """Deltas in noise units, (x - mu) / sigma.

        >>> NoiseModel(mu=1.0, sigma=2.0, n=10).z([1.0, 5.0]).tolist()
        [0.0, 2.0]
        """
        return (np.asarray(x, dtype=float) - self.mu) / self.sigma


def _finite(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    return x[np.isfinite(x)]


def fit_noise_model(deltas: np.ndarray, ddof: int = 1) -> NoiseModel:
    """Sample mean and std (unbiased by default) of the finite values in `deltas`.

    >>> fit_noise_model([1.0, 2.0, 3.0])
    NoiseModel(mu=2.0, sigma=1.0, n=3)
    """
    x = _finite(deltas)
    sigma = float(np.std(x, ddof=ddof)) if len(x) > ddof else float("nan")
    return NoiseModel(mu=float(np.mean(x)) if len(x) else float("nan"), sigma=sigma, n=int(len(x)))


def fit_noise_model_by(trace: pd.DataFrame, by: str = "pooled", label: str = "decodable_now",
                       standardize: bool = False, column: str = "delta", ddof: int = 1) -> pd.DataFrame:
    """mu, sigma, n of `column` over non-decodable rows, per group ("step", "block", "pooled").

    standardize=True first z-scores each step with the mean and std of all its masked
    rows (`standardize_within_steps`: population std, the statistics of the FOCUS gate),
    while sigma itself is the noise estimator of `fit_noise_model` (`ddof`, 1 by default). Choice: this
    removes the step-to-step change of scale before pooling (otherwise a pooled fit sees a
    heavy-tailed scale mixture), and puts the gate at z = 1. Because those statistics
    include the step's few decodable rows (and divide by |M|, not by the number of noise
    rows), the fitted noise mu is slightly below 0 and sigma is not exactly 1; they are
    fitted, not assumed. by="step" with
    standardize=False shows how the raw scale drifts over steps.

    >>> t = pd.DataFrame({"seq": 0, "step": [0, 0, 0, 1, 1, 1], "block": 0,
    ...                   "delta": [1.0, 2.0, 3.0, 5.0, 7.0, 0.0], "decodable_now": [0, 0, 0, 0, 0, 1]})
    >>> fit_noise_model_by(t, by="step")[["step", "mu", "sigma", "n"]].values.tolist()
    [[0.0, 2.0, 1.0, 3.0], [1.0, 6.0, 1.4142135623730951, 2.0]]
    """
    trace = ensure_labels(trace, label)
    values = standardize_within_steps(trace, column) if standardize else trace[column]
    noise = trace.assign(_x=values.to_numpy())[~trace[label].to_numpy(dtype=bool)]
    keys = group_keys(by)
    if not keys:
        m = fit_noise_model(noise["_x"], ddof=ddof)
        return pd.DataFrame([{"mu": m.mu, "sigma": m.sigma, "n": m.n}])
    g = noise.groupby(keys, sort=True)["_x"]
    out = g.agg(mu="mean", sigma=lambda x: x.std(ddof=ddof), n="count").reset_index()
    return out


def anderson_critical_values(n: int) -> np.ndarray:
    """AD critical values at AD_LEVELS for a normal with estimated mean and variance.

    >>> anderson_critical_values(10**9).round(3).tolist()
    [0.561, 0.631, 0.752, 0.873, 1.035]
    """
    return _AD_BASE / (1.0 + 0.75 / n + 2.25 / n**2)


def _anderson(x: np.ndarray) -> tuple[float, float]:
    """AD statistic and interpolated p-value (table range, so clipped to [0.01, 0.15])."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            res = stats.anderson(x, dist="norm", method="interpolate")
            return float(res.statistic), float(res.pvalue)
        except TypeError:  # scipy < 1.17: no method argument, no p-value
            return float(stats.anderson(x, dist="norm").statistic), float("nan")


def goodness_of_fit(deltas: np.ndarray, model: NoiseModel) -> dict[str, object]:
    """Kolmogorov-Smirnov against N(mu, sigma) and Anderson-Darling for normality.

    KS tests the given model (a simple hypothesis); when mu, sigma were fitted on the
    same data its p-value is conservative (Lilliefors). AD (scipy.stats.anderson,
    dist='norm') estimates its own mean and std, i.e. tests "Gaussian at all"; reject
    at level L when ad_statistic > the critical value at L.

    >>> x = stats.norm.ppf((np.arange(500) + 0.5) / 500)
    >>> gof = goodness_of_fit(x, fit_noise_model(x))
    >>> bool(gof["ks_pvalue"] > 0.5 and gof["ad_statistic"] < gof["ad_critical_values"][2])
    True
    """
    x = _finite(deltas)
    ks = stats.kstest(x, "norm", args=(model.mu, model.sigma))
    ad_stat, ad_p = _anderson(x)
    return {"n": int(len(x)), "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue),
            "ad_statistic": ad_stat, "ad_pvalue": ad_p, "ad_critical_values": anderson_critical_values(len(x)),
            "ad_significance_levels": AD_LEVELS.copy()}


def qq_data(deltas: np.ndarray, model: NoiseModel) -> tuple[np.ndarray, np.ndarray]:
    """(theoretical, sample) quantiles for a Q-Q plot: plt.plot(*qq_data(d, m), ".").

    Sample = sorted deltas; theoretical = mu + sigma * Phi^-1((i - 0.5) / n).

    >>> th, sa = qq_data([3.0, 1.0], NoiseModel(0.0, 1.0, 2))
    >>> th.round(4).tolist(), sa.tolist()
    ([-0.6745, 0.6745], [1.0, 3.0])
    """
    x = np.sort(_finite(deltas))
    p = (np.arange(1, len(x) + 1) - 0.5) / len(x)
    return model.mu + model.sigma * stats.norm.ppf(p), x


def snr(delta_decodable: np.ndarray, model: NoiseModel) -> np.ndarray:
    """SNR = m / sigma with m = delta - mu: how many noise stds a decodable row sits above.

    >>> snr([3.0, 5.0], NoiseModel(1.0, 2.0, 10)).tolist()
    [1.0, 2.0]
    """
    return model.z(delta_decodable)
