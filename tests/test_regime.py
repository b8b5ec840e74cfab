"""focuslib.regime: hand-checked regime metrics on small traces, their aggregation over batches,
evaluate(..., regime=True) on a tiny random model, and the bench's regime columns."""
import math

import numpy as np
import pandas as pd
import pytest

from focuslib.experiments.bench import REGIME_COLUMNS, add_ratios, add_regime_bound, markdown_table
from focuslib import DiffusionDecoder, evaluate
from focuslib.regime import RegimeStats, regime_stats, regime_stats_by_group
from focuslib.tasks import load_task
from focuslib.testing import tiny_char_tokenizer, tiny_model
from focuslib.policies.unmasking import Threshold

# Two sequences, 4-slot blocks, steps 0-2: (step, seq, block, position, confidence, committed)
#   seq 0, block 0: step 0 commits 2 of 4, step 1 commits 1 of 2, step 2 commits 1 of 1
#   seq 1, block 0: step 0 commits 1 of 4, step 1 commits 3 of 3; block 1 (first at step 2) commits 2 of 4
ROWS = [
    (0, 0, 0, 0, 0.95, True), (0, 0, 0, 1, 0.92, True), (0, 0, 0, 2, 0.40, False), (0, 0, 0, 3, 0.20, False),
    (1, 0, 0, 2, 0.50, True), (1, 0, 0, 3, 0.30, False),
    (2, 0, 0, 3, 0.80, True),
    (0, 1, 0, 4, 0.30, True), (0, 1, 0, 5, 0.20, False), (0, 1, 0, 6, 0.10, False), (0, 1, 0, 7, 0.25, False),
    (1, 1, 0, 5, 0.99, True), (1, 1, 0, 6, 0.97, True), (1, 1, 0, 7, 0.91, True),
    (2, 1, 1, 8, 0.93, True), (2, 1, 1, 9, 0.60, True), (2, 1, 1, 10, np.nan, False), (2, 1, 1, 11, 0.10, False),
]
N_LAYERS, DENSE = 4, 120


def hand_trace(rows=ROWS) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["step", "seq", "block", "position", "confidence", "committed"])
    df["kept"] = True
    return df


def test_committed_fractions_by_hand():
    s = regime_stats(hand_trace(), n_layers=N_LAYERS, dense_row_layers=DENSE)
    # first steps: (0,0)@0 2/4, (1,0)@0 1/4, (1,1)@2 2/4; later: (0,0)@1 1/2, (0,0)@2 1/1, (1,0)@1 3/3
    assert s.committed_fraction_first == pytest.approx((0.5 + 0.25 + 0.5) / 3)
    assert s.committed_fraction_later == pytest.approx((0.5 + 1.0 + 1.0) / 3)
    assert (s.n_steps, s.n_first_steps, s.n_later_steps, s.n_rows, s.n_committed) == (6, 3, 3, 18, 10)


def test_first_step_is_the_smallest_step_of_each_sequence_block_in_any_row_order():
    shuffled = hand_trace().sample(frac=1.0, random_state=0)
    assert regime_stats(shuffled, n_layers=N_LAYERS, dense_row_layers=DENSE) == \
        regime_stats(hand_trace(), n_layers=N_LAYERS, dense_row_layers=DENSE)
    # only seq 1's block 1: its single step (2) is a first step although the trace started at step 0
    only = regime_stats(hand_trace()[lambda d: d.block == 1], n_layers=N_LAYERS)
    assert only.committed_fraction_first == 0.5 and math.isnan(only.committed_fraction_later)
    assert (only.n_steps, only.n_first_steps) == (1, 1)


def test_forced_share_counts_committed_rows_strictly_below_the_threshold():
    trace = hand_trace()
    # committed confidences: .95 .92 .50 .80 | .30 .99 .97 .91 .93 .60; NaN and uncommitted rows never count
    assert regime_stats(trace, n_layers=N_LAYERS).forced_share == pytest.approx(4 / 10)  # .5 .8 .3 .6
    s = regime_stats(trace, n_layers=N_LAYERS, forced_below=0.95)
    assert (s.n_forced, s.forced_share) == (7, pytest.approx(0.7))  # 0.95 itself is not below 0.95
    assert regime_stats(trace, n_layers=N_LAYERS, forced_below=0.0).forced_share == 0.0
    assert regime_stats(trace, n_layers=N_LAYERS, forced_below=1.0).forced_share == 1.0


