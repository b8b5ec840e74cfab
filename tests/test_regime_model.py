"""The bundled tiny-sdar-b32 against the regime testbed's targets (docs/design.md, "The regime testbed").

A held-out sample of long_mix (the test split, never trained or validated on), decoded with
one token per step and with Threshold(0.9), both on the exact block cache; the regime
statistics come from the threshold run's trace, and the oracle's saving from a second
threshold run on FOCUS's base cache (delayed), since it is a share of what the cache leaves
to compute. The sample is small so that CI stays fast (64 problems, about 15 s).
"""
from __future__ import annotations

import pytest

from focuslib import DiffusionDecoder, evaluate
from focuslib.loading import load_model
from focuslib.policies.unmasking import LowConfidence, Threshold
from focuslib.tasks import load_task

N_PROBLEMS = 64
GEN_LENGTH = 32


@pytest.fixture(scope="module")
def runs():
    model, tok = load_model("tiny-sdar-b32")
    task = load_task("long_mix", N_PROBLEMS, seed="test")
    one = evaluate(DiffusionDecoder(model, LowConfidence(), tokenizer=tok), task, gen_length=GEN_LENGTH,
                   steps=GEN_LENGTH, batch_size=32, progress=False)  # one token per step
    threshold, delayed = (evaluate(DiffusionDecoder(model, Threshold(0.9), tokenizer=tok, cache=cache), task,
                                   gen_length=GEN_LENGTH, batch_size=32, progress=False, regime=True)
                          for cache in ("block", "delayed"))
    return one, threshold, delayed


def test_threshold_decoding_keeps_the_one_token_per_step_accuracy(runs):
    one, threshold, _ = runs
    assert abs(threshold.accuracy - one.accuracy) <= 0.02 + 1e-9
    assert threshold.tokens_per_step > 1.3  # ...while committing several tokens per step


def test_exact_match_reaches_the_target_on_both_tasks(runs):
    one, threshold, delayed = runs
    assert one.accuracy >= 0.8  # one token per step
    assert threshold.per_task["walk"] >= 0.8  # the sequential task: 24-28 lookups, each needing the last symbol
    assert threshold.per_task["repeat"] >= 0.8
    assert delayed.accuracy >= 0.8  # FOCUS's base cache freezes K/V early and may cost a few points, not more


def test_the_model_decodes_in_focus_regime(runs):
    _, threshold, delayed = runs
    regime = threshold.regime
    assert regime.committed_fraction_later <= 0.30  # few of a block's masked rows decodable per later step
    assert regime.forced_share <= 0.20              # and the commits are confident, not forced guesses
    assert regime.committed_fraction_first > regime.committed_fraction_later
    # on FOCUS's base cache an eviction that knew the commits could save 40% of the row-layers
    assert delayed.regime.oracle_saving >= 0.40
