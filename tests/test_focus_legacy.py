"""Every FOCUS rule focuslib used before matching the authors' code is still one option away:
Focus with the legacy options (and the delayed cache attending beyond the last row) reproduces,
token for token and row-layer for row-layer, what focuslib's previous FOCUS decoded.

The pinned outputs were produced by that previous version (tests/data/focus_legacy_tokens.json,
commit d06731e), not by the code under test.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from focuslib import DiffusionDecoder, load_model
from focuslib.tasks import load_task
from focuslib.policies.budget import FixedBudget, FocusBudget
from focuslib.policies.eviction import Focus
from focuslib.policies.unmasking import LowConfidence, Threshold

DATA = json.loads((Path(__file__).parent / "data" / "focus_legacy_tokens.json").read_text())["cases"]
LEGACY = dict(eviction_point="output", evicted_keys="hidden", progress_rule="fill", gate_std="sample",
              round_to_model_dtype=False)


@pytest.mark.parametrize("case", sorted(DATA))
def test_legacy_options_reproduce_the_previous_focus(case):
    cache, policy, budget = case.split("-", 2)
    model, tok = load_model("tiny-sdar")
    unmasking, steps = (Threshold(0.9), None) if policy == "Threshold" else (LowConfidence(), 16)
    budget = FocusBudget(1.5) if budget.startswith("FocusBudget") else FixedBudget(count=1)
    options = {"attend_beyond_last_row": True} if cache == "delayed" else None
    decoder = DiffusionDecoder(model, unmasking, Focus(**LEGACY), budget, cache=cache, cache_options=options,
                               tokenizer=tok)
    out = decoder.generate(load_task("mix", 48, seed="test").prompts, gen_length=16, steps=steps, stop_at_eos=False)
    assert out.tokens.tolist() == DATA[case]["tokens"]
    assert out.stats.row_layers == DATA[case]["row_layers"]