def test_oracle_saving_by_hand():
    trace = hand_trace()
    s = regime_stats(trace, n_layers=N_LAYERS, dense_row_layers=DENSE)
    # 8 uncommitted rows x (4 - 1) skipped layers over 120 dense row-layers
    assert (s.oracle_row_layers, s.dense_row_layers) == (24, DENSE)
    assert s.oracle_saving == pytest.approx(24 / 120)
    assert regime_stats(trace, n_layers=N_LAYERS, dense_row_layers=DENSE, eviction_layer=2).oracle_saving == \
        pytest.approx(16 / 120)
    unknown = regime_stats(trace, n_layers=N_LAYERS)
    assert math.isnan(unknown.oracle_saving) and unknown.oracle_row_layers == 24
    with pytest.raises(ValueError, match="eviction_layer"):
        regime_stats(trace, n_layers=N_LAYERS, eviction_layer=5)


def test_merge_of_batches_equals_stats_of_the_whole_trace():
    """Two 'batches' (seq 0 and seq 1 decoded separately, each renumbered to seq 0) merge to the whole."""
    trace = hand_trace()
    whole = regime_stats(trace, n_layers=N_LAYERS, dense_row_layers=DENSE)
    a = regime_stats(trace[trace.seq == 0], n_layers=N_LAYERS, dense_row_layers=50)
    b = regime_stats(trace[trace.seq == 1].assign(seq=0), n_layers=N_LAYERS, dense_row_layers=70)
    merged = RegimeStats.merge([a, b])
    assert merged == whole  # every field, to the bit (fractions are summed exactly)
    # not a mean of batch means: batch a's first fraction (0.5) has weight 1, batch b's (0.375) weight 2
    assert merged.committed_fraction_first != pytest.approx((a.committed_fraction_first + b.committed_fraction_first) / 2)
    # a part without later steps (NaN) does not poison the merge; unknown dense row-layers do make the saving unknown
    c = regime_stats(trace[trace.block == 1], n_layers=N_LAYERS)
    assert RegimeStats.merge([c, c]).committed_fraction_first == 0.5
    assert math.isnan(RegimeStats.merge([a, c]).oracle_saving) and RegimeStats.merge([a, c]).dense_row_layers is None
    with pytest.raises(ValueError, match="forced_below"):
        RegimeStats.merge([a, regime_stats(trace, n_layers=N_LAYERS, forced_below=0.5)])


def test_by_group_and_edge_cases():
    groups = regime_stats_by_group(hand_trace(), {0: "sum", 1: "sort"}, n_layers=N_LAYERS)
    assert list(groups) == ["sort", "sum"]
    assert groups["sum"].committed_fraction_first == 0.5 and groups["sum"].committed_fraction_later == 0.75
    assert groups["sort"].committed_fraction_first == pytest.approx(0.375)
    assert groups["sort"].committed_fraction_later == 1.0
    assert groups["sum"].forced_share == 0.5 and groups["sort"].forced_share == pytest.approx(2 / 6)
    assert math.isnan(groups["sum"].oracle_saving)
    with pytest.raises(ValueError, match=r"\[1\]"):
        regime_stats_by_group(hand_trace(), {0: "sum"}, n_layers=N_LAYERS)
    empty = regime_stats(hand_trace().iloc[:0], n_layers=N_LAYERS, dense_row_layers=DENSE)
    assert (empty.n_rows, empty.n_steps, empty.n_committed, empty.oracle_saving) == (0, 0, 0, 0.0)
    assert math.isnan(empty.committed_fraction_first) and math.isnan(empty.forced_share)
    with pytest.raises(ValueError, match="confidence"):
        regime_stats(hand_trace().drop(columns="confidence"), n_layers=N_LAYERS)


# ---------------------------------------------------------------- evaluate(..., regime=True)

@pytest.fixture(scope="module")
def tiny():
    model = tiny_model("sdar", n_layers=4)  # block-causal, 4-token blocks
    return DiffusionDecoder(model, Threshold(0.9), tokenizer=tiny_char_tokenizer()), load_task("mix", 12, seed="test")


