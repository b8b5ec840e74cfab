"""Probability that an eviction rule drops a decodable row, under the Gaussian noise model.

Units are noise standard deviations: the N noise rows have z ~ N(0, 1) i.i.d. and the
decodable row sits at x. With decodable_noise=True (default) x ~ N(SNR, 1), the
decodable row's own delta being as noisy as the others'; with False, x = SNR exactly.
Q is the standard normal survival function. The gate is FOCUS's mean + std over all
masked rows with the decoder's population std (ddof=0, default; docs/design.md, "FOCUS"
section); ddof=1 models focuslib's older sample-std gate.

Derivations (short):
- gate, N -> inf: mean + std of the block -> mu + sigma, i.e. 1; miss iff x < 1, so
  P = Phi(1 - SNR) = Q(SNR - 1).
- gate, finite N (exact): with u = x - mean(noise) ~ N(SNR, 1 + 1/N) and S^2 the noise
  sample variance (independent of u, (N-1) S^2 ~ chi2(N-1)), "x < mean + std of all N+1
  rows" is equivalent to u < c_N S, c_N = sqrt(C / (A - B)) with A = N^2/(N+1)^2,
  B = N / ((N+1)(N+1-ddof)), C = (N-1)/(N+1-ddof) (square both sides after splitting the
  sum of squares into within-noise and noise-vs-x parts; ddof=0 gives c_N = sqrt((N+1)/N)).
  So P = E_S[Phi((c_N S - SNR) / sqrt(1 + 1/N))], averaged over chi quantiles.
- top-K: missed iff at least K of the N noise rows exceed x: P = E_x[P(Bin(N, Q(x)) >= K)].
- focus (gate or top-K, as docs/design.md): the keep set is the top max(K, |G|) rows, so a
  row is missed iff it is below the gate and at least K rows are above it:
  P = E_x[1(x < gate) P(Bin(N, Q(x)) >= K)]; `gate` is the threshold in noise units,
  held fixed (1 for large N; at N ~ 10 its own sampling noise matters and this form is
  off by up to ~40% relative). Adjacency and progress only add rows, so it over-states
  misses of the full rule.
- bound: given x = SNR, the union bound over K-subsets gives C(N, K) Q(SNR)^K, and
  Q(s) <= exp(-s^2/2) for s >= 0 gives C(N, K) exp(-K SNR^2/2). Both bound the miss
  probability for a FIXED decodable delta; averaging over the decodable row's own noise
  can exceed them (Q^K is convex for x > 0, Jensen), so form="integrated" returns
  E_x[min(1, C(N, K) Q(x)^K)], a valid bound for decodable_noise=True.
"""
from __future__ import annotations

import numpy as np
from scipy import special, stats

_HALF_WIDTH = 9.0  # integrate x ~ N(SNR, 1) over SNR +- 9 (mass outside < 1e-18)
_CHUNK = 2048


def _simpson_weights(n: int) -> np.ndarray:
    """Simpson 1/3 weights on n (odd) equally spaced points of [0, 1]."""
    w = np.ones(n)
    w[1:-1:2], w[2:-1:2] = 4.0, 2.0
    return w / (3.0 * (n - 1))


def normal_expectation(f, mean: np.ndarray, upper: np.ndarray | float = np.inf, n_grid: int = 1201) -> np.ndarray:
    """E[f(X, rows) 1(X < upper)] for X ~ N(mean, 1), one value per element of `mean`.

    f(x, rows) gets the grid x [R, G] of a chunk and the slice `rows` of that chunk, so
    it can read per-row parameters. Simpson's rule on [mean - 9, min(mean + 9, upper)].

    >>> float(normal_expectation(lambda x, r: x**2, np.array([0.0]))[0].round(6))
    1.0
    """
    mean = np.asarray(mean, dtype=float).ravel()
    upper = np.broadcast_to(np.asarray(upper, dtype=float), mean.shape)
    n_grid += 1 - n_grid % 2
    t, w = np.linspace(0.0, 1.0, n_grid), _simpson_weights(n_grid)
    lo = mean - _HALF_WIDTH
    width = np.clip(np.minimum(mean + _HALF_WIDTH, upper) - lo, 0.0, None)
    out = np.empty(len(mean))
    for start in range(0, len(mean), _CHUNK):
        rows = slice(start, start + _CHUNK)
        x = lo[rows, None] + width[rows, None] * t
        y = stats.norm.pdf(x - mean[rows, None]) * f(x, rows)
        out[rows] = width[rows] * (y @ w)
    return out


def _tail(k: np.ndarray, n: np.ndarray, p: np.ndarray) -> np.ndarray:
    """P(Bin(n, p) >= k); 1 for k <= 0, 0 for k > n."""
    return stats.binom.sf(k - 1, n, p)


def _gate_factor(n: np.ndarray, ddof: int) -> np.ndarray:
    """c_N: x < mean + std of all N+1 rows  <=>  x - mean(noise) < c_N * S (see module doc)."""
    a = n**2 / (n + 1) ** 2
    b = n / ((n + 1) * (n + 1 - ddof))
    return np.sqrt(((n - 1) / (n + 1 - ddof)) / (a - b))


def _gate_finite(s: np.ndarray, n: np.ndarray, ddof: int, decodable_noise: bool, nodes: int = 512) -> np.ndarray:
    """Exact gate miss probability for N noise rows, averaged over chi quantiles of S."""
    u = (np.arange(nodes) + 0.5) / nodes
    var = (1.0 + 1.0 / n) if decodable_noise else 1.0 / n
    c = _gate_factor(n, ddof)
    out = np.empty(len(s))
    for start in range(0, len(s), _CHUNK):
        r = slice(start, start + _CHUNK)
        sd = np.sqrt(stats.chi2.ppf(u, n[r, None] - 1) / (n[r, None] - 1))  # [R, nodes]
        out[r] = stats.norm.cdf((c[r, None] * sd - s[r, None]) / np.sqrt(var[r])[:, None]).mean(axis=1)
    return out


