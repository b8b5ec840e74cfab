"""Every unmasking policy x eviction stack x budget, on a full-attention family (LLaDA) and a
block-diffusion family (SDAR), with a ragged batch: decoding terminates, every position is
decoded and the statistics agree with each other. Combinations the decoder rejects at
construction (a ranking eviction policy without a budget) must raise ValueError.

To keep the matrix fast, each (unmasking, eviction, budget) triple runs with one of the
family's cache modes, rotated so that every (eviction, budget) pair meets every cache mode.
"""
from __future__ import annotations

import itertools

import pytest
import torch

from focuslib.decoder import DiffusionDecoder
from focuslib.testing import TINY_MASK, tiny_model
from focuslib.policies.budget import FixedBudget, FocusBudget
from focuslib.policies.eviction import DyLLM, Focus
from focuslib.policies.unmasking import POLICIES

PROMPTS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16]]
GEN = 8
FAMILIES = {"llada": (("none", "prefix", "dual"), 4), "sdar": (("block", "delayed", "none"), None)}
EVICTIONS = {"none": lambda: None, "focus": lambda: Focus(), "dyllm": lambda: DyLLM(),
             "focus+dyllm": lambda: [Focus(), DyLLM()]}
BUDGETS = {"none": lambda: None, "focus": lambda: FocusBudget(1.5), "fixed": lambda: FixedBudget(count=2)}
MODELS = {family: tiny_model(family) for family in FAMILIES}



def _cases():
    names = itertools.product(FAMILIES, enumerate(POLICIES), enumerate(EVICTIONS), enumerate(BUDGETS))
    for family, (i, unmasking), (j, eviction), (k, budget) in names:
        caches = FAMILIES[family][0]
        yield pytest.param(family, caches[(i + j + k) % len(caches)], unmasking, eviction, budget,
                           id=f"{family}-{unmasking}-{eviction}-{budget}")


@pytest.mark.parametrize("family,cache,unmasking,eviction,budget", list(_cases()))
def test_composition(family, cache, unmasking, eviction, budget):
    policy = POLICIES[unmasking]()
    steps = 4 if policy.needs_schedule else None
    block = FAMILIES[family][1]
    args = (MODELS[family], policy, EVICTIONS[eviction](), BUDGETS[budget]())
    if "focus" in eviction and budget == "none":
        with pytest.raises(ValueError, match="budget"):
            DiffusionDecoder(*args, cache=cache, block_size=block)
        return
    decoder = DiffusionDecoder(*args, cache=cache, block_size=block)
    out = decoder.generate(PROMPTS, gen_length=GEN, steps=steps, stop_at_eos=False, seed=0)
    # evicted rows cannot be committed, so FOCUS may need steps beyond a schedule's budget
    _check(out, None if "focus" in eviction or steps is None else _step_cap(decoder, steps))


def _step_cap(decoder: DiffusionDecoder, steps: int) -> int:
    """Schedules give steps // n_blocks steps to each block a sequence touches (block families anchor
    their grid at position 0, so a ragged prompt's generation may touch one block more)."""
    size = decoder.block_size
    n_blocks = -(-GEN // size)
    touched = max((len(p) + GEN - 1) // size - len(p) // size + 1 for p in PROMPTS) if decoder.cfg.block_diffusion \
        else n_blocks
    return steps // n_blocks * touched


def _check(out, steps: int | None) -> None:
    stats = out.stats
    assert not (out.tokens == TINY_MASK).any()  # every position decoded
    assert out.tokens.shape == (len(PROMPTS), GEN)
    assert stats.tokens_committed == len(PROMPTS) * GEN == sum(out.committed_per_sequence)
    assert sum(stats.committed_per_step) == stats.tokens_committed
    assert len(stats.committed_per_step) == stats.steps == stats.forward_passes
    assert sum(stats.row_layers_per_layer) == stats.row_layers > 0
    assert all(n > 0 for n in stats.row_layers_per_layer)
    assert 0 < stats.tokens_per_step <= GEN
    if steps is not None:
        assert stats.steps <= steps
    assert torch.all(torch.tensor(out.steps_per_sequence) <= stats.steps)
