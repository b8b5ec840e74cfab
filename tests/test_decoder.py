"""DiffusionDecoder against independent references: one-at-a-time decoding, recompute-everything,
hand-written naive decode loops over `model(input_ids)`, Fast-dLLM's cache definitions, EOS,
step budgets, errors, text and statistics.

Every expected value here comes from the test itself (a naive loop over the reference forward,
the spec's row sets, hand-built weights), never from the decoder under test. Models are the
tiny 2-layer ones of focuslib.testing with scrambled weights and a sharpened LM head, so that
confidences spread over (0.3, 1) and Threshold commits several tokens in some steps.
"""
from __future__ import annotations

import functools

import pytest
import torch

from focuslib.model import rope_tables
from focuslib.decoder import DiffusionDecoder
from focuslib.testing import TINY_EOS, TINY_MASK, scramble_parameters, sharpen, tiny_char_tokenizer, tiny_model
from focuslib.policies.unmasking import LowConfidence, Threshold

FAMILIES = ("llada", "dream", "sdar", "llada2")
FULL = ("llada", "dream")
BLOCK = ("sdar", "llada2")
CACHES = {"llada": ("none", "prefix", "dual"), "dream": ("none", "prefix", "dual"),
          "sdar": ("none", "block", "delayed"), "llada2": ("none", "block", "delayed")}
GEN = 8
FULL_BLOCK = 4  # block_size used for full-attention families
TAU = 0.6
# ragged, and unaligned with the block-causal grid of 4 in every way (len % 4 = 1, 2, 3, 0)
PROMPTS = [[2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 13, 14, 15], [16, 17, 18, 19]]



@functools.lru_cache(maxsize=None)
def sharp_model(family: str):
    return sharpen(tiny_model(family))


def policy_for(name: str):
    return LowConfidence() if name == "low_confidence" else Threshold(TAU)


def decoder(family: str, cache: str | None = None, policy: str = "threshold", **kw) -> DiffusionDecoder:
    model = sharp_model(family)
    block = None if model.cfg.block_diffusion else FULL_BLOCK
    return DiffusionDecoder(model, policy_for(policy), block_size=kw.pop("block_size", block), cache=cache, **kw)


def steps_for(policy: str) -> int | None:
    return GEN if policy == "low_confidence" else None


# ---------------------------------------------------------------------------------------------
# 1. a ragged batch decodes exactly like one sequence at a time


@pytest.mark.parametrize("policy", ["low_confidence", "threshold"])
@pytest.mark.parametrize("family,cache", [(f, c) for f in FAMILIES for c in CACHES[f]])
def test_ragged_batch_equals_one_at_a_time(family, cache, policy):
    dec = decoder(family, cache, policy)
    batch = dec.generate(PROMPTS, gen_length=GEN, steps=steps_for(policy))
    for i, prompt in enumerate(PROMPTS):
        one = dec.generate([prompt], gen_length=GEN, steps=steps_for(policy))
        assert batch.tokens[i].tolist() == one.tokens[0].tolist(), f"prompt {i}"
        assert batch.sequences[i] == one.sequences[0]
        assert batch.steps_per_sequence[i] == one.steps_per_sequence[0]
        assert batch.committed_per_sequence[i] == one.committed_per_sequence[0]
    assert all(TINY_MASK not in s for s in batch.sequences)


@pytest.mark.parametrize("policy", ["low_confidence", "threshold"])
@pytest.mark.parametrize("family,cache", [(f, c) for f in FAMILIES for c in CACHES[f] if c != "delayed"])
def test_repeating_a_steady_modes_rows_changes_nothing(family, cache, policy):
    """A step that moves no block repeats its plan (`_Plan.repeat`) in a steady cache mode: the same
    tokens, rows per layer, steps and per-sequence counts as planning every step afresh (steady off),
    alone and in a ragged batch, with EOS stopping. One token a step (or a bar only the best row
    passes) gives every block several steps."""
    from unittest import mock

    from focuslib.cache import cache_mode_class
    from focuslib.decoder import _Plan

    gen = 16
    steps = gen if policy == "low_confidence" else None
    model = sharp_model(family)
    dec = DiffusionDecoder(model, LowConfidence() if policy == "low_confidence" else Threshold(0.999),
                           block_size=None if model.cfg.block_diffusion else FULL_BLOCK, cache=cache)
    repeats = []
    repeat = _Plan.repeat

    def counted_repeat(self, *args):
        repeats.append(1)
        return repeat(self, *args)

    for prompts in ([PROMPTS[0]], PROMPTS):
        with mock.patch.object(_Plan, "repeat", counted_repeat):
            fast = dec.generate(prompts, gen_length=gen, steps=steps)
        with mock.patch.object(cache_mode_class(model.cfg.attention, cache), "steady", False):
            slow = dec.generate(prompts, gen_length=gen, steps=steps)
        assert fast.tokens.tolist() == slow.tokens.tolist()
        assert fast.sequences == slow.sequences
        assert fast.stats.row_layers_per_layer == slow.stats.row_layers_per_layer
        assert fast.stats.committed_per_step == slow.stats.committed_per_step
        assert fast.steps_per_sequence == slow.steps_per_sequence
        assert fast.committed_per_sequence == slow.committed_per_sequence
    assert repeats  # the repeated plans were used


