"""Tests of focuslib.stats on synthetic data with known answers.

Expected values are worked out by hand (comments show the arithmetic) or come from an
independent Monte Carlo simulation written here, never from the code under test.
"""
import doctest
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

import focuslib.stats as fs
from focuslib.stats import association, calibrate, keep_rule, labels, miss, noise

# ---------------------------------------------------------------- hand-built traces


def hand_trace() -> pd.DataFrame:
    """One sequence, one block of 6 positions, 3 steps of a dense run.

    step 0: M = {0..5}, delta [0, -1, 3, -1, -0.4, -0.6], commits {2, 4}
    step 1: M = {0, 1, 3, 5}, delta [1, -0.5, 0.5, -1], commits {1, 5}
    step 2: M = {0, 3}, delta [0.2, -0.2], commits {0, 3}
    """
    committed = {0: 2, 1: 1, 2: 0, 3: 2, 4: 0, 5: 1}
    rows = [(0, p, d) for p, d in zip(range(6), [0.0, -1.0, 3.0, -1.0, -0.4, -0.6])]
    rows += [(1, p, d) for p, d in zip([0, 1, 3, 5], [1.0, -0.5, 0.5, -1.0])]
    rows += [(2, p, d) for p, d in zip([0, 3], [0.2, -0.2])]
    t = pd.DataFrame(rows, columns=["step", "position", "delta"])
    t["seq"], t["block"] = 0, 0
    t["committed_step"] = t["position"].map(committed)
    t["committed"] = t["committed_step"] == t["step"]
    t["kept"] = True
    return t


