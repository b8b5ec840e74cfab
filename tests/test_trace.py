"""generate(trace=True): one row per (step, sequence, masked position of the current block),
with FOCUS importances, the keep decision, confidence and commit outcome; save/load round-trip."""
from __future__ import annotations

import numpy as np
import pytest

from focuslib import load_trace, save_trace
from focuslib.decoder import DiffusionDecoder
from focuslib.testing import TINY_MASK, tiny_model
from focuslib.policies.budget import FixedBudget
from focuslib.policies.eviction import Focus
from focuslib.policies.unmasking import Threshold

COLUMNS = ["step", "seq", "block", "position", "imp0", "imp1", "delta", "score", "kept", "confidence", "committed",
           "committed_step"]
PROMPTS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16]]



def _run(family: str, eviction=None, budget=None, cache: str | None = None, block: int | None = None):
    decoder = DiffusionDecoder(tiny_model(family, n_layers=3), Threshold(0.9), eviction, budget, cache=cache,
                               block_size=block)
    return decoder.generate(PROMPTS, gen_length=8, stop_at_eos=False, trace=True)


@pytest.mark.parametrize("family,cache,block", [("sdar", "block", None), ("llada", "dual", 4)])
def test_trace_columns_and_rows_without_eviction(family, cache, block):
    out = _run(family, cache=cache, block=block)
    df = out.trace
    assert list(df.columns) == COLUMNS
    assert not df.duplicated(["step", "seq", "position"]).any()  # one row per (step, seq, masked position)
    assert np.isfinite(df["imp0"]).all() and np.isfinite(df["imp1"]).all()
    np.testing.assert_allclose(df["delta"], df["imp1"] - df["imp0"], rtol=1e-6, atol=1e-6)
    assert df["kept"].all()  # no eviction: every masked row produced logits
    # committed exactly once, at committed_step; before it the position is traced as masked
    done = df[df["committed"]]
    assert (done["step"] == done["committed_step"]).all()
    assert len(done) == len(PROMPTS) * 8 == out.stats.tokens_committed
    assert (df["step"] <= df["committed_step"]).all()
    per_step = df.groupby("step")["committed"].sum().to_list()
    assert per_step == out.stats.committed_per_step
    # every traced position belongs to the sequence's current block and is masked at that step
    assert df.groupby(["step", "seq"])["block"].nunique().max() == 1
    prompt_len = np.array([len(p) for p in PROMPTS])
    assert (df["position"].to_numpy() >= prompt_len[df["seq"].to_numpy()]).all()


def test_trace_importance_sums_over_masked_rows():
    """Importance is a sum of softmax weights over heads and queries: it sums to H x |M| per (step, seq)."""
    out = _run("sdar", cache="block")
    heads = 4
    for _, group in out.trace.groupby(["step", "seq"]):
        np.testing.assert_allclose(group["imp0"].sum(), heads * len(group), rtol=1e-4)
        np.testing.assert_allclose(group["imp1"].sum(), heads * len(group), rtol=1e-4)


def test_trace_with_focus_marks_evicted_rows():
    out = _run("sdar", Focus(), FixedBudget(count=1), cache="block")
    df = out.trace
    assert list(df.columns) == COLUMNS
    assert (~df["kept"]).any()
    assert not (df["committed"] & ~df["kept"]).any()
    assert df.loc[~df["kept"], "confidence"].isna().all()  # evicted rows produced no logits
    assert df.loc[df["kept"], "confidence"].between(0, 1).all()
    done = df[df["committed"]]
    assert (done["step"] == done["committed_step"]).all()
    assert not (out.tokens == TINY_MASK).any()


@pytest.mark.parametrize("layer,window", [(1, 3), (2, 5)])
def test_trace_records_the_policys_layers_window_and_score(layer, window):
    """imp0/imp1 come from the policy's reference and eviction layers with its window; score is what it ranked by."""
    decoder = DiffusionDecoder(tiny_model("sdar", n_layers=4), Threshold(0.9), Focus(layer=layer, window=window),
                               FixedBudget(count=1), cache="block")
    df = decoder.generate(PROMPTS, gen_length=8, stop_at_eos=False, trace=True).trace
    assert np.isfinite(df["score"]).all()  # every masked row was scored at every step
    np.testing.assert_allclose(df["score"], df["delta"], atol=1e-5)  # fp32 model: rounding is a no-op


def test_trace_without_ranking_policy_has_no_score():
    assert _run("sdar", cache="block").trace["score"].isna().all()


def test_trace_with_dyllm_stack():
    """Importances come from the q/k the layer runner returns (cached rows included)."""
    from focuslib.policies.eviction import DyLLM

    df = _run("llada", [Focus(), DyLLM()], FixedBudget(count=2), cache="none", block=4).trace
    assert list(df.columns) == COLUMNS
    assert np.isfinite(df["imp0"]).all() and np.isfinite(df["imp1"]).all()
    assert not (df["committed"] & ~df["kept"]).any()


def test_trace_save_load_round_trip(tmp_path):
    df = _run("sdar", Focus(), FixedBudget(count=1), cache="block").trace
    path = save_trace(df, tmp_path / "sub" / "trace.parquet")
    back = load_trace(path)
    assert list(back.columns) == COLUMNS
    assert back.dtypes.to_dict() == df.dtypes.to_dict()
    assert back.equals(df)


def test_no_trace_by_default():
    decoder = DiffusionDecoder(tiny_model("sdar"), Threshold(0.9))
    assert decoder.generate(PROMPTS, gen_length=8).trace is None
