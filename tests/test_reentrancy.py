"""One decoder shared by threads gives exactly the sequential outputs: policies keep per-call state in the
object their `begin` returns, never on themselves."""
from __future__ import annotations

import threading

import pytest
import torch

from focuslib.decoder import DiffusionDecoder
from focuslib.testing import tiny_model
from focuslib.policies.budget import FocusBudget
from focuslib.policies.eviction import DyLLM, Focus, RankingEviction
from focuslib.policies.unmasking import Threshold

STACKS = {
    "none": (None, None),
    "focus": (Focus(), FocusBudget(1.0)),
    "dyllm": (DyLLM(), None),
    "focus_dyllm": ([Focus(), DyLLM()], FocusBudget(1.0)),
    "stale_confidence": (RankingEviction("stale_confidence"), FocusBudget(1.0)),
    "random": (RankingEviction("random", seed=3), FocusBudget(1.0)),
}


@pytest.mark.parametrize("name", sorted(STACKS))
def test_two_threads_sharing_a_decoder_get_the_sequential_outputs(name):
    eviction, budget = STACKS[name]
    decoder = DiffusionDecoder(tiny_model("sdar", n_layers=4), Threshold(0.9), eviction, budget, cache="delayed")
    g = torch.Generator().manual_seed(0)
    batches = [[torch.randint(4, 40, (int(n),), generator=g).tolist() for n in torch.randint(1, 9, (6,), generator=g)]
               for _ in range(4)]
    expected = [decoder.generate(b, gen_length=16, stop_at_eos=False).tokens for b in batches]
    results: dict[int, torch.Tensor] = {}

    def work(i: int) -> None:
        for _ in range(3):  # several rounds so the threads interleave steps
            results[i] = decoder.generate(batches[i], gen_length=16, stop_at_eos=False).tokens

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, tokens in enumerate(expected):
        assert torch.equal(results[i], tokens), f"thread {i} differs from its sequential run"
