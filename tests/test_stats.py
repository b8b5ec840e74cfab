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


def synthetic_blocks(n_seq: int, block: int, n_dec: int, snr: float, seed: int) -> pd.DataFrame:
    """Multi-step blocks where the noise model holds at every step: each step draws a location c
    and scale s, noise rows N(c, s^2), n_dec random decodable rows at c + snr * s + N(0, s^2), and
    commits exactly the decodable rows, until the block is decoded."""
    rng = np.random.default_rng(seed)
    rows = []
    for seq in range(n_seq):
        masked, step = list(range(block)), 0
        while masked:
            c, s = rng.normal(), rng.uniform(0.5, 2.0)
            dec = set(rng.choice(masked, size=min(n_dec, len(masked)), replace=False).tolist())
            rows += [(seq, step, p, c + s * (rng.standard_normal() + snr * (p in dec)), p in dec) for p in masked]
            masked, step = [p for p in masked if p not in dec], step + 1
    t = pd.DataFrame(rows, columns=["seq", "step", "position", "delta", "dec"])
    t["block"] = 0
    t["committed_step"] = t["step"].where(t["dec"]).groupby([t["seq"], t["position"]]).transform("max").astype(int)
    return t.drop(columns="dec")


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
    z = fs.standardize_within_steps(t)  # default: the FOCUS gate's population std
    np.testing.assert_allclose(z[:3], [-math.sqrt(1.5), 0.0, math.sqrt(1.5)])  # mean 2, std sqrt(2/3)
    assert z[3:].isna().all()  # zero spread
    assert fs.standardize_within_steps(t, ddof=1).tolist()[:3] == [-1.0, 0.0, 1.0]  # sample std 1
    # the gate (population std, as the decoder) sits at z = 1: in a 2-row step the larger row is on it
    two = pd.DataFrame({"seq": 0, "step": 0, "delta": [3.0, 1.0]})
    assert fs.standardize_within_steps(two).tolist() == [1.0, -1.0]


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
    # standardised: step (0, 0) has mean 4 and population std sqrt(50/4) over all 4 rows (the
    # gate's units); the noise rows' z = (-3, -2, -1) / sqrt(12.5) then get mean -2 and sample std 1
    std = fs.fit_noise_model_by(t, by="step", standardize=True)
    np.testing.assert_allclose(std[["mu", "sigma"]].to_numpy()[0], np.array([-2.0, 1.0]) / math.sqrt(50 / 4))
    # ddof of the noise estimator: population sigma of noise rows 1, 2, 3 is sqrt(2/3)
    assert fs.fit_noise_model_by(t, by="step", ddof=0)["sigma"].iloc[0] == pytest.approx(math.sqrt(2 / 3))


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


def mc_gate(snr: float, n: int, trials: int, rng, ddof: int = 0) -> float:
    """Simulate n noise + 1 decodable row, apply x >= mean + std over all rows (the decoder's
    population std for ddof=0, the older sample std for ddof=1)."""
    z = rng.standard_normal((trials, n))
    x = snr + rng.standard_normal(trials)
    rows = np.concatenate([z, x[:, None]], axis=1)
    return float(np.mean(x < rows.mean(1) + rows.std(1, ddof=ddof)))


