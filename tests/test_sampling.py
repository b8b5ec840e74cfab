"""Sampling options of the unmasking policies (top-k, top-p, Dream's alg_temp) and seeded,
batch-invariant sampling in the decoder (one generator per sequence).

Policy-level tests use hand-built distributions whose expected frequencies are worked out in
the comments; decoder-level tests use the tiny random models of focuslib.testing.
Shapes: B batch, L rows, V vocabulary.
"""
from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from focuslib.decoder import DiffusionDecoder, sequence_generators
from focuslib.testing import TINY_MASK, TINY_VOCAB, scramble_parameters, tiny_model
from focuslib.policies.unmasking import (
    POLICIES,
    Entropy,
    LowConfidence,
    MaskGITPlus,
    Origin,
    RandomRemask,
    StepContext,
    Threshold,
    TopKMargin,
)
from focuslib.policies.unmasking.base import propose, sampling_support
from tests.test_unmasking import CONF_DIR, assert_near, dist, logits_of

N = 20000  # rows per frequency estimate: binomial std <= 0.0036


def frequencies(policy, probs: list[float], seed: int = 0) -> torch.Tensor:
    """Token frequencies over N rows that all carry the distribution `probs`."""
    logits = logits_of([[dist(probs, len(probs))] * N])
    ctx = StepContext(0, None, torch.tensor([N]), torch.Generator().manual_seed(seed))
    out = policy(logits, torch.ones(1, N, dtype=torch.bool), ctx)
    return torch.bincount(out.tokens[0], minlength=len(probs)).float() / N


# ---------------------------------------------------------------------------------------
# top-k and top-p


def test_top_k_samples_among_the_k_most_likely():
    # [.5, .3, .15, .05], top-2 at T = 1: .5 / .8, .3 / .8 = .625, .375
    freq = frequencies(Threshold(temperature=1.0, top_k=2), [0.5, 0.3, 0.15, 0.05])
    assert_near(freq, [0.625, 0.375, 0.0, 0.0], atol=0.015)
    assert freq[2:].sum() == 0


def test_top_p_keeps_the_token_that_crosses_the_mass_on_the_tempered_distribution():
    # T = 1, top_p = .7: cumulative .5, .8 -> the .3 token crosses .7 and is kept -> .625, .375
    freq = frequencies(Threshold(temperature=1.0, top_p=0.7), [0.5, 0.3, 0.15, 0.05])
    assert_near(freq, [0.625, 0.375, 0.0, 0.0], atol=0.015)
    # top_p = .45: the first token alone crosses it
    freq = frequencies(Threshold(temperature=1.0, top_p=0.45), [0.5, 0.3, 0.15, 0.05])
    assert freq.tolist() == [1.0, 0.0, 0.0, 0.0]
    # top_p = .85: .5, .8, .95 -> three tokens: .5 / .95, .3 / .95, .15 / .95
    freq = frequencies(Threshold(temperature=1.0, top_p=0.85), [0.5, 0.3, 0.15, 0.05])
    assert_near(freq, [0.5263, 0.3158, 0.1579, 0.0], atol=0.015)
    # T = 0.5 tempers first: p^2 / sum = .6849, .2466, .0616, .0068, cumulative .6849, .9315 -> top_p = .9
    # keeps two (at T = 1 it keeps three): .6849 / .9315, .2466 / .9315 = .7353, .2647
    freq = frequencies(Threshold(temperature=0.5, top_p=0.9), [0.5, 0.3, 0.15, 0.05])
    assert_near(freq, [0.7353, 0.2647, 0.0, 0.0], atol=0.015)


def test_top_k_and_top_p_together_keep_tokens_that_pass_both():
    probs = [0.5, 0.3, 0.15, 0.05]
    logits = logits_of([[dist(probs, 4)]])
    for top_k, top_p, expected in [(3, 0.7, [1, 1, 0, 0]), (1, 0.85, [1, 0, 0, 0]), (2, None, [1, 1, 0, 0]),
                                   (None, 0.85, [1, 1, 1, 0]), (4, 1.0, None), (None, None, None)]:
        keep = sampling_support(logits, 1.0, top_k, top_p)
        assert (keep is None) == (expected is None), (top_k, top_p)
        if expected is not None:
            assert keep[0, 0].long().tolist() == expected, (top_k, top_p)


