"""FOCUS decoding in focuslib against an independent replay (tests/focus_replay_reference.py).

The replay decodes SDAR-style block-diffusion models one sequence at a time from the
published rules (importance over the block's masked rows, delta between layers 0 and 1,
budget, gate / top-K / adjacency / nothing-kept / progress-mark keep rule, stale keys up to
the right-most kept row, block and delayed caches, Threshold unmasking) with its own K/V
cache and bookkeeping; from focuslib it takes only the model's pieces (embeddings, Q/K/V,
attention output projection, FFN, logits).

At every step of every sequence, the tokens at the step's start and, at every layer, the
set of positions whose attention and FFN ran in focuslib (read by wrapping
`DenseRunner.complete`, which the decoder calls once per layer per step) must equal the
replay's, and so must the final tokens; focuslib runs one prompt at a time and all prompts
as one ragged batch.

Sensitivity (checked by hand when this file was written, by switching focuslib's
alternative rules on): with the tiny SDAR model's own 4-slot blocks, evicted rows almost
never sit left of the right-most kept row, so `evicted_keys="hidden"`, `progress_rule="fill"`
and `gate_std="sample"` decode identically there; the block-8 cases tell each of them apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from focuslib.decoder import DiffusionDecoder
from focuslib.layer import DenseRunner
from focuslib.testing import scramble_parameters, tiny_model
from focuslib.policies.budget import FixedBudget, FocusBudget
from focuslib.policies.eviction import Focus
from focuslib.policies.unmasking import Threshold

from tests.focus_replay_reference import BudgetSpec, StepRecord, keep_rule, replay

N_LAYERS = 4
PROMPTS = [[5], [6, 7, 8], [9, 10, 11, 12, 13, 14], [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]]
BUDGETS = {"focus1.5": BudgetSpec("focus", 1.5), "fixed1": BudgetSpec("fixed", 1), "fixed2": BudgetSpec("fixed", 2)}

# (model, block size, cache, budget, gen_length). On the "random" model every step commits one
# token, so FocusBudget(1.5) is K = 2 throughout and FixedBudget(2) would repeat it.
CASES = [
    ("random", 4, "block", "focus1.5", 16), ("random", 4, "block", "fixed1", 20),
    ("random", 4, "delayed", "focus1.5", 24), ("random", 4, "delayed", "fixed1", 19),
    ("sharp", 4, "block", "focus1.5", 23), ("sharp", 4, "block", "fixed2", 16),
    ("sharp", 4, "delayed", "fixed1", 20), ("sharp", 4, "delayed", "fixed2", 24),
    ("random", 8, "block", "fixed1", 20), ("random", 8, "delayed", "fixed1", 16),
    ("sharp", 8, "block", "focus1.5", 24), ("sharp", 8, "delayed", "fixed2", 20),
]


def _model(kind: str, block_size: int):
    """ "random": the plain tiny SDAR model (near-uniform logits: one commit per step);
    "sharp": distinct random parameters and a sharpened LM head, so Threshold(0.9) often
    commits several tokens per step and the FOCUS budget grows above 2.
    block_size 4 is the tiny SDAR model's own; with 8, evicted rows left of the right-most
    kept row (stale keys), the progress mark and the gate's std show in the results."""
    model = tiny_model("sdar", n_layers=N_LAYERS, **({} if block_size == 4 else {"block_size": block_size}))
    assert model.cfg.block_size == block_size
    if kind == "sharp":
        scramble_parameters(model, seed=1)
        with torch.no_grad():
            model.lm_head.weight.mul_(15.0)
    return model


def _focuslib_budget(spec: BudgetSpec):
    return FocusBudget(spec.value) if spec.kind == "focus" else FixedBudget(count=int(spec.value))


@dataclass
class _Step:
    tokens: list[int]  # the sequence's tokens as layer 0 saw them
    layers: list[list[int]]  # positions whose attention + FFN ran, per layer


@dataclass
class _Recorder:
    """One entry per call of DenseRunner.complete: (layer index, [positions per sequence], [tokens per sequence])."""

    calls: list

    def per_sequence(self, b: int, length: int) -> list[_Step]:
        """Sequence b's steps (those at which it had rows), its tokens cut to its own length."""
        assert len(self.calls) % N_LAYERS == 0, "complete must run once per layer per step"
        steps = []
        for s in range(0, len(self.calls), N_LAYERS):
            chunk = self.calls[s:s + N_LAYERS]
            assert [c[0] for c in chunk] == list(range(N_LAYERS)), "one call per layer, in order"
            layers = [c[1][b] for c in chunk]
            if layers[0]:  # an active sequence always computes rows; a finished one none
                steps.append(_Step(tokens=chunk[0][2][b][:length], layers=layers))
            else:
                assert not any(layers)
        return steps


@pytest.fixture
def recorder(monkeypatch):
    rec = _Recorder(calls=[])
    original = DenseRunner.complete

    def complete(self, x, proj):
        pos, valid = x.rows.pos, x.rows.valid
        rec.calls.append((x.index, [sorted(pos[b][valid[b]].tolist()) for b in range(pos.shape[0])],
                          x.step.tokens.tolist()))  # tolist copies: the decoder writes tokens in place later
        return original(self, x, proj)

    monkeypatch.setattr(DenseRunner, "complete", complete)
    return rec