def mc_ranked(snr: float, n: int, k: int, trials: int, rng, fixed: bool = False, gate: bool = False) -> float:
    """Simulate the top-K rule (gate=False) or the gate-or-top-K rule (gate=True)."""
    z = rng.standard_normal((trials, n))
    x = snr + (0.0 if fixed else rng.standard_normal(trials))
    above = (z > np.reshape(x, (-1, 1))).sum(1)
    if not gate:
        return float(np.mean(above >= k))
    rows = np.concatenate([z, np.broadcast_to(np.reshape(x, (-1, 1)), (trials, 1))], axis=1)
    thr = rows.mean(1) + rows.std(1)  # population std, as the decoder
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


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("n", [5, 30])
def test_gate_miss_exact_finite_n(n, ddof):
    rng, trials = np.random.default_rng(n + 100 * ddof), 20000
    for snr in (0.5, 2.0, 3.0):
        kw = {} if ddof == 0 else {"ddof": 1}  # ddof=0 (population std, as the decoder) is the default
        assert_binomial_close(mc_gate(snr, n, trials, rng, ddof), fs.miss_probability(snr, "gate", n_noise=n, **kw),
                              trials)
    # the population std is smaller, so the gate is lower and misses fewer rows
    assert fs.miss_probability(2.0, "gate", n_noise=n) < fs.miss_probability(2.0, "gate", n_noise=n, ddof=1)


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
    d = np.array([0.0, -1.0, 3.0, -1.0, -0.4, -0.6])  # gate = 0 + sqrt(11.52 / 6) = 1.386: only row 2
    # K=2 > |G|: top-2 = {2, 0}; adjacency adds 1
    assert fs.focus_keep_mask(pos, d, 2, progress=None).tolist() == [True, True, True, False, False, False]
    assert fs.focus_keep_mask(pos, d, 2, adjacency=False, progress=None).tolist() == [1, 0, 1, 0, 0, 0]
    # K=1 <= |G|: keep the gate {2}; at a block's first step (mark -1) progress brings back 0 and 1
    assert fs.focus_keep_mask(pos, d, 1, adjacency=False).tolist() == [True, True, True, False, False, False]
    # ties for the last top-K slot go to the lower position
    assert fs.focus_keep_mask(pos[:4], [1.0, 0.0, 0.0, 0.0], 2, adjacency=False,
                              progress=None).tolist() == [True, True, False, False]
    # adjacency only pulls a masked neighbour at position - 1
    assert fs.focus_keep_mask([0, 2, 3, 5], [-1.0, 0.5, -0.5, 1.0], 1, progress=None).tolist() == [0, 0, 0, 1]


def test_focus_keep_mask_gate_std():
    d = [1.0, 1.0, 3.0, 3.0]  # mean 2; population std 1, sample std sqrt(4/3) = 1.155
    rule = {"adjacency": False, "progress": None}
    # population (default): the two 3s sit exactly on the gate and are kept (|G| = 2 >= K = 1)
    assert fs.focus_keep_mask(range(4), d, 1, **rule).astype(int).tolist() == [0, 0, 1, 1]
    # sample: the gate is empty -> top-1, the tie between the 3s goes to the lower position
    assert fs.focus_keep_mask(range(4), d, 1, gate_std="sample", **rule).astype(int).tolist() == [0, 0, 1, 0]
    assert fs.focus_keep_mask(range(4), d, 1, ddof=1, **rule).astype(int).tolist() == [0, 0, 1, 0]  # old keyword
    # two rows: with the population std the larger row is exactly mean + std, so in the gate
    assert fs.focus_keep_mask([0, 1], [0.2, -0.2], 1, **rule).tolist() == [True, False]
    with pytest.raises(ValueError):
        fs.focus_keep_mask(range(4), d, 1, gate_std="unbiased")