def _as_output(values: np.ndarray, shape: tuple) -> np.ndarray | float:
    return float(values[0]) if shape == () else values.reshape(shape)


def _gate(s: np.ndarray, n: np.ndarray | None, gate: float, ddof: int, decodable_noise: bool) -> np.ndarray:
    if n is not None:
        if np.any(n < 2):
            raise ValueError("the finite-N gate needs n_noise >= 2")
        return _gate_finite(s, n.astype(float), ddof, decodable_noise)
    return stats.norm.sf(s - gate) if decodable_noise else (s < gate).astype(float)


def _ranked(s: np.ndarray, n: np.ndarray, k: np.ndarray, upper: np.ndarray | float,
            decodable_noise: bool) -> np.ndarray:
    """P(x < upper and >= k of n noise rows above x); upper = inf gives plain top-K."""
    if not decodable_noise:
        return (s < upper) * _tail(k, n, stats.norm.sf(s))
    return normal_expectation(lambda x, r: _tail(k[r, None], n[r, None], stats.norm.sf(x)), s, upper)


def miss_probability(snr: np.ndarray | float, rule: str = "gate", n_noise: np.ndarray | int | None = None,
                     k: np.ndarray | int | None = None, *, gate: float = 1.0, decodable_noise: bool = True,
                     ddof: int = 0) -> np.ndarray | float:
    """P(a decodable row with this SNR is evicted) under rule "gate", "topk" or "focus".

    gate: Q(SNR - gate) (N -> inf); with n_noise, the exact finite-N probability for
    the mean + std rule over all N + 1 rows (`gate` then unused; std with `ddof`: 0, the
    decoder's population std, or 1, the older sample std). topk: exact, needs
    n_noise and k. focus: gate-or-top-K rule with the gate at `gate` noise units.
    See the module docstring for the derivations.

    >>> round(miss_probability(1.0), 3), round(miss_probability(2.0), 4)
    (0.5, 0.1587)
    >>> round(miss_probability(2.0, "topk", n_noise=1, k=1, decodable_noise=False), 4)
    0.0228
    """
    shape = np.broadcast(np.asarray(snr), np.asarray(n_noise if n_noise is not None else 0),
                         np.asarray(k if k is not None else 0)).shape
    s = np.broadcast_to(np.asarray(snr, dtype=float), shape).ravel()
    n = None if n_noise is None else np.broadcast_to(np.asarray(n_noise), shape).ravel().astype(int)
    if rule == "gate":
        return _as_output(_gate(s, n, gate, ddof, decodable_noise), shape)
    if rule not in ("topk", "focus"):
        raise ValueError(f"rule must be 'gate', 'topk' or 'focus', got {rule!r}")
    if n is None or k is None:
        raise ValueError(f"rule {rule!r} needs n_noise and k")
    kk = np.broadcast_to(np.asarray(k), shape).ravel().astype(int)
    upper = np.inf if rule == "topk" else gate
    return _as_output(_ranked(s, n, kk, upper, decodable_noise), shape)


def _log_union(s: np.ndarray, n: np.ndarray, k: np.ndarray) -> np.ndarray:
    """log C(n, k) + k log Q(s)."""
    log_c = special.gammaln(n + 1) - special.gammaln(k + 1) - special.gammaln(n - k + 1)
    return log_c + k * special.log_ndtr(-s)


def topk_miss_bound(snr: np.ndarray | float, n_noise: np.ndarray | int, k: np.ndarray | int,
                    form: str = "union") -> np.ndarray | float:
    """Upper bound on the top-K miss probability: "union", "exp" or "integrated".

    union: min(1, C(N,K) Q(SNR)^K); exp: min(1, C(N,K) exp(-K SNR^2/2)) (1 for SNR < 0,
    where it is not a bound). Both hold for a fixed decodable delta (decodable_noise=
    False); "integrated" = E_x[min(1, C(N,K) Q(x)^K)], x ~ N(SNR, 1), holds for the
    noisy decodable row. 0 when K > N (nothing can outrank the row K times).

    >>> round(topk_miss_bound(2.0, 1, 1), 4), round(topk_miss_bound(2.0, 1, 1, "exp"), 4)
    (0.0228, 0.1353)
    """
    shape = np.broadcast(np.asarray(snr), np.asarray(n_noise), np.asarray(k)).shape
    s = np.broadcast_to(np.asarray(snr, dtype=float), shape).ravel()
    n = np.broadcast_to(np.asarray(n_noise), shape).ravel().astype(float)
    kk = np.broadcast_to(np.asarray(k), shape).ravel().astype(float)
    possible = kk <= n
    nn, kc = np.where(possible, n, 1.0), np.where(possible, kk, 1.0)
    if form == "union":
        out = np.exp(np.minimum(_log_union(s, nn, kc), 0.0))
    elif form == "exp":
        log_c = special.gammaln(nn + 1) - special.gammaln(kc + 1) - special.gammaln(nn - kc + 1)
        out = np.where(s >= 0, np.exp(np.minimum(log_c - kc * s**2 / 2, 0.0)), 1.0)
    elif form == "integrated":
        out = normal_expectation(lambda x, r: np.exp(np.minimum(_log_union(x, nn[r, None], kc[r, None]), 0.0)), s)
    else:
        raise ValueError(f"form must be 'union', 'exp' or 'integrated', got {form!r}")
    return _as_output(np.where(possible, out, 0.0), shape)
