"""Unmasking policies on tiny hand-built logits.

Logits are the log of chosen probabilities, so each row's confidence is a number written
in the test, and every expected commit below was worked out by hand from those numbers
(the arithmetic is in the comments). Shapes: B batch, L rows, V vocabulary.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from focuslib.policies.unmasking import (
    POLICIES,
    EBSampler,
    Entropy,
    Factor,
    LowConfidence,
    MaskGITPlus,
    Origin,
    RandomRemask,
    StepContext,
    Threshold,
    TopKMargin,
)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "unmasking"
V = 32  # vocabulary of the hand-built rows
SCHEDULED = {"low_confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin"}
RANDOM_POSITIONS = {"random", "origin"}  # which rows commit depends on the generator



# ---------------------------------------------------------------------------------------
# builders


def peaked(c: float, token: int = 0, vocab: int = V) -> list[float]:
    """Distribution with probability c on `token`, the rest spread evenly (c > 1/vocab
    keeps `token` the argmax)."""
    row = [(1.0 - c) / (vocab - 1)] * vocab
    row[token] = c
    return row


def dist(probs: list[float], vocab: int = V) -> list[float]:
    """Explicit distribution, zero-padded to `vocab` (zeros become -inf logits)."""
    return probs + [0.0] * (vocab - len(probs))


def logits_of(batch: list[list[list[float]]]) -> torch.Tensor:
    """[B][L][V] probabilities -> [B, L, V] float32 logits = log p."""
    return torch.tensor(batch, dtype=torch.float64).log().float()


def ctx(step: int, steps: int | None, n0: list[int], seed: int | None = None) -> StepContext:
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    return StepContext(step, steps, torch.tensor(n0), gen)


def bools(rows: list[list[int]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool)


def assert_near(actual: torch.Tensor, expected, atol: float) -> None:
    """Elementwise |actual - expected| <= atol (torch.testing's first call costs seconds)."""
    expected = torch.as_tensor(expected, dtype=actual.dtype).expand_as(actual)
    assert ((actual - expected).abs() <= atol).all(), (actual, expected)


# ---------------------------------------------------------------------------------------
# LLaDA


def test_low_confidence_commits_most_confident_quota_then_flushes():
    confs, tokens = [0.5, 0.9, 0.3, 0.8, 0.6], [2, 0, 1, 3, 0]
    logits = logits_of([[peaked(c, t) for c, t in zip(confs, tokens)]])
    policy = LowConfidence()

    # n0 = 5 over 2 steps: 5 // 2 = 2, remainder 1 goes to step 0 -> quota 3: 0.9, 0.8, 0.6
    out = policy(logits, bools([[1, 1, 1, 1, 1]]), ctx(0, 2, [5]))
    assert out.commit.tolist() == [[False, True, False, True, True]]
    assert out.tokens.tolist() == [tokens]
    assert_near(out.confidence, [confs], atol=1e-5)

    # last step commits everything left, whatever the quota says
    out = policy(logits, bools([[1, 0, 1, 0, 0]]), ctx(1, 2, [5]))
    assert out.commit.tolist() == [[True, False, True, False, False]]
    assert out.confidence[0, 1] == 0.0  # not a candidate -> confidence 0


def test_low_confidence_schedule_sums_to_mask_count_with_remainder_first():
    # three rows, 3 steps: n0 = 7 -> 2 rem 1 -> [3, 2, 2]; n0 = 2 -> 0 rem 2 -> [1, 1, 0];
    # n0 = 5 -> 1 rem 2 -> [2, 2, 1]
    confs = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65]
    logits = logits_of([[peaked(c) for c in confs]] * 3)
    candidates = bools([[1] * 7, [1, 1, 0, 0, 0, 0, 0], [0, 1, 1, 1, 1, 1, 0]])
    n0 = candidates.sum(-1).tolist()
    assert n0 == [7, 2, 5]
    per_step = []
    for step in range(3):
        out = LowConfidence()(logits, candidates, ctx(step, 3, n0))
        per_step.append(out.commit.sum(-1).tolist())
        candidates = candidates & ~out.commit
    assert per_step == [[3, 1, 2], [2, 1, 2], [2, 0, 1]]
    assert not candidates.any()