def test_progress_mark_vs_fill():
    pos, d = np.arange(6), [0.0, 0.0, 0.0, 0.0, 5.0, 0.0]  # gate {4}, adjacency adds 3: right-most kept is 4
    for mark, want in [(-1, [1, 1, 1, 1, 1, 0]), (1, [0, 0, 1, 1, 1, 0]), (3, [0, 0, 0, 1, 1, 0]),
                       (5, [0, 0, 0, 1, 1, 0])]:
        # mark: rows left of 4 come back only if no earlier step of the block reached them
        assert fs.focus_keep_mask(pos, d, 1, mark=mark).astype(int).tolist() == want, mark
        assert fs.focus_keep_mask(pos, d, 1, mark=mark, progress=True).astype(int).tolist() == want  # True = "mark"
        # fill: every row from the first masked one to 4, whatever the mark
        assert fs.focus_keep_mask(pos, d, 1, mark=mark, progress="fill").astype(int).tolist() == [1, 1, 1, 1, 1, 0]
    for off in (None, "none", False):
        assert fs.focus_keep_mask(pos, d, 1, progress=off).astype(int).tolist() == [0, 0, 0, 1, 1, 0]
    with pytest.raises(ValueError):
        fs.focus_keep_mask(pos, d, 1, progress="prefix")

    # replayed over the steps of hand_trace at alpha 1 (a rebuilt: K = 1, 2, 2):
    # step 0: gate {2} + neighbour 1 + progress (mark -1) 0 -> {0, 1, 2}; mark becomes 2
    # step 1: M = {0, 1, 3, 5}, gate {0} < 2 -> top-2 {0, 3}, no masked neighbour; right-most 3.
    #   mark: row 1 <= mark 2 stays evicted (it was computed at step 0); fill: 1 comes back
    # step 2: |M| = 2 <= K keeps all; mark 3 before it
    t = hand_trace()
    mark = fs.simulate_keep(t, alpha=1.0)
    fill = fs.simulate_keep(t, alpha=1.0, progress="fill")
    assert mark.loc[mark.step == 1, "kept_sim"].tolist() == [True, False, True, False]
    assert fill.loc[fill.step == 1, "kept_sim"].tolist() == [True, True, True, False]
    assert mark.groupby("step")["mark_sim"].first().tolist() == [-1, 2, 3]
    assert mark.loc[mark.step != 1, "kept_sim"].tolist() == fill.loc[fill.step != 1, "kept_sim"].tolist()
    # decodable {2, 4}, {1, 5}, {0, 3}: mark misses 4, 1, 5; fill misses 4, 5
    assert fs.simulated_miss_rate(t, alpha=1.0) == pytest.approx(3 / 6)
    assert fs.simulated_miss_rate(t, alpha=1.0, progress="fill") == pytest.approx(2 / 6)

    # the mark restarts per (seq, block): the same block again as a second block (same positions,
    # later steps) and as a second sequence is replayed exactly like the first
    again = pd.concat([t, t.assign(block=1, step=t.step + 3), t.assign(seq=1)], ignore_index=True)
    sim = fs.simulate_keep(again, alpha=1.0)
    for part in (sim.iloc[len(t):2 * len(t)], sim.iloc[2 * len(t):]):
        assert part["kept_sim"].tolist() == mark["kept_sim"].tolist()
        assert part["mark_sim"].tolist() == mark["mark_sim"].tolist()
    assert fs.simulated_miss_rate(again, alpha=1.0) == pytest.approx(3 / 6)


def _kernel_decode(seed: int, k: int, gate_std: str, progress_rule: str, n_seq: int = 24, n_blocks: int = 2,
                   block: int = 8) -> pd.DataFrame:
    """A decode-like loop around focus_select_reference with the decoder's progress state.

    Per sequence and block: mark = -1 at the block's first step, then max(mark, right-most kept
    slot of ANY kind) after each step ("fill" gets the first masked slot instead); each step
    commits a random non-empty subset of the kept masked rows (only rows with logits can be
    committed). The first block starts with a few prompt slots (unmasked). Returns a trace
    (absolute positions, one row per masked slot and step) whose `kept` is the kernel's keep.
    """
    import torch
    from focuslib.kernels.selection import focus_select_reference

    rng = np.random.default_rng(seed)
    rows = []
    for seq in range(n_seq):
        step = 0
        for b in range(n_blocks):
            masked = np.ones(block, dtype=bool)
            if b == 0:
                masked[:rng.integers(0, 3)] = False  # prompt tail inside the first block
            mark = -1
            while masked.any():
                # integer-valued deltas half of the time: ties, and deltas exactly on the gate
                delta = (rng.integers(-3, 4, size=block) if rng.random() < 0.5
                         else rng.normal(size=block)).astype(np.float32)
                progress = mark if progress_rule == "mark" else int(np.flatnonzero(masked)[0])
                keep = focus_select_reference(torch.from_numpy(delta)[None], torch.from_numpy(masked)[None],
                                              torch.tensor([k]), torch.tensor([progress]), gate_std=gate_std,
                                              progress_rule=progress_rule)[0].numpy()
                slots = np.flatnonzero(masked)
                rows += [(seq, b, step, b * block + j, float(delta[j]), bool(keep[j])) for j in slots]
                mark = max(mark, int(np.flatnonzero(keep).max()))  # any kind: unmasked rows count
                cand = slots[keep[slots]]
                commit = cand[rng.random(len(cand)) < 0.5]
                masked[commit if len(commit) else cand[:1]] = False
                step += 1
    return pd.DataFrame(rows, columns=["seq", "block", "step", "position", "delta", "kept"])


