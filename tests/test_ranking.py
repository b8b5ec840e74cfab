"""The ranking interface (one keep rule, pluggable scores) and FOCUS's rule options in the decoder.

The keep rule itself is tested in tests/test_kernels.py and tests/test_focus_reference.py;
here: what each score ranks by, and the behaviour each option of Focus / the delayed cache names.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import focuslib.layer as layer_mod
from focuslib.cache import BlockView, DelayedCache
from focuslib.decoder import DiffusionDecoder
from focuslib.testing import TINY_MASK, tiny_model
from focuslib.kernels import masked_importance
from focuslib.policies.budget import FixedBudget, FocusBudget
from focuslib.policies.eviction import SCORES, Focus, LayerImportance, RankingEviction
from focuslib.policies.unmasking import Threshold

PROMPTS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16]]


def _decode(eviction=None, budget=None, cache="block", n_layers=4, **kwargs):
    decoder = DiffusionDecoder(tiny_model("sdar", n_layers=n_layers), Threshold(0.9), eviction, budget, cache=cache)
    return decoder.generate(PROMPTS, gen_length=16, stop_at_eos=False, **kwargs)


@pytest.mark.parametrize("score", sorted(SCORES))
def test_every_score_decodes_and_never_commits_an_evicted_row(score):
    out = _decode(RankingEviction(score), FixedBudget(count=1), trace=True)
    assert not (out.tokens == TINY_MASK).any()
    assert not (out.trace["committed"] & ~out.trace["kept"]).any()


def test_leftmost_keeps_a_prefix_of_the_masked_rows():
    df = _decode(RankingEviction("leftmost"), FixedBudget(count=1), trace=True).trace
    assert (~df["kept"]).any()
    for _, g in df.groupby(["step", "seq"]):
        kept = g.sort_values("position")["kept"].to_numpy()
        assert not (~kept[:-1] & kept[1:]).any()  # once a row is evicted, every row right of it is too


def test_random_score_is_seeded():
    a = _decode(RankingEviction("random", seed=1), FixedBudget(count=1), trace=True).trace
    b = _decode(RankingEviction("random", seed=1), FixedBudget(count=1), trace=True).trace
    c = _decode(RankingEviction("random", seed=2), FixedBudget(count=1), trace=True).trace
    assert a["score"].equals(b["score"])
    assert not (len(a) == len(c) and np.allclose(a["score"], c["score"]))


def test_oracle_keeps_exactly_what_dense_decoding_commits():
    dense = _decode(trace=True).trace
    out = _decode(RankingEviction("oracle"), FixedBudget(count=1), trace=True)
    df = out.trace
    np.testing.assert_array_equal(df["kept"], df["score"] > 0)  # exact keep: no gate, adjacency or progress
    first = lambda t: t[t["step"] == 0].sort_values(["seq", "position"])  # noqa: E731  (same state at step 0)
    np.testing.assert_array_equal(first(df)["score"] > 0, first(dense)["committed"])
    assert out.stats.forward_passes == _decode(RankingEviction("oracle"), FixedBudget(count=1)).stats.forward_passes


def test_stale_confidence_is_the_last_confidence_a_row_had():
    df = _decode(RankingEviction("stale_confidence"), FixedBudget(count=1), trace=True).trace
    checked = 0
    for (seq, pos), g in df.groupby(["seq", "position"]):
        g = g.sort_values("step")
        last = np.nan
        for _, r in g.iterrows():
            if not np.isnan(last):
                assert r["score"] == pytest.approx(last, abs=1e-6)
                checked += 1
            if r["kept"]:
                last = r["confidence"]
    assert checked > 0


def test_dense_labels_mark_what_dense_decoding_would_commit():
    out = _decode(Focus(), FixedBudget(count=1), trace=True, dense_labels=True)
    df = out.trace
    assert "dense_commit" in df
    assert df.groupby(["step", "seq"])["dense_commit"].any().all()  # every step commits at least one row
    with pytest.raises(ValueError, match="trace=True"):
        _decode(Focus(), FixedBudget(count=1), dense_labels=True)


def _spy_masks(monkeypatch):
    """Record (layer, rows.pos, rows.valid, mask) of every complete() call of the dense runner."""
    seen = []
    original = layer_mod.DenseRunner.complete

    def spy(self, x, proj):
        seen.append((x.index, x.rows.pos.clone(), x.rows.valid.clone(), x.mask.clone()))
        return original(self, x, proj)

    monkeypatch.setattr(layer_mod.DenseRunner, "complete", spy)
    return seen


@pytest.mark.parametrize("evicted_keys", ["stale", "hidden"])
def test_evicted_keys_visibility(monkeypatch, evicted_keys):
    """stale: evicted rows left of the right-most kept block row stay visible as keys, block keys right of it
    are hidden; hidden: evicted rows vanish as keys."""
    model = tiny_model("sdar", n_layers=4)
    decoder = DiffusionDecoder(model, Threshold(0.9), Focus(evicted_keys=evicted_keys), FixedBudget(count=1),
                               cache="block")
    seen = _spy_masks(monkeypatch)
    decoder.generate([[3, 4, 5]], gen_length=8, stop_at_eos=False)
    bs = model.cfg.block_size
    checked = 0
    for (i0, pos0, valid0, _), (i1, pos1, valid1, mask1) in zip(seen, seen[1:]):
        if i0 != 0 or i1 != 1:
            continue  # pairs (layer 0, layer 1) of one step
        before = set(pos0[0][valid0[0]].tolist())
        after = set(pos1[0][valid1[0]].tolist())
        evicted = before - after
        if not evicted:
            continue
        block = min(evicted) // bs
        rightmost = max(p for p in after if p // bs == block)
        visible = set(mask1[0, 0].nonzero().flatten().tolist())  # keys of the first kept row
        for p in evicted:
            assert (p in visible) == (evicted_keys == "stale" and p < rightmost)
        right = {p for p in before if p // bs == block and p > rightmost}
        assert not (right & visible)
        checked += 1
    assert checked > 0


def test_delayed_cache_attention_ends_at_the_last_computed_row():
    """Positions 4, 5 are frozen, 2-3 are not: the reference never attends 4, 5 at this step; the option does."""
    b, t = 1, 6
    decoded = torch.tensor([[True, True, False, True, True, True]])
    view = BlockView(in_sequence=torch.ones(b, t, dtype=torch.bool), masked=~decoded,
                     before_block_end=torch.ones(b, t, dtype=torch.bool), in_block=torch.ones(b, t, dtype=torch.bool),
                     block_start_step=torch.tensor([False]), block_last=torch.tensor([[False] * 5 + [True]]),
                     in_finished_block=torch.zeros(b, t, dtype=torch.bool))
    for beyond, expected in ((False, [True, True, False, False, False, False]),
                             (True, [True, True, False, False, True, True])):
        mode = DelayedCache(b, t, "cpu", attend_beyond_last_row=beyond)
        mode.final[:] = torch.tensor([[True, True, False, False, True, True]])
        assert mode.rows(view).tolist() == [[False, False, True, True, False, False]]
        assert mode.reusable(view).tolist() == [expected]


def test_cache_options_are_checked():
    with pytest.raises(ValueError, match="no option"):
        DiffusionDecoder(tiny_model("sdar"), Threshold(0.9), cache="block", cache_options={"attend_beyond_last_row": 1})


def test_importance_is_rounded_to_the_model_dtype():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 4, 8, generator=g).bfloat16()
    k = torch.randn(2, 6, 2, 8, generator=g).bfloat16()
    masked = torch.ones(2, 6, dtype=torch.bool)
    exact = masked_importance(q, k, masked, 3)
    rounded = masked_importance(q, k, masked, 3, round_to=torch.bfloat16)
    assert torch.equal(rounded, exact.bfloat16().float()) and not torch.equal(rounded, exact)
    assert LayerImportance(round_to_model_dtype=False).round_to_model_dtype is False


def test_focus_options_are_validated():
    for kwargs in (dict(eviction_point="before"), dict(evicted_keys="gone"), dict(progress_rule="all"),
                   dict(gate_std="n"), dict(score="nope"), dict(layer=0), dict(window=2)):
        with pytest.raises(ValueError):
            Focus(**kwargs)


def test_old_rules_are_still_available_and_differ():
    """Every option set to focuslib's earlier behaviour gives a different decode than the reference defaults."""
    new = _decode(Focus(), FocusBudget(1.0), n_layers=4, trace=True)
    old = _decode(Focus(eviction_point="output", evicted_keys="hidden", progress_rule="fill", gate_std="sample"),
                  FocusBudget(1.0), n_layers=4, trace=True)
    assert new.stats.row_layers != old.stats.row_layers


def test_dream_keeps_the_predictor_row_of_every_kept_position():
    """With the logit shift, a kept masked position keeps its predictor row p - 1, so it stays a commit candidate.
    The oracle keeps exactly its positions (no adjacency rule to rescue the predictor rows)."""
    decoder = DiffusionDecoder(tiny_model("dream", n_layers=4), Threshold(0.9), RankingEviction("oracle"),
                               FixedBudget(count=1), cache="none", block_size=8)
    df = decoder.generate(PROMPTS, gen_length=16, stop_at_eos=False, trace=True).trace
    assert df.loc[df["score"] > 0, "kept"].all()  # every position the oracle keeps has its predictor row
    assert (~df["kept"]).any()