def test_greedy_ignores_top_k_and_top_p_and_confidence_stays_raw():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g) * 2
    candidates = torch.rand(3, 5, generator=g) < 0.7
    plain = propose(logits, candidates)
    filtered = propose(logits, candidates, 0.0, None, top_k=1, top_p=0.1)
    assert torch.equal(plain.tokens, filtered.tokens) and torch.equal(plain.confidence, filtered.confidence)
    # sampled with top-k: the confidence is the untempered, unfiltered probability of the drawn token
    sampled = propose(logits, candidates, 0.7, g, top_k=3)
    expected = logits.softmax(-1).gather(-1, sampled.tokens[..., None])[..., 0].masked_fill(~candidates, 0)
    assert_near(sampled.confidence, expected, atol=1e-6)
    top3 = logits.topk(3, dim=-1).indices
    assert (top3 == sampled.tokens[..., None]).any(-1).all()


# ---------------------------------------------------------------------------------------
# Dream's alg_temp


@pytest.mark.parametrize("cls", [MaskGITPlus, TopKMargin, Entropy])
def test_alg_temp_zero_is_the_deterministic_ranking(cls):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 8, 6, generator=g) * 3
    candidates = torch.rand(4, 8, generator=g) < 0.7
    n0 = candidates.sum(-1)
    ctx = StepContext(1, 4, n0, torch.Generator().manual_seed(1))
    assert torch.equal(cls()(logits, candidates, ctx).commit, cls(alg_temp=0.0)(logits, candidates, ctx).commit)


def test_alg_temp_samples_positions_from_softmax_of_confidence():
    # two candidates with confidence .8 and .6; n = 2 at step 0 of 4: floor(2 * .24975) = 0 -> one commit.
    # alg_temp = .2: softmax([.8, .6] / .2) = softmax([4, 3]) = [.7311, .2689]
    logits = logits_of([[dist([0.8, 0.2], 2), dist([0.6, 0.4], 2)]] * N)
    candidates = torch.ones(N, 2, dtype=torch.bool)
    ctx = StepContext(0, 4, torch.full((N,), 2), torch.Generator().manual_seed(0))
    out = MaskGITPlus(alg_temp=0.2)(logits, candidates, ctx)
    assert (out.commit.sum(-1) == 1).all()
    assert_near(out.commit.float().mean(0), [0.7311, 0.2689], atol=0.015)
    assert MaskGITPlus()(logits, candidates, ctx).commit[:, 0].all()  # greedy ranking: always the .8


def test_alg_temp_draws_without_replacement_like_dreams_multinomial():
    # 8 candidates, step 1 of 4: floor(8 * (1 - .5005 / .75025)) = floor(2.663) = 2 commits per row.
    # Dream: torch.multinomial(softmax(confidence / alg_temp), 2) without replacement; compare the
    # inclusion frequency of every position with that reference.
    confs = [0.9, 0.8, 0.7, 0.6, 0.55, 0.5, 0.45, 0.4]  # the argmax's probability: c > (1 - c) / 2
    logits = logits_of([[dist([c, (1 - c) / 2, (1 - c) / 2], 3) for c in confs]] * N)
    candidates = torch.ones(N, 8, dtype=torch.bool)
    ctx = StepContext(1, 4, torch.full((N,), 8), torch.Generator().manual_seed(1))
    ours = MaskGITPlus(alg_temp=0.3)(logits, candidates, ctx).commit
    assert (ours.sum(-1) == 2).all()
    weights = (torch.tensor(confs) / 0.3).softmax(-1).expand(N, 8)
    picks = torch.multinomial(weights, 2, replacement=False, generator=torch.Generator().manual_seed(2))
    reference = torch.zeros(N, 8).scatter_(1, picks, 1.0)
    assert_near(ours.float().mean(0), reference.mean(0), atol=0.02)


# ---------------------------------------------------------------------------------------
# per-sequence generators at the policy level