def test_focus_keep_mask_matches_kernel_reference():
    torch = pytest.importorskip("torch")
    from focuslib.kernels.selection import focus_select_reference
    rng = np.random.default_rng(12)
    b, s = 256, 16
    delta = rng.normal(size=(b, s)).astype(np.float32)
    delta[::2] = rng.integers(-2, 3, size=(b // 2, s))  # ties, incl. deltas exactly on the gate
    masked = rng.random((b, s)) < 0.7
    masked[:, 5] = True
    budget = rng.integers(1, 7, size=b)
    mark = rng.integers(-1, s, size=b)  # how far earlier steps of the block got
    first = masked.argmax(1)
    args = (torch.from_numpy(delta), torch.from_numpy(masked), torch.from_numpy(budget))
    # defaults on both sides: population std, progress mark
    ref_mark = focus_select_reference(*args, torch.from_numpy(mark)).numpy()
    # the older rules: sample std, fill from the first masked slot
    ref_fill = focus_select_reference(*args, torch.from_numpy(first), gate_std="sample",
                                      progress_rule="fill").numpy()
    differ = 0
    for i in range(b):
        p = np.flatnonzero(masked[i])
        d = delta[i, p].astype(float)
        ours = fs.focus_keep_mask(p, d, int(budget[i]), mark=int(mark[i]))
        assert ours.tolist() == ref_mark[i, p].tolist(), ("mark", i)
        old = fs.focus_keep_mask(p, d, int(budget[i]), progress="fill", gate_std="sample")
        assert old.tolist() == ref_fill[i, p].tolist(), ("fill", i)
        differ += old.tolist() != ours.tolist()
    assert differ > 10  # the two rule sets really differ on this batch


@pytest.mark.parametrize("k", [1, 2, 3])
def test_simulate_keep_carries_mark_like_the_kernel(k):
    pytest.importorskip("torch")
    pytest.importorskip("focuslib.kernels.selection")
    for gate_std, rule in (("population", "mark"), ("sample", "fill")):
        trace = _kernel_decode(seed=20 + k, k=k, gate_std=gate_std, progress_rule=rule)
        assert trace.groupby(["seq", "block"])["step"].nunique().max() >= 3  # several steps per block
        kw = {} if rule == "mark" else {"progress": "fill", "gate_std": "sample"}
        sim = fs.simulate_keep(trace, alpha=float(k), avg_decoded=1.0, **kw)  # K = ceil(alpha * 1) = k
        assert (sim["budget"] == k).all()
        wrong = sim.loc[sim["kept_sim"] != sim["kept"], ["seq", "block", "step", "position"]]
        assert wrong.empty, (gate_std, rule, wrong.head())
        if rule == "mark":  # the mark matters on these traces: fill keeps strictly more
            fill = fs.simulate_keep(trace, alpha=float(k), avg_decoded=1.0, progress="fill")
            assert (fill["kept_sim"] >= sim["kept_sim"]).all() and fill["kept_sim"].sum() > sim["kept_sim"].sum()


def test_simulated_miss_curve_matches_simulate_keep_per_alpha():
    # a random label instead of the commits (which are kept by construction), so misses happen;
    # the curve must carry one mark per alpha, as separate simulate_keep runs do
    trace = _kernel_decode(seed=5, k=2, gate_std="population", progress_rule="mark", n_seq=40)
    trace["lab"] = np.random.default_rng(6).random(len(trace)) < 0.3
    alphas = [1.0, 1.5, 2.0, 3.0]
    for kw in ({}, {"progress": "fill"}, {"progress": None, "gate_std": "sample"}):
        curve = fs.simulated_miss_curve(trace, alphas, label="lab", **kw)
        one = [fs.keep_rule_precision_recall(fs.simulate_keep(trace, a, **kw), "lab", "kept_sim")["miss_rate"]
               for a in alphas]
        np.testing.assert_allclose(curve, one, err_msg=str(kw))
        assert curve[-1] < curve[0]


def test_simulated_miss_rate_hand_trace():
    t = hand_trace()
    # alpha 1.5, a rebuilt: K = 2, 3, 3
    # step 0: top-2 {2, 0} + neighbour 1 -> keep {0, 1, 2} (mark becomes 2); decodable {2, 4}: 4 missed
    # step 1: gate {0} < 3 -> top-3 {0, 3, 1}; evict 5; decodable {1, 5}: 5 missed
    # step 2: |M| = 2 <= 3, keep all.  2 of 6 decodable rows missed
    assert fs.simulated_miss_rate(t, alpha=1.5) == pytest.approx(2 / 6)
    sim = fs.simulate_keep(t, alpha=1.5)
    assert sim.loc[sim.step == 1, "kept_sim"].tolist() == [True, True, True, False]
    # alpha 1, a fixed at 1: K = 1 everywhere
    # step 0: gate {2} -> {1, 2} -> progress (mark -1) {0, 1, 2}: 4 missed; step 1: gate {0} -> {0}: 1 and 5
    # missed; step 2: the larger of two rows is exactly on the population-std gate -> {0}: 3 missed.  4 of 6
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


def test_predicted_miss_curve_carries_mark_over_steps():
    # several steps per block: the model's draws carry their own mark, like the replay
    t = synthetic_blocks(n_seq=200, block=16, n_dec=2, snr=2.0, seed=15)
    n_dec, alphas = int((t["committed_step"] == t["step"]).sum()), [1.0, 2.0]
    rates = {}
    for progress in ("mark", "fill"):
        sim = fs.simulated_miss_curve(t, alphas, progress=progress)
        pred = fs.predicted_miss_curve(t, alphas, n_draws=100, progress=progress)
        for p, q in zip(pred, sim):
            assert abs(p - q) < 3.5 * math.sqrt(q * (1 - q) / n_dec) + 0.005, (progress, pred, sim)
        rates[progress] = pred
    # the mark stops rows computed at earlier steps from coming back, so it misses more than fill
    # (a mark that never advanced would give fill's rates)
    assert rates["mark"][0] > 1.5 * rates["fill"][0]


def test_calibrate_alpha_hand_trace():
    t = hand_trace()
    alphas = [1.0, 1.5, 2.0, 3.0]
    # simulated rates at alpha 1, 1.5, 2, 3 (a = 1, 2, 2): 3/6, 2/6, 1/6, 0
    # (alpha 1: K = 1, 2, 2, misses 4, 1, 5 as in test_progress_mark_vs_fill; alpha 2: step 1 has
    # K = 4 = |M|; alpha 3: step 0 keeps top-3 {2, 0, 4} -> {0..4})
    res = fs.calibrate_alpha(t, 0.0, alphas=alphas, method="simulated")
    np.testing.assert_allclose(res["table"]["simulated"], [3 / 6, 2 / 6, 1 / 6, 0.0])
    assert res["alpha"] == 3.0
    assert fs.calibrate_alpha(t, 0.2, alphas=alphas, method="simulated")["alpha"] == 2.0
    assert fs.calibrate_alpha(t, 0.4, alphas=alphas, method="simulated")["alpha"] == 1.5
    # the older rules: fill brings row 1 back at alpha 1 -> 2/6
    fill = fs.calibrate_alpha(t, 0.4, alphas=alphas, method="simulated", progress="fill", gate_std="sample")
    np.testing.assert_allclose(fill["table"]["simulated"], [2 / 6, 2 / 6, 1 / 6, 0.0])
    assert fill["alpha"] == 1.0


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