def _describe(r: StepRecord) -> str:
    sel = r.selection
    return (f"block {r.block} step_in_block {r.step_in_block}: rows {r.rows}, masked {r.masked}, "
            f"delta { {p: round(d, 6) for p, d in r.delta.items()} }, K {sel.budget if sel else None}, "
            f"gate slots {sel.gate if sel else None}, base {sel.base if sel else None}, "
            f"forced {sel.forced if sel else None}, kept slots {sel.kept if sel else None}, "
            f"decision margin {sel.margin if sel else float('nan'):.3g}, mark {r.mark_before} -> {r.mark_after}, "
            f"hidden keys {r.hidden}, confidence { {p: round(c, 8) for p, c in r.confidence.items()} }, "
            f"committed {r.committed}")


def _compare(label: str, ours: list[StepRecord], theirs: list[_Step]) -> None:
    for s, (r, st) in enumerate(zip(ours, theirs)):
        if r.tokens != st.tokens:
            diff = [p for p, (a, b) in enumerate(zip(r.tokens, st.tokens)) if a != b]
            prev = _describe(ours[s - 1]) if s else "none"
            pytest.fail(f"{label}: tokens at the start of step {s} differ at positions {diff}: replay {r.tokens}, "
                        f"focuslib {st.tokens}\nreplay state of the previous step: {prev}")
        for i in range(N_LAYERS):
            if r.layers[i] != st.layers[i]:
                mine, fl = set(r.layers[i]), set(st.layers[i])
                pytest.fail(f"{label}: step {s}, layer {i}: replay computed {r.layers[i]}, focuslib {st.layers[i]} "
                            f"(only replay: {sorted(mine - fl)}, only focuslib: {sorted(fl - mine)})\n"
                            f"replay state: {_describe(r)}")
    assert len(ours) == len(theirs), f"{label}: replay took {len(ours)} steps, focuslib {len(theirs)}"


@pytest.mark.parametrize("kind,block_size,cache,budget,gen_length", CASES)
def test_focus_matches_replay_every_step_and_layer(recorder, kind, block_size, cache, budget, gen_length):
    model = _model(kind, block_size)
    spec = BUDGETS[budget]
    decoder = DiffusionDecoder(model, Threshold(0.9), Focus(), _focuslib_budget(spec), cache=cache)
    name = f"{kind}/block{block_size}/{cache}/{budget}/gen{gen_length}"

    replays = [replay(model, p, gen_length, cache, spec) for p in PROMPTS]
    steps = [r for _, recs in replays for r in recs]
    assert sum(1 for r in steps if r.evicted) >= len(PROMPTS), "the case must exercise eviction"
    if kind == "sharp":
        assert any(len(r.committed) > 1 for r in steps), "the case must commit several tokens in a step"
    if block_size == 8:
        assert any(r.stale_keys for r in steps), "the case must leave evicted rows visible as stale keys"

    # one prompt at a time
    for b, prompt in enumerate(PROMPTS):
        recorder.calls.clear()
        out = decoder.generate([prompt], gen_length=gen_length)
        tokens, recs = replays[b]
        _compare(f"{name} prompt {b} alone", recs, recorder.per_sequence(0, len(prompt) + gen_length))
        assert out.tokens[0].tolist() == tokens, f"{name} prompt {b} alone: final tokens differ"

    # all prompts as one ragged batch
    recorder.calls.clear()
    out = decoder.generate(PROMPTS, gen_length=gen_length)
    for b, prompt in enumerate(PROMPTS):
        tokens, recs = replays[b]
        _compare(f"{name} prompt {b} in batch", recs, recorder.per_sequence(b, len(prompt) + gen_length))
        assert out.tokens[b].tolist() == tokens, f"{name} prompt {b} in batch: final tokens differ"


@pytest.mark.parametrize("slots,delta,budget,mark,kept", [
    # gate {5} (>= K = 1); adjacency adds 4; progress forces 0, 1, 2 (all past mark -1)
    ([0, 1, 2, 4, 5], [0.0, 0.125, 0.0, 0.0, 0.875], 1, -1, [0, 1, 2, 4, 5]),
    # same, mark 1: only slot 2 lies past the mark
    ([0, 1, 2, 4, 5], [0.0, 0.125, 0.0, 0.0, 0.875], 1, 1, [2, 4, 5]),
    # all deltas equal: every row is on mean + std (std 0), so the gate keeps all
    ([0, 2, 4, 6], [0.5, 0.5, 0.5, 0.5], 2, 6, [0, 2, 4, 6]),
    # empty gate, top-1 tie between slots 2 and 4 -> the lower; slot 0 is not past mark 6
    ([0, 2, 4, 6], [0.25, 0.5, 0.5, 0.125], 1, 6, [2]),
    # |M| <= K: nothing evicted
    ([1, 3], [0.0, 1.0], 2, -1, [1, 3]),
])
def test_replay_keep_rule_by_hand(slots, delta, budget, mark, kept):
    assert keep_rule(slots, delta, budget, mark).kept == kept
