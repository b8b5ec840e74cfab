"""Statistics on decode traces: does importance predict decodability, and how often
does FOCUS eviction drop a token that was about to be decoded?

Typical notebook flow on a trace recorded with eviction `none`:

    t = decodability_labels(trace)
    association_table(t, groups=("seq", "step"))            # AUC / correlations + CIs
    z = standardize_within_steps(t)                           # gate at z = 1
    model = fit_noise_model(z[~t.decodable_now])              # pooled Gaussian noise model
    goodness_of_fit(z[~t.decodable_now], model); qq_data(...)
    s = step_noise_snr(t)                                     # per-step SNR, n_noise
    miss_probability(s.snr[s.decodable_now], "gate", n_noise=s.n_noise[s.decodable_now])
    calibrate_alpha(t, target=0.05)["table"]                  # predicted vs simulated

Only numpy / scipy / pandas; no torch.
"""
from focuslib.stats.association import (
    SIGNALS,
    association_table,
    auc,
    binary_association,
    bootstrap_ci,
    keep_rule_precision_recall,
    miss_rate,
    point_biserial,
    roc_curve,
    spearman,
    within_step_auc,
)
from focuslib.stats.calibrate import calibrate_alpha, predicted_miss_curve, predicted_miss_rate, step_noise_snr
from focuslib.stats.keep_rule import (
    agreeing_rows,
    agreeing_steps,
    focus_keep_mask,
    observed_miss_rate,
    simulate_keep,
    simulated_miss_curve,
    simulated_miss_rate,
)
from focuslib.stats.labels import budget, decodability_labels, group_keys, standardize_within_steps, step_table
from focuslib.stats.miss import miss_probability, normal_expectation, topk_miss_bound
from focuslib.stats.noise import (
    NoiseModel,
    anderson_critical_values,
    fit_noise_model,
    fit_noise_model_by,
    goodness_of_fit,
    qq_data,
    snr,
)

__all__ = [
    "NoiseModel", "SIGNALS", "agreeing_rows", "agreeing_steps", "anderson_critical_values", "association_table",
    "auc", "binary_association", "bootstrap_ci", "budget", "calibrate_alpha", "decodability_labels",
    "fit_noise_model", "fit_noise_model_by", "focus_keep_mask", "goodness_of_fit", "group_keys",
    "keep_rule_precision_recall", "miss_probability", "miss_rate", "normal_expectation", "observed_miss_rate",
    "point_biserial", "predicted_miss_curve", "predicted_miss_rate", "qq_data", "roc_curve", "simulate_keep",
    "simulated_miss_curve", "simulated_miss_rate", "snr", "spearman", "standardize_within_steps",
    "step_noise_snr", "step_table", "topk_miss_bound", "within_step_auc",
]
