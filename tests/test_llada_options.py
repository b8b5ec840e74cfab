"""LLaDA's official generation options against a hand-written loop: classifier-free guidance
(`cfg_scale`, DiffusionDecoder) and the EOS controls of its eval scripts (`logits_eos_inf`,
`confidence_eos_eot_inf`, unmasking-policy options).

The reference is LLaDA's `generate.py` written out here for one prompt: greedy, low_confidence
remasking, semi-autoregressive blocks, a full forward of the whole sequence at every step (no
cache), plus focuslib's one convention that the mask token is never committed. The decoder
must give the same tokens for a ragged batch.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from focuslib.decoder import DiffusionDecoder, special_ids
from focuslib.policies.eviction import DyLLM
from focuslib.policies.unmasking import LowConfidence, Threshold
from focuslib.testing import TINY_MASK, scramble_parameters, sharpen, tiny_model

GEN, BLOCK = 8, 4
PROMPTS = [[2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13, 14, 15], [16, 17, 18, 19]]
EOS, EOT, LLADA_VOCAB = 126081, 126348, 126464  # LLaDA's <|endoftext|>, <|eot_id|>, embedding_size


@torch.no_grad()
def llada_loop(model, prompt: list[int], steps: int, *, cfg_scale: float = 0.0, logits_eos_inf: bool = False,
               confidence_eos_eot_inf: bool = False) -> list[int]:
    """LLaDA's generate() for one prompt (greedy, low_confidence), generated ids."""
    p_len = len(prompt)
    x = torch.tensor([prompt + [TINY_MASK] * GEN])
    start = torch.tensor([p_len])
    steps_per_block = steps // (GEN // BLOCK)
    for b in range(GEN // BLOCK):
        lo, hi = p_len + b * BLOCK, p_len + (b + 1) * BLOCK
        n0 = int((x[0, lo:hi] == TINY_MASK).sum())
        quota = [n0 // steps_per_block + (1 if i < n0 % steps_per_block else 0) for i in range(steps_per_block)]
        for i in range(steps_per_block):
            logits = model(x, answer_start=start)[0].float()
            if cfg_scale > 0:
                un_x = x.clone()
                un_x[0, :p_len] = TINY_MASK  # prompt_index -> mask_id
                un_logits = model(un_x, answer_start=start)[0].float()
                logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
            if model.cfg.logit_shift:  # Dream: position p is read from row p - 1
                logits = torch.cat([logits[:1], logits[:-1]])
            logits[:, TINY_MASK] = float("-inf")  # focuslib: the mask token is never committed
            if logits_eos_inf:
                logits[:, EOS] = float("-inf")
            x0 = logits.argmax(-1)
            if confidence_eos_eot_inf:  # after the token is chosen: EOS and EoT never win on confidence
                # (generate.py: `logits_with_noise[:, :, EOS] = logits[:, :, EOT] = -inf`, and at temperature 0
                # logits_with_noise is logits itself, so both are -inf in the softmax that gives confidence)
                logits[:, [EOS, EOT]] = float("-inf")
            conf = logits.softmax(-1).gather(-1, x0[:, None])[:, 0]
            masked = [j for j in range(lo, hi) if int(x[0, j]) == TINY_MASK]
            for j in sorted(masked, key=lambda j: (-float(conf[j]), j))[:quota[i]]:
                x[0, j] = x0[j]
    return x[0, p_len:].tolist()


# ---------------------------------------------------------------------------------------
# classifier-free guidance


@functools.lru_cache(maxsize=None)
def sharp_model(family: str):
    return sharpen(tiny_model(family))


@pytest.mark.parametrize("steps", [GEN, GEN // 2])
@pytest.mark.parametrize("cfg_scale", [0.0, 1.0, 3.0])
@pytest.mark.parametrize("family", ["llada", "dream"])
def test_cfg_matches_llada_generate_loop(family, cfg_scale, steps):
    model = sharp_model(family)
    dec = DiffusionDecoder(model, LowConfidence(), block_size=BLOCK, cache="none", cfg_scale=cfg_scale)
    out = dec.generate(PROMPTS, gen_length=GEN, steps=steps, stop_at_eos=False)
    for i, prompt in enumerate(PROMPTS):
        assert out.tokens[i].tolist() == llada_loop(model, prompt, steps, cfg_scale=cfg_scale), f"prompt {i}"


def test_cfg_changes_tokens_doubles_the_rows_and_costs_nothing_when_off():
    model = sharp_model("llada")
    run = lambda **kw: DiffusionDecoder(model, LowConfidence(), block_size=BLOCK, **kw).generate(  # noqa: E731
        PROMPTS, gen_length=GEN, steps=GEN, stop_at_eos=False)
    plain, off, guided = run(), run(cfg_scale=0.0), run(cfg_scale=3.0)
    assert torch.equal(plain.tokens, off.tokens)
    assert off.stats.row_layers == plain.stats.row_layers and off.stats.forward_passes == plain.stats.forward_passes
    assert not torch.equal(plain.tokens, guided.tokens)  # the test model is sensitive to guidance
    assert guided.stats.forward_passes == plain.stats.forward_passes  # one batched forward per step
    assert guided.stats.row_layers == 2 * plain.stats.row_layers  # the unconditional copy's rows


@pytest.mark.parametrize("family,caches", [("llada", ("prefix", "dual")), ("sdar", ("none", "block", "delayed"))])
def test_cfg_with_caches_and_block_diffusion_batch_equals_alone(family, caches):
    model = sharp_model(family)
    block = None if model.cfg.block_diffusion else BLOCK
    exact = {}
    for cache in caches:
        dec = DiffusionDecoder(model, Threshold(0.6), block_size=block, cache=cache, cfg_scale=2.0)
        batch = dec.generate(PROMPTS, gen_length=GEN, stop_at_eos=False)
        for i, prompt in enumerate(PROMPTS):
            assert batch.tokens[i].tolist() == dec.generate([prompt], gen_length=GEN, stop_at_eos=False).tokens[0].tolist()
        exact[cache] = batch.tokens
        traced = dec.generate(PROMPTS, gen_length=GEN, stop_at_eos=False, trace=True, dense_labels=True)
        assert torch.equal(traced.tokens, batch.tokens) and len(traced.trace) > 0
    if family == "sdar":  # block cache is exact for block diffusion, guided too
        assert torch.equal(exact["none"], exact["block"])


def test_cfg_rejects_eviction_and_bad_scales():
    model = sharp_model("llada")
    with pytest.raises(ValueError, match="eviction"):
        DiffusionDecoder(model, LowConfidence(), DyLLM(), block_size=BLOCK, cfg_scale=1.0)
    DiffusionDecoder(model, LowConfidence(), DyLLM(), block_size=BLOCK, cfg_scale=0.0)  # off: fine
    for bad in (-1.0, float("inf"), float("nan"), True, "1"):
        with pytest.raises(ValueError, match="cfg_scale"):
            DiffusionDecoder(model, LowConfidence(), block_size=BLOCK, cfg_scale=bad)


# ---------------------------------------------------------------------------------------
# EOS controls


@functools.lru_cache(maxsize=None)
def eos_model():
    """Tiny LLaDA with LLaDA's real vocabulary size and EOS / EoT ids, which predicts EOS at
    answer offsets 0, 3, 6 and EoT at 2, 5 with a middling probability (0.25-0.75) and other
    tokens elsewhere: residual dims 0 and 1 carry an answer-offset signal that no layer
    writes to, and the LM head reads EOS off dim 0 and EoT off dim 1."""
    model = scramble_parameters(tiny_model("llada", vocab_size=LLADA_VOCAB, eos_ids=(EOS, EOT), pad_id=EOS,
                                           answer_offset_embeddings=GEN), seed=1)
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.wo.weight[:2] = 0
            layer.mlp.w_down.weight[:2] = 0
        for w in (model.embed.weight, model.offset_embed.weight, model.lm_head.weight):
            w[:, :2] = 0
        model.norm.weight[:2] = 1
        for offset, dim, value in [(0, 0, 2.1), (2, 1, 2.0), (3, 0, 1.9), (5, 1, 2.0), (6, 0, 2.2)]:
            model.offset_embed.weight[offset + 1, dim] = value  # index 0: prompt positions
        model.lm_head.weight[EOS, 0] = 10.0
        model.lm_head.weight[EOT, 1] = 10.0
    return model


def test_special_ids_split_eos_from_end_of_turn():
    assert special_ids(eos_model().cfg) == ((EOS,), (EOT,))
    assert special_ids(tiny_model("dream", eos_ids=(1, 151645)).cfg) == ((1,), (151645,))
    assert special_ids(tiny_model("sdar").cfg) == ((1,), ())


OPTIONS = [(False, False), (True, False), (False, True), (True, True)]


@pytest.mark.parametrize("steps", [GEN, GEN // 2])
@pytest.mark.parametrize("logits_eos_inf,confidence_eos_eot_inf", OPTIONS)
def test_eos_controls_match_llada_generate_loop(logits_eos_inf, confidence_eos_eot_inf, steps):
    model = eos_model()
    policy = LowConfidence(logits_eos_inf=logits_eos_inf, confidence_eos_eot_inf=confidence_eos_eot_inf)
    out = DiffusionDecoder(model, policy, block_size=BLOCK, cache="none").generate(
        PROMPTS, gen_length=GEN, steps=steps, stop_at_eos=False)
    for i, prompt in enumerate(PROMPTS):
        want = llada_loop(model, prompt, steps, logits_eos_inf=logits_eos_inf,
                          confidence_eos_eot_inf=confidence_eos_eot_inf)
        assert out.tokens[i].tolist() == want, f"prompt {i}"


def test_eos_controls_change_what_is_generated():
    model = eos_model()
    runs = {}
    for options in OPTIONS:
        policy = LowConfidence(logits_eos_inf=options[0], confidence_eos_eot_inf=options[1])
        runs[options] = DiffusionDecoder(model, policy, block_size=BLOCK).generate(
            PROMPTS, gen_length=GEN, steps=GEN // 2, stop_at_eos=False, trace=True)
    plain = runs[(False, False)]
    assert (plain.tokens == EOS).any() and (plain.tokens == EOT).any()  # the test model does emit both
    for options in OPTIONS[1:]:
        assert not torch.equal(runs[options].tokens, plain.tokens), options
    for options in [(True, False), (True, True)]:
        assert not (runs[options].tokens == EOS).any(), "logits_eos_inf: EOS is never generated"
    # confidence_eos_eot_inf: EOS / EoT have confidence 0, so a step commits one only when it also
    # commits every other candidate of the block
    trace = runs[(False, True)].trace
    assert ((trace["confidence"] == 0) & trace["committed"]).any()
    for (step, seq), rows in trace.groupby(["step", "seq"]):
        special = rows["confidence"] == 0
        if (special & rows["committed"]).any():
            assert rows["committed"][~special].all(), (step, seq)


def test_eos_controls_on_other_policies_use_the_decoders_ids():
    model = eos_model()
    for options in OPTIONS[1:]:
        policy = Threshold(0.2, logits_eos_inf=options[0], confidence_eos_eot_inf=options[1])
        out = DiffusionDecoder(model, policy, block_size=BLOCK).generate(PROMPTS, gen_length=GEN, stop_at_eos=False)
        assert not (out.tokens == TINY_MASK).any()
        if options[0]:
            assert not (out.tokens == EOS).any()


def test_eos_controls_need_an_eos_id():
    model = tiny_model("llada", eos_ids=(), pad_id=0)
    for policy in (LowConfidence(logits_eos_inf=True), LowConfidence(confidence_eos_eot_inf=True)):
        with pytest.raises(ValueError, match="EOS id"):
            DiffusionDecoder(model, policy, block_size=BLOCK).generate([[2, 3]], gen_length=GEN, steps=GEN)
    # called directly, a policy names the StepContext field it needs
    from focuslib.policies.unmasking import StepContext
    logits = torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="eos_ids"):
        LowConfidence(logits_eos_inf=True)(logits, torch.ones(1, 2, dtype=torch.bool), StepContext(0, 2, torch.tensor([2])))


# ---------------------------------------------------------------------------------------
# Hydra knobs: the decode app's cfg_scale key, the unmasking group's EOS options


def _plan(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from focuslib.experiments.config_checks import plan_run

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        return plan_run(compose("config", overrides=["task.n=2", "progress=false", *overrides]))


def test_config_knobs_build_what_they_say():
    from focuslib.experiments.config_checks import ConfigError

    plan = _plan(["model=tiny_llada", "unmasking=low_confidence", "cfg_scale=1.5",
                  "unmasking.logits_eos_inf=true", "unmasking.confidence_eos_eot_inf=true"])
    assert plan.cfg_scale == 1.5
    assert plan.unmasking.logits_eos_inf and plan.unmasking.confidence_eos_eot_inf
    assert _plan([]).cfg_scale == 0.0
    for overrides, message in [(["cfg_scale=-1"], "cfg_scale must be >= 0"),
                               (["cfg_scale=1", "eviction=dyllm"], "cfg_scale > 0 cannot be combined"),
                               (["unmasking.logits_eos_inf=maybe"], "logits_eos_inf")]:
        with pytest.raises(Exception) as err:
            _plan(overrides)
        assert message in str(err.value), overrides
    with pytest.raises(ConfigError, match="cfg_scale"):
        _plan(["cfg_scale=-0.5"])