def test_low_confidence_quota_clipped_to_one_and_overrun_flushes():
    logits = logits_of([[peaked(c) for c in [0.6, 0.7, 0.8]]])
    candidates = bools([[1, 1, 1]])
    # n0 = 2 over 4 steps: quotas [1, 1, 0, 0]; at step 2 three rows remain (the decoder
    # could not commit them), quota 0 is clipped up to 1 -> the 0.8 row
    out = LowConfidence()(logits, candidates, ctx(2, 4, [2]))
    assert out.commit.tolist() == [[False, False, True]]
    for step in (3, 5):  # the last budgeted step and a step past the budget flush all
        assert LowConfidence()(logits, candidates, ctx(step, 4, [2])).commit.all()


def test_random_remask_keeps_quota_but_ignores_confidence():
    logits = logits_of([[peaked(c) for c in [0.9, 0.5, 0.4, 0.3]]])
    candidates = bools([[1, 1, 1, 1]])
    counts = torch.zeros(4)
    for seed in range(200):
        # n0 = 4 over 4 steps: quota 1 per step
        commit = RandomRemask()(logits, candidates, ctx(0, 4, [4], seed)).commit
        assert commit.sum() == 1
        counts += commit[0].float()
    # uniform scores: each position expected 50 times out of 200 (low_confidence: always 0)
    assert (counts >= 20).all(), counts
    # n0 = 6 over 4 steps: 1 rem 2 -> quota 2 at step 1
    six = logits_of([[peaked(0.5)] * 6])
    assert RandomRemask()(six, bools([[1] * 6]), ctx(1, 4, [6], 0)).commit.sum() == 2


# ---------------------------------------------------------------------------------------
# Dream


@pytest.mark.parametrize("cls", [MaskGITPlus, TopKMargin, Entropy])
def test_dream_counts_hand_checked(cls):
    # t = linspace(1, 0.001, 5) = [1, 0.75025, 0.5005, 0.25075, 0.001]
    # step 0: 8 * (1 - 0.75025)          = 8 * 0.24975 = 1.998 -> 1
    # step 1: 7 * (1 - 0.5005/0.75025)   = 7 * 0.33289 = 2.330 -> 2
    # step 2: 5 * (1 - 0.25075/0.5005)   = 5 * 0.49900 = 2.495 -> 2
    # step 3: last -> the remaining 3
    logits = logits_of([[peaked(0.9 - 0.05 * j) for j in range(8)]])
    candidates = torch.ones(1, 8, dtype=torch.bool)
    counts = []
    for step in range(4):
        out = cls()(logits, candidates, ctx(step, 4, [8]))
        counts.append(int(out.commit.sum()))
        candidates = candidates & ~out.commit
    assert counts == [1, 2, 2, 3]
    # 2 * 0.24975 = 0.4995 -> 0, raised to at least one
    assert cls()(logits, bools([[1, 1, 0, 0, 0, 0, 0, 0]]), ctx(0, 4, [2])).commit.sum() == 1


def test_dream_rankings_differ_as_hand_computed():
    # row 0: A = [.6, .4]          conf .6, margin .2, H = .6 ln(1/.6) + .4 ln(1/.4) = 0.673
    #        B = [.5, .2, .2, .1]  conf .5, margin .3, H = 1.221
    # row 1: E = [.5, .5]          conf .5, margin 0,  H = ln 2 = 0.693
    #        F = [.6, .1 x 4]      conf .6, margin .5, H = .6 ln(1/.6) + .4 ln 10 = 1.228
    logits = logits_of(
        [
            [dist([0.6, 0.4]), dist([0.5, 0.2, 0.2, 0.1])],
            [dist([0.5, 0.5]), dist([0.6, 0.1, 0.1, 0.1, 0.1])],
        ]
    )
    candidates = torch.ones(2, 2, dtype=torch.bool)
    step = ctx(0, 4, [2, 2])  # 2 * 0.24975 -> 0 -> one commit per row
    expected = {
        MaskGITPlus: [[True, False], [False, True]],  # A, F
        TopKMargin: [[False, True], [False, True]],  # B, F
        Entropy: [[True, False], [True, False]],  # A, E
    }
    for cls, commit in expected.items():
        assert cls()(logits, candidates, step).commit.tolist() == commit, cls.__name__