def test_evaluate_regime_on_a_tiny_random_model(tiny):
    decoder, task = tiny
    plain = evaluate(decoder, task, gen_length=8, batch_size=5, progress=False)
    assert plain.regime is None and not any(k.startswith("regime") for k in plain.metrics())
    result = evaluate(decoder, task, gen_length=8, batch_size=5, progress=False, regime=True)
    s = result.regime
    for name in ("committed_fraction_first", "committed_fraction_later", "forced_share", "oracle_saving"):
        assert 0.0 <= getattr(s, name) <= 1.0, name
    assert s.n_committed == result.tokens_committed and s.dense_row_layers == result.row_layers
    assert s.n_steps == round(result.tokens_committed / result.tokens_per_step)  # = sequence-steps
    assert [r["prediction"] for r in result.records] == [r["prediction"] for r in plain.records]
    # per batch, the trace's committed rows are the decoder's own count
    for i in range(0, len(task), 5):
        out = decoder.generate(task.prompts[i:i + 5], gen_length=8, trace=True)
        assert int(out.trace["committed"].sum()) == out.stats.tokens_committed
        assert regime_stats(out.trace, n_layers=4).n_steps == out.stats.sequence_steps
    m = result.metrics()
    assert m["regime/committed_fraction_first"] == s.committed_fraction_first
    assert m["regime/oracle_saving"] == s.oracle_saving and m["regime/n_committed"] == s.n_committed
    assert set(result.regime_by_task) == set(result.per_task)
    assert sum(t.n_committed for t in result.regime_by_task.values()) == s.n_committed
    for name, t in result.regime_by_task.items():
        assert m[f"regime/{name}/forced_share"] == t.forced_share
    with pytest.raises(ValueError, match="eviction_layer"):
        evaluate(decoder, task, gen_length=8, progress=False, regime=True, eviction_layer=9)


def test_evaluate_regime_does_not_depend_on_batching(tiny):
    decoder, task = tiny
    one = evaluate(decoder, task, gen_length=8, batch_size=12, progress=False, regime=True, forced_below=0.02)
    many = evaluate(decoder, task, gen_length=8, batch_size=5, progress=False, regime=True, forced_below=0.02)
    assert many.regime == one.regime  # identical, every field and every bit
    assert many.regime_by_task == one.regime_by_task
    assert one.regime.n_first_steps > 12  # several blocks per sequence, so the first/later split is exercised
    assert 0.0 < one.regime.forced_share < 1.0  # the threshold splits the commits of this random model


# ---------------------------------------------------------------- bench columns

def test_bench_row_layer_bound_and_regime_columns():
    rows = [
        {"stack": "dense", "batch_size": 8, "tokens_per_s": 100.0, "row_layers": 1000, "forward_passes": 5,
         "tokens_per_step": 2.0, "accuracy": 0.5, "n_examples": 8, "committed_fraction_first": 0.25,
         "committed_fraction_later": 0.5, "forced_share": 0.1, "oracle_saving": 0.4},
        {"stack": "focus", "batch_size": 8, "tokens_per_s": 150.0, "row_layers": 900, "forward_passes": 6,
         "tokens_per_step": 1.5, "accuracy": 0.5, "n_examples": 8},
        {"stack": "dyllm", "batch_size": 8, "tokens_per_s": 90.0, "row_layers": 1100, "forward_passes": 5,
         "tokens_per_step": 2.0, "accuracy": 0.5, "n_examples": 8},
    ]
    add_ratios(rows)
    add_regime_bound(rows)
    assert [r["row_layer_bound"] for r in rows] == [0.0, pytest.approx(0.25), pytest.approx(-0.25)]
    assert rows[1]["oracle_saving"] is None and rows[0]["oracle_saving"] == 0.4
    table = markdown_table(rows).splitlines()
    assert table[0].endswith(" | ".join(REGIME_COLUMNS) + " |")
    assert table[2].endswith("| 0.25 | 0.50 | 10% | 40% | 0% |") and table[3].endswith("|  |  |  |  | 25% |")
    # rows without regime metrics keep the original table
    plain = [{k: v for k, v in r.items() if k not in REGIME_COLUMNS} for r in rows]
    assert "oracle_saving" not in markdown_table(plain)