def synthetic_dense(n_steps: int, m_rows: int, n_dec: int, snr: float, seed: int) -> pd.DataFrame:
    """Independent steps (one per sequence) where the noise model holds exactly: noise rows
    N(c, s^2) with a per-step location c and scale s, decodable rows at c + snr * s + N(0, s^2)."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 2.0, size=(n_steps, 1))
    delta = rng.normal(size=(n_steps, 1)) + scale * rng.standard_normal((n_steps, m_rows))
    dec = np.argsort(rng.random((n_steps, m_rows)), axis=1) < n_dec
    delta = delta + snr * scale * dec
    return pd.DataFrame({"seq": np.repeat(np.arange(n_steps), m_rows), "step": 0, "block": 0,
                         "position": np.tile(np.arange(m_rows), n_steps), "delta": delta.ravel(),
                         "committed_step": np.where(dec.ravel(), 0, 1)})


# ---------------------------------------------------------------- labels


def test_decodability_labels_hand_built():
    t = pd.DataFrame({"step": [0, 0, 1, 1, 2, 2], "committed_step": [0, 3, 1, -1, 4, 2]})
    out = fs.decodability_labels(t, k=3)
    # steps_to_commit = committed_step - step, NaN where never committed (-1)
    np.testing.assert_array_equal(out["steps_to_commit"], [0, 3, 0, np.nan, 2, 0])
    assert out["decodable_now"].tolist() == [True, False, True, False, False, True]
    assert out["decodable_within_k"].tolist() == [True, False, True, False, True, True]  # < 3
    assert fs.decodability_labels(t, k=1)["decodable_within_k"].tolist() == out["decodable_now"].tolist()
    assert "decodable_now" not in t.columns  # input untouched


def test_step_table_rebuilds_tokens_per_step_and_budget():
    t = hand_trace()
    tab = fs.step_table(t, alpha=1.5)
    # a: block start -> 1; step 1: (6 - 4) / 1 = 2; step 2: (6 - 2) / 2 = 2
    assert tab["n_rows"].tolist() == [6, 4, 2]
    assert tab["a"].tolist() == [1.0, 2.0, 2.0]
    assert tab["budget"].tolist() == [2, 3, 3]  # ceil(1.5 * a)
    assert fs.step_table(t, alpha=1.5, avg_decoded=1.0)["budget"].tolist() == [2, 2, 2]
    # a new block restarts the average
    t2 = pd.concat([t, pd.DataFrame({"seq": 0, "block": 1, "step": 3, "position": range(8, 13), "delta": 0.0})])
    assert fs.step_table(t2, alpha=1.5)["a"].tolist() == [1.0, 2.0, 2.0, 1.0]


def test_standardize_within_steps():
    t = pd.DataFrame({"seq": [0, 0, 0, 1, 1], "step": 0, "delta": [1.0, 2.0, 3.0, 5.0, 5.0]})
    z = fs.standardize_within_steps(t)
    assert z.tolist()[:3] == [-1.0, 0.0, 1.0]  # mean 2, unbiased std 1
    assert z[3:].isna().all()  # zero spread


# ---------------------------------------------------------------- association


def test_auc_hand_examples_and_ties():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered
    assert fs.auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert fs.auc([1.0, 1.0, 2.0], [0, 1, 1]) == 0.75  # one tie (1/2) + one win
    assert fs.auc(np.full(10, 3.0), np.arange(10) % 2) == 0.5
    assert math.isnan(fs.auc([1.0, 2.0], [1, 1]))
    assert fs.auc([np.nan, 0.1, 0.9], [0, 0, 1]) == 1.0  # NaN score dropped


def test_auc_planted_separation():
    rng = np.random.default_rng(0)
    n, d = 4000, 1.0
    scores = np.r_[rng.normal(0, 1, n), rng.normal(d, 1, n)]
    y = np.r_[np.zeros(n), np.ones(n)]
    # P(X1 > X0) with X1 - X0 ~ N(d, 2): Phi(d / sqrt 2) = 0.76025
    assert abs(fs.auc(scores, y) - 0.76025) < 0.02
    assert abs(fs.auc(rng.normal(size=2 * n), y) - 0.5) < 0.02


def test_association_table_ci_covers_planted_auc():
    # decodable rows shifted by d noise stds: AUC = Phi(d / sqrt 2); the step-cluster
    # bootstrap CI must cover it, and a pure-noise signal must give a CI around 0.5
    rng = np.random.default_rng(21)
    n_steps, m, d = 400, 6, 1.5
    dec = np.tile(np.arange(m) == 0, n_steps)
    t = pd.DataFrame({"seq": np.repeat(np.arange(n_steps), m), "step": 0,
                      "delta": rng.normal(size=n_steps * m) + d * dec, "noise": rng.normal(size=n_steps * m),
                      "decodable_now": dec})
    tab = fs.association_table(t, signals=["delta", "noise"], n_resamples=300, groups=("seq", "step"))
    true_auc = sps.norm.cdf(d / math.sqrt(2))  # 0.8556
    assert tab.loc["delta", "auc_lo"] <= true_auc <= tab.loc["delta", "auc_hi"]
    assert abs(tab.loc["delta", "auc"] - true_auc) < 0.03
    assert tab.loc["noise", "auc_lo"] <= 0.5 <= tab.loc["noise", "auc_hi"]


def test_roc_curve_hand_example():
    fpr, tpr, thr = fs.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert thr.tolist() == [np.inf, 0.8, 0.4, 0.35, 0.1]
    fpr, tpr, _ = fs.roc_curve([1.0, 1.0, 2.0], [0, 1, 1])  # tied scores: one point
    assert fpr.tolist() == [0.0, 0.0, 1.0] and tpr.tolist() == [0.0, 0.5, 1.0]
    assert np.trapezoid(tpr, fpr) == 0.75


def test_correlations_hand_and_fast_path():
    # ranks of y: [1, 2, 4, 3]; sum d^2 = 2; rho = 1 - 6*2 / (4*15) = 0.8
    assert fs.spearman([1, 2, 3, 4], [10, 20, 30, 25]) == pytest.approx(0.8)
    # r = 0.325 / sqrt(0.251875 * 1) (deviations from 0.4125 and 0.5)
    assert fs.point_biserial([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.325 / math.sqrt(0.251875))
    rng = np.random.default_rng(1)
    s, y = rng.normal(size=300), rng.random(300) < 0.3
    fast = fs.binary_association(s, y)
    assert fast[0] == pytest.approx(sps.mannwhitneyu(s[y], s[~y]).statistic / (y.sum() * (~y).sum()))
    assert fast[1] == pytest.approx(sps.spearmanr(s, y).statistic)
    assert fast[2] == pytest.approx(sps.pearsonr(s, y.astype(float)).statistic)


def test_bootstrap_ci_covers_true_mean():
    rng = np.random.default_rng(2)
    hits = 0
    for rep in range(60):
        x = rng.normal(size=60)
        lo, hi = fs.bootstrap_ci(np.mean, x, n_resamples=300, seed=rep)
        hits += lo < 0.0 < hi
    assert 0.85 * 60 <= hits <= 60  # nominal 95%


def test_bootstrap_ci_groups_resample_clusters():
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(40), 20)
    x = rng.normal(size=40)[g] + 0.05 * rng.normal(size=len(g))  # strong cluster effect
    lo_r, hi_r = fs.bootstrap_ci(np.mean, x, n_resamples=300)
    lo_g, hi_g = fs.bootstrap_ci(np.mean, x, n_resamples=300, groups=g)
    # rows look independent: sd ~ 1/sqrt(800); clusters: sd ~ 1/sqrt(40), ~4.5x wider
    assert (hi_g - lo_g) > 3 * (hi_r - lo_r)
    assert lo_g < 0.0 < hi_g


def test_association_table_separates_signal_from_noise():
    rng = np.random.default_rng(4)
    n = 600
    y = rng.random(n) < 0.25
    t = pd.DataFrame({"delta": rng.normal(size=n) + 2.0 * y, "imp0": rng.normal(size=n),
                      "confidence": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)),
                      "decodable_now": y, "seq": 0, "step": np.arange(n) // 10})
    tab = fs.association_table(t, signals=["delta", "imp0", "confidence"], n_resamples=200, groups=("seq", "step"))
    assert tab.loc["delta", "n"] == n and tab.loc["delta", "n_pos"] == y.sum()
    assert tab.loc["confidence", "n"] == t["confidence"].notna().sum()
    assert tab.loc["delta", "auc_lo"] > tab.loc["imp0", "auc_hi"]
    assert abs(tab.loc["delta", "auc"] - sps.norm.cdf(2 / math.sqrt(2))) < 0.06
    for col in ("auc", "spearman", "point_biserial"):
        assert (tab[f"{col}_lo"] <= tab[col]).all() and (tab[col] <= tab[f"{col}_hi"]).all()


def test_keep_rule_precision_recall_hand():
    t = pd.DataFrame({"kept": [True, True, False, False, True], "decodable_now": [True, False, True, False, True]})
    r = fs.keep_rule_precision_recall(t)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["miss_rate"] == pytest.approx(1 / 3) and r["keep_fraction"] == pytest.approx(0.6)


# ---------------------------------------------------------------- noise model


def test_fit_noise_model_recovers_mu_sigma():
    x = np.random.default_rng(5).normal(1.5, 0.7, size=20000)
    m = fs.fit_noise_model(x)
    assert m.n == 20000
    assert abs(m.mu - 1.5) < 4 * 0.7 / math.sqrt(20000)
    assert abs(m.sigma - 0.7) < 4 * 0.7 / math.sqrt(2 * 20000)


def test_fit_noise_model_by_groups_hand():
    t = pd.DataFrame({"seq": [0, 0, 0, 0, 0, 0, 0, 1, 1], "block": 0, "step": [0, 0, 0, 0, 1, 1, 1, 0, 0],
                      "delta": [1.0, 2.0, 3.0, 10.0, 4.0, 6.0, -5.0, 0.0, 2.0],
                      "decodable_now": [0, 0, 0, 1, 0, 0, 1, 0, 0]})
    by_step = fs.fit_noise_model_by(t, by="step")
    assert by_step["mu"].tolist() == [2.0, 5.0, 1.0]
    np.testing.assert_allclose(by_step["sigma"], [1.0, math.sqrt(2), math.sqrt(2)])
    assert by_step["n"].tolist() == [3, 2, 2]
    by_block = fs.fit_noise_model_by(t, by="block")  # seq 0: 1, 2, 3, 4, 6 -> SS 14.8
    np.testing.assert_allclose(by_block[["mu", "sigma"]].to_numpy(), [[3.2, math.sqrt(3.7)], [1.0, math.sqrt(2)]])
    pooled = fs.fit_noise_model_by(t, by="pooled")  # sum 18, sum sq 70 over 7 rows
    np.testing.assert_allclose(pooled[["mu", "sigma"]].to_numpy()[0], [18 / 7, math.sqrt((70 - 324 / 7) / 6)])
    # standardised: step (0, 0) has mean 4 and std sqrt(50/3) over all 4 rows
    std = fs.fit_noise_model_by(t, by="step", standardize=True)
    np.testing.assert_allclose(std[["mu", "sigma"]].to_numpy()[0], np.array([-2.0, 1.0]) / math.sqrt(50 / 3))


def test_goodness_of_fit_gaussian_vs_exponential():
    rng = np.random.default_rng(6)
    x = rng.normal(3.0, 2.0, size=1000)
    assert fs.goodness_of_fit(x, fs.fit_noise_model(x))["ks_pvalue"] > 0.05
    e = rng.exponential(size=1000)
    g = fs.goodness_of_fit(e, fs.fit_noise_model(e))
    assert g["ks_pvalue"] < 1e-6
    assert g["ad_statistic"] > g["ad_critical_values"][-1]  # rejected at 1%
    # size under the null over 300 Gaussian samples: AD at 5% rejects ~5%; KS with
    # fitted parameters is conservative (<= 5%)
    reps, ks_rej, ad_rej = 300, 0, 0
    for _ in range(reps):
        x = rng.normal(size=200)
        g = fs.goodness_of_fit(x, fs.fit_noise_model(x))
        ks_rej += g["ks_pvalue"] < 0.05
        ad_rej += g["ad_statistic"] > g["ad_critical_values"][2]
    three_se = 3 * math.sqrt(0.05 * 0.95 * reps)
    assert ks_rej <= 0.05 * reps + three_se
    assert abs(ad_rej - 0.05 * reps) <= three_se


def test_anderson_critical_values_match_scipy_table():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = sps.anderson(np.random.default_rng(7).normal(size=100), dist="norm")
    if not hasattr(res, "critical_values"):
        pytest.skip("this scipy no longer reports critical values")
    np.testing.assert_allclose(fs.anderson_critical_values(100), res.critical_values, atol=6e-4)


def test_qq_data_and_snr_hand():
    th, sample = fs.qq_data([3.0, 1.0, 4.0, 2.0], fs.NoiseModel(mu=1.0, sigma=2.0, n=4))
    assert sample.tolist() == [1.0, 2.0, 3.0, 4.0]
    # Phi^-1 of 1/8, 3/8, 5/8, 7/8
    np.testing.assert_allclose(th, 1.0 + 2.0 * np.array([-1.150349, -0.318639, 0.318639, 1.150349]), atol=1e-5)
    assert fs.snr([3.0, 7.0], fs.NoiseModel(mu=1.0, sigma=2.0, n=10)).tolist() == [1.0, 3.0]


# ---------------------------------------------------------------- miss probabilities vs Monte Carlo


def mc_gate(snr: float, n: int, trials: int, rng) -> float:
    """Simulate n noise + 1 decodable row, apply x >= mean + std (unbiased) over all rows."""
    z = rng.standard_normal((trials, n))
    x = snr + rng.standard_normal(trials)
    rows = np.concatenate([z, x[:, None]], axis=1)
    return float(np.mean(x < rows.mean(1) + rows.std(1, ddof=1)))


def mc_ranked(snr: float, n: int, k: int, trials: int, rng, fixed: bool = False, gate: bool = False) -> float:
    """Simulate the top-K rule (gate=False) or the gate-or-top-K rule (gate=True)."""
    z = rng.standard_normal((trials, n))
    x = snr + (0.0 if fixed else rng.standard_normal(trials))
    above = (z > np.reshape(x, (-1, 1))).sum(1)
    if not gate:
        return float(np.mean(above >= k))
    rows = np.concatenate([z, np.broadcast_to(np.reshape(x, (-1, 1)), (trials, 1))], axis=1)
    thr = rows.mean(1) + rows.std(1, ddof=1)
    in_gate = (rows >= thr[:, None]).sum(1)
    kept = np.where(in_gate >= k, x >= thr, above < k)
    return float(np.mean(~kept))


def assert_binomial_close(observed: float, p: float, trials: int, n_se: float = 3.0):
    se = math.sqrt(max(p * (1 - p), 1.0 / trials) / trials)
    assert abs(observed - p) < n_se * se, (observed, p, se)


@pytest.mark.parametrize("snr", [0.5, 1.0, 2.0, 3.0])
def test_gate_miss_matches_monte_carlo_large_n(snr):
    rng, trials = np.random.default_rng(int(10 * snr)), 20000
    assert_binomial_close(mc_gate(snr, 200, trials, rng), fs.miss_probability(snr), trials)


@pytest.mark.parametrize("n", [5, 30])
def test_gate_miss_exact_finite_n(n):
    rng, trials = np.random.default_rng(n), 20000
    for snr in (0.5, 2.0, 3.0):
        assert_binomial_close(mc_gate(snr, n, trials, rng), fs.miss_probability(snr, "gate", n_noise=n), trials)


def test_topk_miss_matches_monte_carlo_and_bounds():
    rng, trials, n, k = np.random.default_rng(11), 20000, 50, 3
    for snr in (1.0, 2.0, 3.0):
        exact = fs.miss_probability(snr, "topk", n_noise=n, k=k)
        assert_binomial_close(mc_ranked(snr, n, k, trials, rng), exact, trials)
        assert exact <= fs.topk_miss_bound(snr, n, k, form="integrated")
        fixed = fs.miss_probability(snr, "topk", n_noise=n, k=k, decodable_noise=False)
        assert_binomial_close(mc_ranked(snr, n, k, trials, rng, fixed=True), fixed, trials)
        union = fs.topk_miss_bound(snr, n, k)
        assert fixed <= union <= fs.topk_miss_bound(snr, n, k, form="exp")
    # why "integrated" exists: with the decodable row's own noise the miss probability
    # exceeds the fixed-delta bound C(N,K) Q(SNR)^K (here 0.094 vs 4.8e-5)
    assert fs.miss_probability(3.0, "topk", n_noise=n, k=k) > 100 * fs.topk_miss_bound(3.0, n, k)


def test_topk_bound_hand_values():
    q2 = sps.norm.sf(2.0)
    assert fs.topk_miss_bound(2.0, 10, 2) == pytest.approx(45 * q2**2)  # C(10, 2) = 45
    assert fs.topk_miss_bound(2.0, 10, 2, form="exp") == pytest.approx(min(1.0, 45 * math.exp(-4.0)))
    assert fs.topk_miss_bound(2.0, 3, 5) == 0.0  # K > N: cannot be outranked K times
    assert fs.topk_miss_bound(-1.0, 10, 2, form="exp") == 1.0


@pytest.mark.parametrize("k", [3, 60])
def test_focus_rule_miss_matches_monte_carlo(k):
    rng, trials = np.random.default_rng(k), 20000
    for snr in (0.5, 1.5, 2.5):
        exact = fs.miss_probability(snr, "focus", n_noise=200, k=k)
        assert_binomial_close(mc_ranked(snr, 200, k, trials, rng, gate=True), exact, trials)


# ---------------------------------------------------------------- keep rule and miss rates


def test_focus_keep_mask_rules_by_hand():
    pos = np.arange(6)
    # |M| <= K keeps all
    assert fs.focus_keep_mask(pos[:2], [5.0, -5.0], 2).all()
    d = np.array([0.0, -1.0, 3.0, -1.0, -0.4, -0.6])  # gate = 0 + 1.518: only row 2
    # K=2 > |G|: top-2 = {2, 0}; adjacency adds 1
    assert fs.focus_keep_mask(pos, d, 2, progress=False).tolist() == [True, True, True, False, False, False]
    assert fs.focus_keep_mask(pos, d, 2, adjacency=False, progress=False).tolist() == [1, 0, 1, 0, 0, 0]
    # K=1 <= |G|: keep the gate {2}; progress fills from the first masked row to 2
    assert fs.focus_keep_mask(pos, d, 1, adjacency=False).tolist() == [True, True, True, False, False, False]
    # ties for the last top-K slot go to the lower position
    assert fs.focus_keep_mask(pos[:4], [1.0, 0.0, 0.0, 0.0], 2, adjacency=False,
                              progress=False).tolist() == [True, True, False, False]
    # adjacency only pulls a masked neighbour at position - 1
    assert fs.focus_keep_mask([0, 2, 3, 5], [-1.0, 0.5, -0.5, 1.0], 1, progress=False).tolist() == [0, 0, 0, 1]


def test_focus_keep_mask_matches_kernel_reference():
    torch = pytest.importorskip("torch")
    try:
        from kernels.selection import focus_select_reference
    except ImportError as err:  # pragma: no cover - kernels are another module's job
        pytest.skip(f"kernels.selection unavailable: {err}")
    rng = np.random.default_rng(12)
    b, s = 64, 16
    delta = rng.normal(size=(b, s)).astype(np.float32)
    masked = rng.random((b, s)) < 0.7
    masked[:, 5] = True
    budget = rng.integers(1, 7, size=b)
    progress = masked.argmax(1)
    ref = focus_select_reference(torch.from_numpy(delta), torch.from_numpy(masked), torch.from_numpy(budget),
                                 torch.from_numpy(progress)).numpy()
    for i in range(b):
        p = np.flatnonzero(masked[i])
        ours = fs.focus_keep_mask(p, delta[i, p].astype(float), int(budget[i]))
        assert ours.tolist() == ref[i, p].tolist(), i


def test_simulated_miss_rate_hand_trace():
    t = hand_trace()
    # alpha 1.5, a rebuilt: K = 2, 3, 3
    # step 0: top-2 {2, 0} + neighbour 1 + progress -> keep {0, 1, 2}; decodable {2, 4}: 4 missed
    # step 1: gate {0} < 3 -> top-3 {0, 3, 1}; evict 5; decodable {1, 5}: 5 missed
    # step 2: |M| = 2 <= 3, keep all.  2 of 6 decodable rows missed
    assert fs.simulated_miss_rate(t, alpha=1.5) == pytest.approx(2 / 6)
    sim = fs.simulate_keep(t, alpha=1.5)
    assert sim.loc[sim.step == 1, "kept_sim"].tolist() == [True, True, True, False]
    # alpha 1, a fixed at 1: K = 1 everywhere
    # step 0: gate {2} -> {1, 2} -> {0, 1, 2}: 4 missed; step 1: gate {0} -> {0}: 1 and 5 missed
    # step 2: gate 0 + 0.283 empty -> top-1 {0}: 3 missed.  4 of 6
    assert fs.simulated_miss_rate(t, alpha=1.0, avg_decoded=1.0) == pytest.approx(4 / 6)


def test_observed_miss_rate_paired_runs():
    dense = hand_trace()
    dense = pd.concat([dense, pd.DataFrame({"seq": 1, "block": 0, "step": 0, "position": [0, 1], "delta": 0.0,
                                            "committed_step": 0, "committed": True, "kept": True})])
    evict = dense.copy()
    # seq 0 step 0: FOCUS evicts {3, 4, 5}; 4 was decodable in the dense run -> not committed
    evict.loc[(evict.seq == 0) & (evict.step == 0), "kept"] = [True, True, True, False, False, False]
    # seq 0 step 1 now has 4 still masked: the runs diverged
    evict = pd.concat([evict[~((evict.seq == 0) & (evict.step == 1))],
                       pd.DataFrame({"seq": 0, "block": 0, "step": 1, "position": [0, 1, 3, 4, 5], "kept": True})])
    # step 2 matches the dense mask again by chance; must not be counted (agreement is a prefix)
    evict.loc[(evict.seq == 0) & (evict.step == 2), "kept"] = False
    steps = fs.agreeing_steps(evict, dense)
    assert sorted(map(tuple, steps.values.tolist())) == [(0, 0), (1, 0)]
    # decodable in agreeing steps: seq 0 {2, 4} (4 evicted) + seq 1 {0, 1}: 1 of 4
    assert fs.observed_miss_rate(evict, dense) == pytest.approx(1 / 4)


def test_predicted_miss_rate_agrees_with_replay_when_model_holds():
    t = synthetic_dense(n_steps=1000, m_rows=24, n_dec=2, snr=2.0, seed=13)
    n_dec = 2000
    for alpha in (1.0, 4.0):
        for kw in ({"adjacency": False, "progress": False}, {}):
            sim = fs.simulated_miss_rate(t, alpha, **kw)
            pred = fs.predicted_miss_rate(t, alpha, n_draws=100, **kw)
            assert abs(pred - sim) < 3.5 * math.sqrt(sim * (1 - sim) / n_dec) + 0.005, (alpha, kw, pred, sim)


def test_calibrate_alpha_hand_trace():
    t = hand_trace()
    # simulated rates at alpha 1, 1.5, 2, 3 (a = 1, 2, 2): 2/6, 2/6, 1/6, 0
    # (alpha 2: step 1 has K = 4 = |M|; alpha 3: step 0 keeps top-3 {2, 0, 4} -> {0..4})
    res = fs.calibrate_alpha(t, 0.0, alphas=[1.0, 1.5, 2.0, 3.0], method="simulated")
    np.testing.assert_allclose(res["table"]["simulated"], [2 / 6, 2 / 6, 1 / 6, 0.0])
    assert res["alpha"] == 3.0
    assert fs.calibrate_alpha(t, 0.2, alphas=[1.0, 1.5, 2.0, 3.0], method="simulated")["alpha"] == 2.0
    assert fs.calibrate_alpha(t, 0.4, alphas=[1.0, 1.5, 2.0, 3.0], method="simulated")["alpha"] == 1.0


def test_calibrate_alpha_monotone_in_target():
    t = synthetic_dense(n_steps=150, m_rows=16, n_dec=3, snr=1.5, seed=14)
    alphas = np.linspace(0.5, 4, 15)
    found = [fs.calibrate_alpha(t, target, alphas=alphas, n_draws=50)["alpha"]
             for target in (0.01, 0.05, 0.1, 0.2, 0.4, 1.0)]
    finite = [a for a in found if not math.isnan(a)]
    assert len(finite) >= 3
    assert all(b <= a for a, b in zip(finite, finite[1:])) and found[-1] == 0.5
    assert all(not math.isnan(a) for a in found[found.index(finite[0]):])  # NaN only for the smallest targets


# ---------------------------------------------------------------- docstring examples


@pytest.mark.parametrize("module", [association, calibrate, keep_rule, labels, miss, noise])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