# ---------------------------------------------------------------------------------------------
# 2. block diffusion: the KV cache of finished blocks is exact


@pytest.mark.parametrize("policy", ["low_confidence", "threshold"])
@pytest.mark.parametrize("family", BLOCK)
def test_block_cache_equals_recompute_everything(family, policy):
    kw = dict(gen_length=GEN, steps=steps_for(policy), stop_at_eos=False)
    cached = decoder(family, "block", policy).generate(PROMPTS, **kw)
    full = decoder(family, "none", policy).generate(PROMPTS, **kw)
    assert cached.tokens.tolist() == full.tokens.tolist()
    assert cached.stats.forward_passes == full.stats.forward_passes
    assert cached.stats.row_layers < full.stats.row_layers


# ---------------------------------------------------------------------------------------------
# 3. cache="none" equals naive loops written here over the reference forward model(input_ids)


def naive_pick(conf: list[float], cand: list[int], policy: str, step: int, steps_per_block: int | None,
               n0: int) -> list[int]:
    """Positions (indices into conf) committed this step, LLaDA / Fast-dLLM rules written from the papers."""
    order = sorted(cand, key=lambda j: (-conf[j], j))
    if policy == "low_confidence":
        if step >= steps_per_block - 1:
            k = len(cand)
        else:  # LLaDA get_num_transfer_tokens: n0 // steps, +1 on the first n0 % steps steps
            k = n0 // steps_per_block + (1 if step < n0 % steps_per_block else 0)
        assert k >= 1, "test setup: keep steps per block <= masks per block"
    else:  # Fast-dLLM threshold: every candidate with conf >= tau, at least the best one
        k = max(1, sum(conf[j] >= TAU for j in cand))
    return order[:k]