def _sampled_policies():
    return [LowConfidence(temperature=1.0), RandomRemask(), Origin(temperature=0.8),
            MaskGITPlus(temperature=1.0, alg_temp=0.5, top_p=0.9), Threshold(0.5, temperature=1.0, top_k=4)]


@pytest.mark.parametrize("policy", _sampled_policies(), ids=repr)
def test_each_row_draws_from_its_own_generator(policy):
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 8, 12, generator=g) * 2
    candidates = torch.rand(5, 8, generator=g) < 0.8
    n0 = candidates.sum(-1)
    seeds = [11, 12, 13, 14, 15]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    batch = policy(logits, candidates, StepContext(1, 4, n0, generators=gens))
    for b, s in enumerate(seeds):
        alone = policy(logits[b:b + 1], candidates[b:b + 1],
                       StepContext(1, 4, n0[b:b + 1], generators=[torch.Generator().manual_seed(s)]))
        assert torch.equal(alone.tokens[0], batch.tokens[b]) and torch.equal(alone.commit[0], batch.commit[b]), b
    with pytest.raises(ValueError, match="generators"):
        policy(logits, candidates, StepContext(1, 4, n0, generators=gens[:2]))


# ---------------------------------------------------------------------------------------
# configs and argument checks


def test_sampling_options_are_config_keys_of_every_policy():
    for name in POLICIES:
        cfg = OmegaConf.load(CONF_DIR / f"{name}.yaml")
        policy = instantiate(cfg, temperature=0.7, top_k=5, top_p=0.9, logits_eos_inf=True,
                             confidence_eos_eot_inf=True)
        assert (policy.top_k, policy.top_p, policy.logits_eos_inf, policy.confidence_eos_eot_inf) == (5, 0.9, True, True)
        assert "top_k=5" in repr(policy)
        assert "top_k" not in repr(instantiate(cfg))  # defaults stay out of the repr
    for name in ("maskgit_plus", "topk_margin", "entropy"):
        assert instantiate(OmegaConf.load(CONF_DIR / f"{name}.yaml"), alg_temp=0.5).alg_temp == 0.5