def test_origin_draws_with_fraction_and_falls_back_to_most_confident():
    logits = logits_of([[peaked(0.3), peaked(0.9)]])
    candidates = bools([[1, 1]])
    # eps = 0.999, 2 steps: t = [1, 0.9995, 0.999], step 0 draws with p = 0.0005, so a
    # row is almost never drawn and the fallback commits the most confident (the 0.9)
    for seed in range(10):
        out = Origin(eps=0.999)(logits, candidates, ctx(0, 2, [2], seed))
        assert out.commit.tolist() == [[False, True]], seed
    assert Origin()(logits, candidates, ctx(1, 2, [2], 0)).commit.all()  # last step

    # p = 1 - 0.75025 = 0.24975 on 4000 rows: about 999 drawn (std ~27)
    many = logits_of([[dist([0.7, 0.3], 2)] * 4000])
    out = Origin()(many, torch.ones(1, 4000, dtype=torch.bool), ctx(0, 4, [4000], 1))
    assert 880 <= int(out.commit.sum()) <= 1120


# ---------------------------------------------------------------------------------------
# Fast-dLLM threshold and factor


def test_threshold_commits_confident_rows_and_at_least_one():
    logits = logits_of(
        [
            [peaked(c) for c in [0.95, 0.91, 0.89, 0.5]],  # two above 0.9
            [peaked(c) for c in [0.6, 0.8, 0.7, 0.5]],  # none above: only the 0.8
            [peaked(c) for c in [0.99, 0.99, 0.99, 0.99]],  # no candidates: nothing
        ]
    )
    candidates = bools([[1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    out = Threshold(0.9)(logits, candidates, ctx(0, None, [4, 4, 0]))
    assert out.commit.tolist() == [
        [True, True, False, False],
        [False, True, False, False],
        [False, False, False, False],
    ]
    # threshold 1 is allowed and inclusive: a point mass (logits [0, -inf, ...]) has
    # confidence exactly 1
    exact = logits_of([[dist([1.0]), dist([1.0]), peaked(0.99)]])
    out = Threshold(1.0)(exact, bools([[1, 1, 1]]), ctx(0, None, [3]))
    assert out.commit.tolist() == [[True, True, False]]
    # none above the bar: the most confident candidate, the left-most on ties, never a non-candidate
    ties = logits_of([[peaked(0.8), peaked(0.6), peaked(0.7), peaked(0.7)]])
    out = Threshold(0.9)(ties, bools([[0, 1, 1, 1]]), ctx(0, None, [3]))
    assert out.commit.tolist() == [[False, False, True, False]]


def factor_rows(rows: list[list[float]], width: int = 5):
    """Each row's confidences in the first positions; the rest are not candidates."""
    logits = logits_of([[peaked(c) for c in r] + [peaked(0.5)] * (width - len(r)) for r in rows])
    candidates = bools([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return logits, candidates


def test_factor_rule_and_reference_off_by_one():
    # factor 1: thresholds 1 - 1/(n+1) = [forced, .667, .75, .8, .833]
    rows = [
        [0.6, 0.99, 0.5, 0.95, 0.7],  # sorted .99 .95 .7: .7 < .75 stops at n = 3 -> 2
        [0.9, 0.8, 0.5],  # .8 >= .667, .5 < .75 -> 2; only the last fails -> ref 3
        [0.3, 0.2],  # .2 < .667 -> 1; only the last fails -> ref 2
        [0.99, 0.98, 0.97],  # all pass -> 3
        [0.4, 0.3, 0.2, 0.1],  # .3 < .667 -> 1 (N - 1 = 3, no bump)
    ]
    logits, candidates = factor_rows(rows)
    n0 = candidates.sum(-1).tolist()
    clean = Factor(1.0, reference_off_by_one=False)(logits, candidates, ctx(0, None, n0))
    ref = Factor(1.0)(logits, candidates, ctx(0, None, n0))
    assert clean.commit.sum(-1).tolist() == [2, 2, 1, 3, 1]
    assert ref.commit.sum(-1).tolist() == [2, 3, 2, 3, 1]
    assert clean.commit[0].tolist() == [False, True, False, True, False]  # the .99 and .95

    # factor 2: thresholds 1 - 2/(n+1) = [forced, .333, .5, .6, .667]
    # .9 .5 .45 .4 .1: .5 >= .333, .45 < .5 -> 2
    logits, candidates = factor_rows([[0.9, 0.5, 0.45, 0.4, 0.1]])
    assert Factor(2.0)(logits, candidates, ctx(0, None, [5])).commit.sum() == 2


# ---------------------------------------------------------------------------------------
# EB-sampler


def test_eb_sampler_entropy_budget_boundaries():
    ln2 = math.log(2.0)
    # by confidence: A = point mass (conf 1, H 0), B = [.5, .5] (conf .5, H ln 2),
    # C = [.4, .3, .3] (conf .4, H 1.089); placed in order C, B, A.
    # prefix sums minus max: {A} 0, {A, B} 0 + ln2 - ln2 = 0, {A, B, C} ln 2 = 0.693
    logits = logits_of([[dist([0.4, 0.3, 0.3]), dist([0.5, 0.5]), dist([1.0])]])
    candidates = bools([[1, 1, 1]])
    for gamma, expected in [
        (0.0, [False, True, True]),
        (ln2 - 1e-3, [False, True, True]),
        (ln2 + 1e-3, [True, True, True]),
    ]:
        out = EBSampler(gamma)(logits, candidates, ctx(0, None, [3]))
        assert out.commit.tolist() == [expected], gamma

    # two coin flips: {first} 0, {both} 2 ln2 - ln2 = 0.693; equal confidence -> the
    # leftmost is ranked first
    coins = logits_of([[dist([0.5, 0.5]), dist([0.5, 0.5])]])
    both = bools([[1, 1]])
    assert EBSampler(0.5)(coins, both, ctx(0, None, [2])).commit.tolist() == [[True, False]]
    assert EBSampler(0.7)(coins, both, ctx(0, None, [2])).commit.all()


# ---------------------------------------------------------------------------------------
# properties shared by every policy


def random_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    B, L, Vr = 4, 8, 6
    logits = torch.randn(B, L, Vr, generator=g) * 3
    candidates = torch.rand(B, L, generator=g) < 0.6
    candidates[seed % B] = False  # always one row without candidates
    steps = int(torch.randint(1, 6, (1,), generator=g))
    step = int(torch.randint(0, steps + 1, (1,), generator=g))  # may overrun the budget
    n0 = candidates.sum(-1) + torch.randint(0, 3, (B,), generator=g)
    dtype = torch.bfloat16 if seed % 3 == 0 else torch.float32
    generator = torch.Generator().manual_seed(seed)
    return logits.to(dtype), candidates, StepContext(step, steps, n0, generator)


@pytest.mark.parametrize("name", sorted(POLICIES))
@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_never_commits_non_candidates_and_always_progresses(name, temperature):
    policy = POLICIES[name](temperature=temperature)
    for seed in range(25):
        logits, candidates, step = random_case(seed)
        out = policy(logits, candidates, step)
        assert out.commit.dtype == torch.bool and out.tokens.dtype == torch.long
        assert out.confidence.dtype == torch.float32
        assert not (out.commit & ~candidates).any(), seed
        has = candidates.any(-1)
        assert (out.commit.sum(-1)[has] >= 1).all(), seed
        assert (out.commit.sum(-1)[~has] == 0).all(), seed
        assert (out.confidence[~candidates] == 0).all()
        assert ((out.confidence >= 0) & (out.confidence <= 1)).all()


@pytest.mark.parametrize("name", sorted(set(POLICIES) - RANDOM_POSITIONS))
def test_batch_rows_are_independent(name):
    policy = POLICIES[name]()
    for seed in range(5):
        logits, candidates, step = random_case(seed)
        batch = policy(logits, candidates, step)
        for b in range(logits.shape[0]):
            n0 = step.n_masked_at_block_start[b : b + 1]
            alone_ctx = StepContext(step.step, step.steps_per_block, n0)
            alone = policy(logits[b : b + 1], candidates[b : b + 1], alone_ctx)
            assert torch.equal(alone.commit[0], batch.commit[b]), (seed, b)
            assert torch.equal(alone.tokens[0], batch.tokens[b]), (seed, b)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_sampling_reproducible_with_seeded_generator(name):
    logits, candidates, _ = random_case(1)
    policy = POLICIES[name](temperature=0.7)
    runs = [policy(logits, candidates, ctx(0, 3, [8] * 4, seed)) for seed in (5, 5, 6)]
    assert torch.equal(runs[0].tokens, runs[1].tokens)
    assert torch.equal(runs[0].commit, runs[1].commit)
    assert not torch.equal(runs[0].tokens, runs[2].tokens)  # 32 rows x 6 tokens: differs


def test_temperature_samples_tempered_distribution_and_reports_raw_confidence():
    n = 20000
    logits = logits_of([[dist([0.7, 0.2, 0.1], 3)] * n])
    candidates = torch.ones(1, n, dtype=torch.bool)
    # T = 1: frequencies .7 .2 .1; T = 0.5: p^2 normalised = .49 .04 .01 / .54
    for temperature, expected in [(1.0, [0.7, 0.2, 0.1]), (0.5, [0.9074, 0.0741, 0.0185])]:
        out = Threshold(temperature=temperature)(logits, candidates, ctx(0, None, [n], 3))
        freq = torch.bincount(out.tokens[0], minlength=3).float() / n
        assert_near(freq, expected, atol=0.015)
        # confidence is the untempered probability of whichever token was drawn
        picked = out.confidence[0][out.tokens[0] == 1]
        assert picked.numel() > 0
        assert_near(picked, 0.2, atol=1e-5)


# ---------------------------------------------------------------------------------------
# configs and argument validation


def test_every_config_instantiates_and_mirrors_constructor():
    paths = sorted(CONF_DIR.glob("*.yaml"))
    assert {p.stem for p in paths} == set(POLICIES)
    for path in paths:
        cfg = OmegaConf.load(path)
        policy = instantiate(cfg)
        assert type(policy) is POLICIES[path.stem]
        for key, value in cfg.items():
            if key != "_target_":
                assert getattr(policy, key) == value, (path.stem, key)
        assert instantiate(cfg, temperature=0.5).temperature == 0.5
        with pytest.raises(InstantiationException):
            instantiate(cfg, not_an_argument=1)


def test_config_keyword_overrides():
    load = lambda name: OmegaConf.load(CONF_DIR / f"{name}.yaml")  # noqa: E731
    assert instantiate(load("threshold"), threshold=0.5).threshold == 0.5
    assert instantiate(load("factor"), factor=2.0).factor == 2.0
    assert instantiate(load("factor"), reference_off_by_one=False).reference_off_by_one is False
    assert instantiate(load("eb"), gamma=0.3).gamma == 0.3
    for name in ("maskgit_plus", "topk_margin", "entropy", "origin"):
        assert instantiate(load(name), eps=0.01).eps == 0.01
    with pytest.raises(InstantiationException, match="threshold"):
        instantiate(load("threshold"), threshold=1.5)


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: Threshold(0.0), "threshold"),
        (lambda: Threshold(1.5), "threshold"),
        (lambda: Threshold(-0.2), "threshold"),
        (lambda: Threshold(float("nan")), "threshold"),
        (lambda: Factor(0.0), "factor"),
        (lambda: Factor(-1.0), "factor"),
        (lambda: Factor(float("inf")), "factor"),
        (lambda: Factor(1.0, reference_off_by_one="yes"), "reference_off_by_one"),
        (lambda: EBSampler(-0.01), "gamma"),
        (lambda: EBSampler("0.1"), "gamma"),
        (lambda: MaskGITPlus(eps=0.0), "eps"),
        (lambda: TopKMargin(eps=1.0), "eps"),
        (lambda: Entropy(eps=-1e-3), "eps"),
        (lambda: Origin(eps=2.0), "eps"),
    ]
    + [(lambda cls=cls: cls(temperature=-0.1), "temperature") for cls in POLICIES.values()]
    + [(lambda cls=cls: cls(temperature=True), "temperature") for cls in POLICIES.values()],
)
def test_invalid_arguments_raise_value_error_naming_them(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_schedule_requirement_is_declared_and_checked():
    assert {n for n, cls in POLICIES.items() if cls.needs_schedule} == SCHEDULED
    logits = logits_of([[peaked(0.9), peaked(0.8)]])
    for name in SCHEDULED:
        with pytest.raises(ValueError, match="steps_per_block"):
            POLICIES[name]()(logits, bools([[1, 1]]), ctx(0, None, [2]))
    with pytest.raises(ValueError, match="candidates"):
        Threshold()(logits, torch.ones(1, 2, dtype=torch.long), ctx(0, None, [2]))