@torch.no_grad()
def naive_decode(model, prompt: list[int], policy: str, steps: int | None) -> tuple[list[int], int]:
    """Semi-autoregressive decoding with a full forward of the visible sequence at every step.

    Full attention: blocks of FULL_BLOCK positions after the prompt, model(x) on everything;
    Dream reads position p from the logits of p - 1. Block-causal (SDAR / LLaDA2.0): blocks on
    the grid from position 0, and a step runs model(x[:, :block_end]) only.
    Returns (generated ids, forward passes).
    """
    cfg = model.cfg
    p_len, total = len(prompt), len(prompt) + GEN
    x = torch.tensor([prompt + [TINY_MASK] * GEN])
    if cfg.attention == "full":
        bounds = [(p_len + b * FULL_BLOCK, p_len + (b + 1) * FULL_BLOCK) for b in range(GEN // FULL_BLOCK)]
        n_budget_blocks = GEN // FULL_BLOCK
    else:
        bs = cfg.block_size
        bounds = [(max(b * bs, p_len), min((b + 1) * bs, total)) for b in range(p_len // bs, (total - 1) // bs + 1)]
        n_budget_blocks = -(-GEN // bs)
    spb = steps // n_budget_blocks if steps is not None else None
    forwards = 0
    for lo, hi in bounds:
        visible = total if cfg.attention == "full" else -(-hi // cfg.block_size) * cfg.block_size
        n0, step = hi - lo, 0
        while bool((x[0, lo:hi] == TINY_MASK).any()):
            logits = model(x[:, :min(visible, total)])[0].float()
            forwards += 1
            if cfg.logit_shift:
                logits = torch.cat([logits[:1], logits[:-1]])
            logits[:, TINY_MASK] = float("-inf")  # the mask token is never an answer
            probs = logits.softmax(-1)
            conf, tok = probs.max(-1)
            block_conf = conf[lo:hi].tolist()
            cand = [j for j in range(hi - lo) if int(x[0, lo + j]) == TINY_MASK]
            for j in naive_pick(block_conf, cand, policy, step, spb, n0):
                x[0, lo + j] = tok[lo + j]
            step += 1
    return x[0, p_len:].tolist(), forwards


@pytest.mark.parametrize("policy,steps", [("low_confidence", 8), ("low_confidence", 4), ("threshold", None)])
@pytest.mark.parametrize("family", FULL)
def test_cache_none_matches_naive_full_attention_loop(family, policy, steps):
    model = sharp_model(family)
    for prompt in PROMPTS:
        out = decoder(family, "none", policy).generate([prompt], gen_length=GEN, steps=steps, stop_at_eos=False)
        want, forwards = naive_decode(model, prompt, policy, steps)
        assert out.tokens[0].tolist() == want, f"prompt {prompt}"
        assert out.stats.forward_passes == forwards


@pytest.mark.parametrize("family", BLOCK)
def test_block_families_match_naive_block_causal_loop(family):
    model = sharp_model(family)
    cases = [("threshold", None, p) for p in PROMPTS]  # unaligned prompts: partial first block
    cases += [("low_confidence", s, p) for s in (8, 4) for p in ([2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13])]
    for policy, steps, prompt in cases:
        want, forwards = naive_decode(model, prompt, policy, steps)
        for cache in ("none", "block"):
            out = decoder(family, cache, policy).generate([prompt], gen_length=GEN, steps=steps, stop_at_eos=False)
            assert out.tokens[0].tolist() == want, (policy, steps, prompt, cache)
            assert out.stats.forward_passes == forwards


# ---------------------------------------------------------------------------------------------
# 4. prefix and dual follow Fast-dLLM: which rows are recomputed at which step


def record_rows() -> tuple[list[list[list[int]]], callable]:
    """Wrap the dense layer runner's Q/K/V half to record the positions each layer runs:
    calls[forward][layer] = positions (sequence 0's valid rows)."""
    from focuslib.layer import DenseRunner

    calls: list[list[list[int]]] = []
    original = DenseRunner.project

    def project(self, x):
        if x.index == 0:
            calls.append([])
        calls[-1].append(x.rows.pos[0][x.rows.valid[0]].tolist())
        return original(self, x)

    DenseRunner.project = project

    def restore():
        DenseRunner.project = original
    return calls, restore


@pytest.mark.parametrize("family", FULL)
def test_prefix_and_dual_recompute_fast_dllm_rows(family):
    prompt = [2, 3, 4, 5, 6]
    p_len, total = len(prompt), len(prompt) + GEN
    shift = 1 if family == "dream" else 0  # Dream's block start is predicted by the row before it
    everything = list(range(total))
    # LowConfidence, 8 steps, 2 blocks of 4: exactly 4 steps per block, one token each
    blocks = [(p_len + b * FULL_BLOCK, p_len + (b + 1) * FULL_BLOCK) for b in range(GEN // FULL_BLOCK)]
    expected = {"none": [], "prefix": [], "dual": []}
    for lo, hi in blocks:
        for step in range(4):
            expected["none"].append(everything)
            if step == 0:  # block start: full refresh of the cache
                expected["prefix"].append(everything)
                expected["dual"].append(everything)
            else:
                expected["prefix"].append(list(range(lo - shift, total)))  # block + suffix
                expected["dual"].append(list(range(lo - shift, hi)))  # block only
    row_layers = {}
    model = sharp_model(family)
    for cache, want in expected.items():
        calls, restore = record_rows()
        try:
            out = decoder(family, cache, "low_confidence").generate([prompt], gen_length=GEN, steps=GEN,
                                                                    stop_at_eos=False)
        finally:
            restore()
        assert len(calls) == len(want) == out.stats.forward_passes
        for f, (per_layer, rows) in enumerate(zip(calls, want)):
            assert len(per_layer) == model.cfg.n_layers
            for layer_rows in per_layer:
                assert layer_rows == rows, (cache, f)
        assert out.stats.row_layers == sum(len(r) for c in calls for r in c)
        row_layers[cache] = out.stats.row_layers
        assert TINY_MASK not in out.tokens[0].tolist()
    assert row_layers["dual"] < row_layers["prefix"] < row_layers["none"]


@torch.no_grad()
def naive_fast_dllm_decode(model, prompt: list[int], mode: str, policy: str, steps: int | None) -> list[int]:
    """Fast-dLLM's prefix / dual cache written out by hand over the model's layer API.

    Block start: full forward over every position, K/V of all positions stored. Later steps of
    the block: prefix runs the block and everything after it, dual runs only the block (Dream:
    plus the row before the block); their fresh K/V replace the stored ones and attention sees
    the stored K/V of every other position (stale until the next block start).
    """
    from focuslib.model import attend

    cfg = model.cfg
    shift = int(cfg.logit_shift)
    p_len, total = len(prompt), len(prompt) + GEN
    x = torch.tensor([prompt + [TINY_MASK] * GEN])
    keys: list = [None] * cfg.n_layers
    values: list = [None] * cfg.n_layers
    spb = steps // (GEN // FULL_BLOCK) if steps is not None else None
    for b in range(GEN // FULL_BLOCK):
        lo, hi = p_len + b * FULL_BLOCK, p_len + (b + 1) * FULL_BLOCK
        step = 0
        while bool((x[0, lo:hi] == TINY_MASK).any()):
            if step == 0:
                rows = list(range(total))
            elif mode == "prefix":
                rows = list(range(lo - shift, total))
            else:
                rows = list(range(lo - shift, hi))
            pos = torch.tensor([rows])
            h = model.embed_rows(x[:, rows], pos)
            for i, layer in enumerate(model.layers):
                q, k, v = layer.qkv(h, rope_tables(model.cfg, pos))
                if step == 0:
                    keys[i], values[i] = k.clone(), v.clone()
                else:
                    keys[i][:, rows], values[i][:, rows] = k, v
                mask = torch.ones(1, len(rows), total, dtype=torch.bool)
                h = h + layer.attn_out(attend(q, keys[i], values[i], mask))
                h = h + layer.ffn(h)
            logits = model.logits(h)[0].float()  # [rows, V]
            if step == 0:  # the refresh is the reference forward itself
                torch.testing.assert_close(logits, model(x)[0].float(), rtol=1e-4, atol=1e-4)
            logits[:, TINY_MASK] = float("-inf")  # the mask token is never an answer
            conf, tok = logits.softmax(-1).max(-1)
            at = [rows.index(p - shift) for p in range(lo, hi)]
            cand = [j for j in range(hi - lo) if int(x[0, lo + j]) == TINY_MASK]
            for j in naive_pick([float(conf[r]) for r in at], cand, policy, step, spb, FULL_BLOCK):
                x[0, lo + j] = tok[at[j]]
            step += 1
    return x[0, p_len:].tolist()


@pytest.mark.parametrize("policy,steps", [("low_confidence", 8), ("threshold", None)])
@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("family", FULL)
def test_prefix_and_dual_match_naive_fast_dllm_loop(family, mode, policy, steps):
    model = sharp_model(family)
    for prompt in PROMPTS:
        out = decoder(family, mode, policy).generate([prompt], gen_length=GEN, steps=steps, stop_at_eos=False)
        assert out.tokens[0].tolist() == naive_fast_dllm_decode(model, prompt, mode, policy, steps), prompt


# ---------------------------------------------------------------------------------------------
# 5. EOS: forced by hand-built weights


RESERVED = 2  # residual dims 0 and 1 carry a token-identity signal that no layer writes to


@functools.lru_cache(maxsize=None)
def eos_model(family: str, triggers: tuple[tuple[int, int], ...]):
    """A model where a row whose input token is `src` predicts `dst` with probability ~1.

    Dims 0..RESERVED-1 of the residual stream are the token's own embedding only (every
    layer's output projections have zero rows there), so the LM head can read them.
    """
    model = scramble_parameters(tiny_model(family), seed=2)
    with torch.no_grad():
        for layer in model.layers:
            layer.attn.wo.weight[:RESERVED] = 0
            for name, module in layer.mlp.named_modules():  # dense MLP, or every expert and shared expert
                if name.split(".")[-1] == "w_down":
                    module.weight[:RESERVED] = 0
        model.embed.weight[:, :RESERVED] = 0
        model.lm_head.weight[:, :RESERVED] = 0
        model.norm.weight[:RESERVED] = 1
        for d, (src, dst) in enumerate(triggers):
            model.embed.weight[src, d] = 8.0
            model.lm_head.weight[dst, d] = 10.0
    return model


def test_eos_stops_sequence_and_cuts_output_dream():
    # Dream reads position p from row p - 1: after token 5 comes 7, after 7 comes EOS.
    model = eos_model("dream", ((5, 7), (7, TINY_EOS)))
    dec = DiffusionDecoder(model, Threshold(0.9), block_size=FULL_BLOCK)
    stops, goes_on = [2, 3, 4, 5], [2, 3, 4, 6]
    out = dec.generate([stops, goes_on], gen_length=GEN)
    assert out.tokens[0, :2].tolist() == [7, TINY_EOS]
    assert out.tokens[0, 2:].tolist() == [TINY_MASK] * (GEN - 2)  # stopped: nothing more decoded
    assert out.sequences[0] == [7]
    assert out.committed_per_sequence[0] == 2 and out.steps_per_sequence[0] == 2
    # the other sequence is unaffected by its neighbour stopping
    alone = dec.generate([goes_on], gen_length=GEN)
    assert out.tokens[1].tolist() == alone.tokens[0].tolist()
    assert out.sequences[1] == alone.sequences[0]
    n_decoded = int((out.tokens != TINY_MASK).sum())
    assert out.stats.tokens_committed == n_decoded == sum(out.committed_per_sequence)
    assert out.stats.tokens_committed == sum(out.stats.committed_per_step)
    # one sequence alone: exactly the two forced steps
    single = dec.generate([stops], gen_length=GEN)
    assert single.stats.forward_passes == single.stats.steps == 2
    assert single.stats.tokens_committed == 2
    # without stopping, everything is decoded and the output is still cut at the first EOS
    full = dec.generate([stops], gen_length=GEN, stop_at_eos=False)
    assert TINY_MASK not in full.tokens[0].tolist()
    assert full.tokens[0, :2].tolist() == [7, TINY_EOS]
    assert full.sequences[0] == [7]
    assert full.stats.tokens_committed == GEN


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_eos_everywhere_stops_after_first_block(family):
    # every masked row predicts EOS: the first step fills the first block with EOS and stops
    model = eos_model(family, ((TINY_MASK, TINY_EOS),))
    block = None if model.cfg.block_diffusion else FULL_BLOCK
    dec = DiffusionDecoder(model, Threshold(0.9), block_size=block)
    prompt = [2, 3, 4, 5, 6]  # sdar: first block holds positions 4..7, of which 5..7 generated
    out = dec.generate([prompt], gen_length=GEN)
    first_block = FULL_BLOCK if block else 3
    assert out.stats.forward_passes == 1
    assert out.tokens[0, :first_block].tolist() == [TINY_EOS] * first_block
    assert out.tokens[0, first_block:].tolist() == [TINY_MASK] * (GEN - first_block)
    assert out.sequences == [[]]
    assert out.stats.tokens_committed == first_block
    full = dec.generate([prompt], gen_length=GEN, stop_at_eos=False)
    assert full.tokens[0].tolist() == [TINY_EOS] * GEN and full.sequences == [[]]
    assert full.stats.tokens_committed == GEN


@pytest.mark.parametrize("family", FAMILIES)
def test_model_that_prefers_the_mask_token_still_terminates(family):
    model = eos_model(family, ((TINY_MASK, TINY_MASK),))  # every masked row predicts the mask id
    block = None if model.cfg.block_diffusion else FULL_BLOCK
    out = DiffusionDecoder(model, Threshold(0.9), block_size=block).generate(PROMPTS, gen_length=GEN, stop_at_eos=False)
    assert TINY_MASK not in out.tokens.flatten().tolist()
    assert out.stats.tokens_committed == GEN * len(PROMPTS)


# ---------------------------------------------------------------------------------------------
# 6. steps is a budget


@pytest.mark.parametrize("block_size,steps", [(4, 2), (4, 4), (4, 8), (None, 1), (None, 3), (None, 8)])
def test_low_confidence_takes_exactly_steps_forward_passes(block_size, steps):
    dec = DiffusionDecoder(sharp_model("llada"), LowConfidence(), block_size=block_size)
    out = dec.generate(PROMPTS, gen_length=GEN, steps=steps, stop_at_eos=False)
    assert out.stats.forward_passes == out.stats.steps == steps
    assert all(n >= len(PROMPTS) for n in out.stats.committed_per_step)  # >= 1 per unfinished sequence
    assert TINY_MASK not in out.tokens.flatten().tolist()


def test_steps_caps_a_dynamic_policy():
    dec = DiffusionDecoder(sharp_model("llada"), Threshold(0.9999), block_size=FULL_BLOCK)
    free = dec.generate(PROMPTS, gen_length=GEN, stop_at_eos=False)
    assert free.stats.steps == GEN  # nothing reaches the bar: one token per step
    capped = dec.generate(PROMPTS, gen_length=GEN, steps=4, stop_at_eos=False)
    assert capped.stats.forward_passes == 4
    assert TINY_MASK not in capped.tokens.flatten().tolist()


# ---------------------------------------------------------------------------------------------
# 7. errors


@pytest.mark.parametrize("family,kwargs,call,match", [
    ("llada", {}, dict(prompts=[]), "prompts is empty"),
    ("llada", {}, dict(prompts=[[2, 3], []]), "prompt 1 is empty"),
    ("llada", {}, dict(prompts=[[2, TINY_MASK]]), "mask token"),
    ("llada", {}, dict(prompts=[[2] * 250]), "max_positions"),
    ("llada", dict(block_size=3), dict(prompts=[[2, 3]]), "not a multiple of block_size"),
    ("llada", {}, dict(prompts=["abc"]), "tokenizer"),
    ("llada", {}, dict(prompts=[[2, 3]], gen_length=0), "gen_length must be positive"),
    ("llada", {}, dict(prompts=[[2, 999]]), "outside"),
    ("llada", dict(policy="low_confidence"), dict(prompts=[[2, 3]]), "pass steps="),
])
def test_generate_errors(family, kwargs, call, match):
    kwargs = dict(kwargs)
    dec = decoder(family, policy=kwargs.pop("policy", "threshold"), **kwargs)
    call = {"gen_length": GEN, **call}
    with pytest.raises(ValueError, match=match):
        dec.generate(call.pop("prompts"), **call)


@pytest.mark.parametrize("family,kwargs,match", [
    ("llada", dict(cache="bogus"), "unknown cache mode 'bogus'"),
    ("sdar", dict(cache="dual"), "not supported for 'block_causal'"),
    ("sdar", dict(cache="prefix"), "not supported for 'block_causal'"),
    ("llada", dict(cache="block"), "not supported for 'full'"),
    ("llada2", dict(block_size=8), "block_size=8 differs"),
    ("llada", dict(block_size=0), "block_size must be positive"),
])
def test_constructor_errors(family, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DiffusionDecoder(sharp_model(family), Threshold(), **kwargs)


def test_block_family_accepts_its_own_block_size():
    dec = DiffusionDecoder(sharp_model("sdar"), Threshold(), block_size=4)
    assert len(dec.generate([[2, 3]], gen_length=GEN, stop_at_eos=False).sequences[0]) <= GEN


# ---------------------------------------------------------------------------------------------
# 8. text in, text out


def test_string_prompts_with_tiny_char_tokenizer():
    tok = tiny_char_tokenizer()
    dec = DiffusionDecoder(sharp_model("sdar"), Threshold(TAU), tokenizer=tok)
    out = dec.generate(["1+2=", "abc"], gen_length=GEN)
    by_ids = DiffusionDecoder(sharp_model("sdar"), Threshold(TAU)).generate(
        [tok.encode("1+2=", add_special_tokens=False).ids, tok.encode("abc", add_special_tokens=False).ids],
        gen_length=GEN)
    assert out.tokens.tolist() == by_ids.tokens.tolist()
    assert out.text == [tok.decode(s, skip_special_tokens=True) for s in by_ids.sequences]
    assert all(isinstance(t, str) for t in out.text)


def test_string_prompts_with_bundled_model():
    import focuslib

    model, tok = focuslib.load_model("tiny-sdar")
    assert tok is not None
    dec = DiffusionDecoder(model, Threshold(0.9), tokenizer=tok)
    out = dec.generate(["12+34=", "7*8="], gen_length=GEN)
    ids = [tok.encode(p, add_special_tokens=False) for p in ("12+34=", "7*8=")]
    assert out.tokens.tolist() == DiffusionDecoder(model, Threshold(0.9)).generate(ids, gen_length=GEN).tokens.tolist()
    assert len(out.text) == 2 and all(isinstance(t, str) for t in out.text)
    assert out.text == [tok.decode(s, skip_special_tokens=True) for s in out.sequences]
    assert DiffusionDecoder(model, Threshold(0.9)).generate(ids, gen_length=GEN).text is None


# ---------------------------------------------------------------------------------------------
# 9. statistics


@pytest.mark.parametrize("family", FAMILIES)
def test_stats_are_consistent(family):
    dec = decoder(family, "none", "low_confidence")
    out = dec.generate(PROMPTS, gen_length=GEN, steps=GEN, stop_at_eos=False)
    s = out.stats
    assert s.forward_passes == s.steps == GEN
    assert len(s.row_layers_per_layer) == sharp_model(family).cfg.n_layers
    assert s.row_layers == sum(s.row_layers_per_layer)
    assert s.tokens_committed == GEN * len(PROMPTS) == sum(s.committed_per_step)
    assert s.sequence_steps == GEN * len(PROMPTS)
    assert s.tokens_per_step == pytest.approx(1.0)
    assert s.wall_time_s > 0 and s.tokens_per_s > 0
    assert out.committed_per_sequence == [GEN] * len(PROMPTS)
    assert out.steps_per_sequence == [GEN] * len(PROMPTS)
    # cache none recomputes every visible position of every sequence at every layer
    n_layers = sharp_model(family).cfg.n_layers
    if sharp_model(family).cfg.block_diffusion:
        # rows per step: every position up to the current block's end. One token per step and
        # blocks in order, so step k decodes the block holding generated position k.
        bs = sharp_model(family).cfg.block_size
        want = n_layers * sum(min(-(-(len(p) + k + 1) // bs) * bs, len(p) + GEN) for p in PROMPTS for k in range(GEN))
        assert s.row_layers == want
    else:
        want = GEN * sum(len(p) + GEN for p in PROMPTS) * n_layers
        assert s.row_layers == want
    assert s.row_layers_per_layer == [want // n_layers] * n_layers
    d = s.as_dict()
    assert d["forward_passes"] == GEN and d["tokens_committed"] == s.tokens_committed


SYNC_METHODS = ("item", "tolist", "__bool__", "nonzero", "__int__", "__float__")  # each waits for the device


def host_syncs_per_step(decoder: DiffusionDecoder, prompts, gen_length: int) -> list[tuple[int, bool]]:
    """Per decoder step: calls of host-syncing tensor methods inside it (CPU stands in for the device), and
    whether its commits moved a block on (a sequence's current block changed, or the sequence ended)."""
    per_step, inside = [], [False]
    originals = {n: getattr(torch.Tensor, n) for n in SYNC_METHODS}
    step = DiffusionDecoder._step

    def counting(name):
        def method(self, *args, **kwargs):
            if inside[0]:
                per_step[-1][0] += 1
            return originals[name](self, *args, **kwargs)
        return method

    def counted_step(self, state, call):
        before = state.current_block.clone(), state.active.clone()
        per_step.append([0, False])
        inside[0] = True
        try:
            return step(self, state, call)
        finally:
            inside[0] = False
            per_step[-1][1] = not (torch.equal(before[0], state.current_block) and torch.equal(before[1], state.active))

    try:
        for name in SYNC_METHODS:
            setattr(torch.Tensor, name, counting(name))
        DiffusionDecoder._step = counted_step
        decoder.generate(prompts, gen_length=gen_length)
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
        DiffusionDecoder._step = step
    return [(n, moved) for n, moved in per_step]


def expected_syncs(syncs: list[tuple[int, bool]], steady: bool, base: int) -> list[int]:
    """`base` syncs a step, one more at a step that moves a block after a step that moved none (its rows
    were repeated, not planned ahead) in a steady cache mode."""
    moved = [m for _, m in syncs]
    return [base + (steady and m and i > 0 and not moved[i - 1]) for i, m in enumerate(moved)]


@pytest.mark.parametrize("cache", ["none", "block", "delayed"])
def test_a_dense_step_waits_for_the_device_once(cache):
    """One read of the step's commits, checks and counters, and of the next step's row sizes when they
    are planned before it (a block's first step; every step of a cache mode that is not steady): everything
    else stays on the device. Once a block's rows repeat, a step that finishes the block plans the next
    rows after that read, and reads their sizes in a second. (The first step's rows are read before the loop.)"""
    decoder = DiffusionDecoder(tiny_model("sdar"), Threshold(0.9), cache=cache)
    syncs = host_syncs_per_step(decoder, [[3, 4, 5], [6, 7]], gen_length=24)
    moved = [m for _, m in syncs]
    assert sum(moved) >= 2 and not all(moved)  # both kinds of step happen
    assert [n for n, _ in syncs] == expected_syncs(syncs, cache != "delayed", base=1)
    assert any(n == 2 for n, _ in syncs) == (cache != "delayed")


def test_a_focus_step_waits_once_more_for_its_compaction():
    """FOCUS's importance packs the masked rows with the width known on the host; only the compaction
    of the kept rows (their count depends on the eviction decision) waits again."""
    from focuslib.policies.budget import FocusBudget
    from focuslib.policies.eviction import Focus

    decoder = DiffusionDecoder(tiny_model("sdar"), Threshold(0.9), cache="delayed", eviction=Focus(),
                               budget=FocusBudget())
    syncs = host_syncs_per_step(decoder, [[3, 4, 5], [6, 7]], gen_length=16)
    assert len(syncs) >= 2 and {n for n, _ in syncs} == {2}


def test_the_collector_is_paused_while_decoding_and_restored_after():
    """generate runs its loop with CPython's cyclic collector off and leaves it as it found it."""
    import gc

    class Watching(Threshold):
        def select(self, proposal, candidates, ctx):
            seen.append(gc.isenabled())
            return super().select(proposal, candidates, ctx)

    seen: list[bool] = []
    decoder = DiffusionDecoder(tiny_model("sdar"), Watching(0.9))
    assert gc.isenabled()
    decoder.generate([[3, 4, 5]], gen_length=16)
    assert seen and not any(seen) and gc.isenabled()
    gc.disable()  # a caller that turned it off itself keeps it off
    try:
        seen.clear()
        decoder.generate([[3, 4, 5]], gen_length=16)
        assert seen and not gc.isenabled()
    finally:
        gc.enable()


def test_key_extent_follows_the_family_rule():
    """Block diffusion: a query reaches keys up to its block's end; full attention: every position."""
    sdar = tiny_model("sdar")
    bs = sdar.cfg.block_size
    assert sdar.key_extent(0, 100) == bs
    assert sdar.key_extent(bs - 1, 100) == bs
    assert sdar.key_extent(bs, 100) == 2 * bs
    assert sdar.key_extent(98, 100) == 100  # clipped to the sequence
    assert tiny_model("llada").key_extent(3, 100) == 100


@pytest.mark.parametrize("family", ["sdar", "llada"])
def test_attention_reads_only_the_keys_its_rows_can_reach(family, monkeypatch):
    """The mask (and so the keys attention reads) stops where the family rule stops: every cut column is
    unreachable for every row under the full-width rule, and under block diffusion early blocks read fewer keys."""
    from focuslib.layer import DenseRunner

    decoder = DiffusionDecoder(tiny_model(family), Threshold(0.9), cache="block" if family == "sdar" else "dual")
    widths: list[tuple[int, int]] = []
    complete = DenseRunner.complete

    def spy(self, x, proj):
        t = x.kv.k.shape[1] - 1
        full = decoder.model.attention_rule(x.rows.pos, torch.arange(t).expand(x.rows.pos.shape[0], t))
        assert not (full[:, :, x.mask.shape[-1]:] & x.rows.valid[:, :, None]).any()
        widths.append((x.mask.shape[-1], t))
        return complete(self, x, proj)

    monkeypatch.setattr(DenseRunner, "complete", spy)
    decoder.generate([[3, 4, 5], [6, 7]], gen_length=24, stop_at_eos=False)
    assert widths
    if family == "sdar":
        assert any(w < t for w, t in widths)
    else:
        assert all(w == t for w, t in widths)


def test_compiled_layers_decode_the_same_tokens():
    """Transformer.compile_layers (inductor, dynamic row counts): ragged prompts, block cache, same tokens as eager."""
    model = tiny_model("sdar")
    decoder = DiffusionDecoder(model, Threshold(0.9), cache="block")
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11, 12]]
    eager = decoder.generate(prompts, gen_length=16, stop_at_eos=False).tokens
    model.compile_layers()
    assert all(hasattr(layer.qkv, "_torchdynamo_orig_callable") for layer in model.layers)
    assert torch.equal(decoder.generate(prompts, gen_length=16, stop_at_eos=False).tokens, eager)


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_uncached_dense_steps_attend_their_own_kv_and_store_nothing(family, monkeypatch):
    """cache="none", no eviction: the rows are every key they reach, so no K/V is written -- same tokens as the
    stored path (forced here by a do-nothing eviction policy, which makes the decoder keep K/V)."""
    from focuslib.contract import EvictionPolicy, KVSlot

    class KeepAll(EvictionPolicy):
        pass

    model = sharpen(tiny_model(family))
    prompts = [[3, 4, 5, 6], [7, 8, 9, 10]]
    writes = []
    original = KVSlot.write
    monkeypatch.setattr(KVSlot, "write", lambda self, *a, **k: (writes.append(1), original(self, *a, **k))[1])
    direct = DiffusionDecoder(model, LowConfidence(), block_size=4, cache="none").generate(
        prompts, gen_length=8, steps=8, stop_at_eos=False)
    assert not writes
    stored = DiffusionDecoder(model, LowConfidence(), KeepAll(), block_size=4, cache="none").generate(
        prompts, gen_length=8, steps=8, stop_at_eos=False)
    assert writes and torch.equal(direct.tokens, stored.tokens)
    assert direct.stats.row_layers == stored.stats.row_layers