@pytest.mark.parametrize("make, argument", [
    (lambda: Threshold(top_k=0), "top_k"),
    (lambda: Threshold(top_k=2.5), "top_k"),
    (lambda: Threshold(top_k=True), "top_k"),
    (lambda: LowConfidence(top_p=0.0), "top_p"),
    (lambda: LowConfidence(top_p=1.5), "top_p"),
    (lambda: MaskGITPlus(alg_temp=-0.1), "alg_temp"),
    (lambda: Entropy(alg_temp=float("nan")), "alg_temp"),
    (lambda: Threshold(logits_eos_inf=1), "logits_eos_inf"),
    (lambda: Threshold(confidence_eos_eot_inf="yes"), "confidence_eos_eot_inf"),
])
def test_invalid_sampling_arguments_raise_value_error_naming_them(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_origin_has_no_alg_temp():
    with pytest.raises(TypeError):
        Origin(alg_temp=0.5)


# ---------------------------------------------------------------------------------------
# the decoder: one generator per sequence, keyed by (seed, index)

PROMPT_RNG = torch.Generator().manual_seed(123)
PROMPTS = [torch.randint(2, TINY_VOCAB - 1, (int(n),), generator=PROMPT_RNG).tolist()
           for n in torch.randint(1, 9, (64,), generator=PROMPT_RNG)]
GEN = 8


def random_model(family: str):
    """Tiny random model in float64: batch shape cannot flip near-ties of its logits."""
    return scramble_parameters(tiny_model(family), seed=7).double()


SAMPLED = {  # name -> (policy, steps): every kind of random draw of the policies
    "low_confidence": (lambda: LowConfidence(temperature=1.0), GEN),  # Gumbel noise
    "random": (lambda: RandomRemask(temperature=1.0), GEN),  # random remasking scores
    "origin": (lambda: Origin(temperature=1.0), GEN),  # Dream's coin flips
    "maskgit_alg_temp": (lambda: MaskGITPlus(temperature=1.0, alg_temp=0.5), GEN),  # alg_temp sampling
    "threshold_top_p": (lambda: Threshold(0.5, temperature=1.0, top_k=20, top_p=0.9), None),
}


@pytest.mark.parametrize("family", ["llada", "sdar"])
@pytest.mark.parametrize("name", sorted(SAMPLED))
def test_seeded_sampling_is_batch_invariant(family, name):
    make, steps = SAMPLED[name]
    model = random_model(family)
    block = None if model.cfg.block_diffusion else 4
    dec = DiffusionDecoder(model, make(), block_size=block)
    run = lambda prompts, **kw: dec.generate(prompts, gen_length=GEN, steps=steps, stop_at_eos=False, **kw)  # noqa: E731
    whole = run(PROMPTS, seed=7).tokens
    halves = torch.cat([run(PROMPTS[:32], seed=7).tokens,
                        run(PROMPTS[32:], seed=7, sequence_ids=range(32, 64)).tokens])
    assert torch.equal(whole, halves), "batch 64 vs two batches of 32"
    for i, prompt in enumerate(PROMPTS):
        alone = run([prompt], seed=7, sequence_ids=[i]).tokens[0]
        assert torch.equal(alone, whole[i]), f"sequence {i}: batch 1 differs from batch 32"
    assert not (whole == TINY_MASK).any()
    other = run(PROMPTS, seed=8).tokens
    assert (other != whole).any(1).sum() >= 16, "another seed should change many of the 64 sequences"
    assert torch.equal(run(PROMPTS[:8], seed=7).tokens, whole[:8])  # reproducible


def test_dense_labels_preview_does_not_consume_the_sequences_random_streams():
    dec = DiffusionDecoder(random_model("llada"), RandomRemask(temperature=1.0), block_size=4)
    plain = dec.generate(PROMPTS[:6], gen_length=GEN, steps=GEN, seed=3, stop_at_eos=False)
    traced = dec.generate(PROMPTS[:6], gen_length=GEN, steps=GEN, seed=3, stop_at_eos=False, trace=True,
                          dense_labels=True)
    assert torch.equal(plain.tokens, traced.tokens)
    assert (traced.trace["dense_commit"] == traced.trace["committed"]).all()  # no eviction: dense = committed


def test_sequence_generators_keys():
    gens = sequence_generators(5, None, 3, torch.device("cpu"))
    draws = [torch.rand(4, generator=g) for g in gens]
    assert not torch.equal(draws[0], draws[1])
    again = sequence_generators(5, [1], 1, torch.device("cpu"))
    assert torch.equal(torch.rand(4, generator=again[0]), draws[1])
    swapped = sequence_generators(1, [5], 1, torch.device("cpu"))  # (1, 5) is not (5, 1)
    assert not torch.equal(torch.rand(4, generator=swapped[0]),
                           torch.rand(4, generator=sequence_generators(5, [1], 1, torch.device("cpu"))[0]))
    assert sequence_generators(None, None, 3, torch.device("cpu")) is None
    with pytest.raises(ValueError, match="seed"):
        sequence_generators(None, [0, 1, 2], 3, torch.device("cpu"))
    for bad in ([0, 1], [0, 1, -2], [0, 1, 2.0]):
        with pytest.raises(ValueError, match="sequence_ids"):
            sequence_generators(1, bad, 3, torch.device("cpu"))
    with pytest.raises(TypeError, match="seed"):
        sequence_generators("1", None, 3, torch.device("cpu"))


def test_sampling_options_compose_as_hydra_overrides():
    from tests.test_llada_options import _plan

    plan = _plan(["unmasking=maskgit_plus", "unmasking.temperature=0.7", "unmasking.top_k=20", "unmasking.top_p=0.95",
                  "unmasking.alg_temp=0.5"])
    assert (plan.unmasking.top_k, plan.unmasking.top_p, plan.unmasking.alg_temp) == (20, 0.95, 0.5)
    from focuslib.experiments.config_checks import ConfigError
    with pytest.raises(ConfigError, match="unmasking.top_p"):
        _plan(["unmasking.top_p=1.5"])
