"""experiments.bench: every stack is measured on the same prompts and ratios are taken against dense."""
import json
import subprocess
import sys

import pytest

from focuslib.experiments.bench import add_ratios, markdown_table


def test_ratios_are_relative_to_dense_of_the_same_batch_size():
    rows = [
        {"stack": "dense", "batch_size": 8, "tokens_per_s": 100.0, "row_layers": 1000},
        {"stack": "focus", "batch_size": 8, "tokens_per_s": 150.0, "row_layers": 400},
        {"stack": "dense", "batch_size": 32, "tokens_per_s": 400.0, "row_layers": 1000},
        {"stack": "focus", "batch_size": 32, "tokens_per_s": 200.0, "row_layers": 500},
    ]
    add_ratios(rows)
    assert [r["speedup"] for r in rows] == [1.0, 1.5, 1.0, 0.5]
    assert [r["compute_ratio"] for r in rows] == [1.0, 2.5, 1.0, 2.0]
    assert rows[1]["speedup_share"] == pytest.approx(0.6)


def test_bench_app_writes_json_table_and_plot(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "experiments.bench", f"hydra.run.dir={out}", "n_examples=6", "batch_sizes=[1,4]",
           "repeats=1", "~stacks.dyllm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads((out / "bench.json").read_text())
    assert {(r["stack"], r["batch_size"]) for r in rows} == {(s, b) for s in ("dense", "focus", "focus_dyllm")
                                                             for b in (1, 4)}
    for r in rows:
        assert r["n_examples"] == 6 and r["tokens_per_s"] > 0 and r["row_layers"] > 0 and r["forward_passes"] > 0
        assert 0.0 <= r["accuracy"] <= 1.0
        if r["stack"] == "dense":
            assert r["speedup"] == 1.0
        else:  # the oracle replay does not apply to a stack that evicts; its own commits' forced share does
            assert r["oracle_saving"] is None and r["committed_fraction_later"] is None
        assert 0.0 <= r["forced_share"] <= 1.0
    dense = {r["batch_size"]: r for r in rows if r["stack"] == "dense"}
    assert dense[1]["forward_passes"] > dense[4]["forward_passes"]  # 6 decodes of one vs 2 batches
    table = (out / "bench.md").read_text()
    assert table == markdown_table(rows) + "\n" and len(table.strip().splitlines()) == 2 + len(rows)
    # stdout: the table bench.md holds (its documented columns), then one line naming the files; no config dump
    assert proc.stdout == table + f"\nwrote bench.json, bench.md, bench.png to {out}\n"
    assert proc.stdout.startswith("| stack | batch_size | tokens_per_s | speedup | row_layers |")
    assert "_target_" not in proc.stdout and "threshold:" not in proc.stdout
    assert (out / "bench.png").stat().st_size > 10_000


def compose_bench(overrides: list[str]):
    from pathlib import Path

    from hydra import compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base=None):
        return compose("bench", overrides=["n_examples=4", *overrides])


LEGACY = ["+eviction@stacks.legacy.eviction=focus_legacy", "+budget@stacks.legacy.budget=focus",
          "+stacks.legacy.cache_options.attend_beyond_last_row=true"]


def test_a_stack_runs_with_its_own_cache_options():
    from focuslib.experiments.bench import stack_cache_options

    cfg = compose_bench(LEGACY)
    assert stack_cache_options(cfg, cfg.stacks.legacy) == {"attend_beyond_last_row": True}
    assert stack_cache_options(cfg, cfg.stacks.focus) == {"attend_beyond_last_row": False}  # conf/cache/delayed.yaml


def test_run_bench_builds_each_stack_with_its_cache_options(monkeypatch):
    from focuslib.experiments import bench

    seen = {}

    class Recording(bench.DiffusionDecoder):
        def __init__(self, model, unmasking, eviction=None, *args, cache_options=None, **kwargs):
            seen[type(eviction).__name__ if eviction else "dense"] = cache_options
            super().__init__(model, unmasking, eviction, *args, cache_options=cache_options, **kwargs)

    monkeypatch.setattr(bench, "DiffusionDecoder", Recording)
    cfg = compose_bench([*LEGACY, "batch_sizes=[4]", "repeats=1", "regime=false", "quality=false",
                         "~stacks.dyllm", "~stacks.focus_dyllm", "~stacks.focus"])
    rows = bench.run_bench(cfg)
    assert [r["stack"] for r in rows] == ["dense", "legacy"]
    assert seen == {"dense": {"attend_beyond_last_row": False}, "Focus": {"attend_beyond_last_row": True}}


@pytest.mark.parametrize("override,message", [
    ("+stacks.legacy.cache_option.attend_beyond_last_row=true", "stacks.legacy.cache_option: a stack has only"),
    ("+stacks.legacy.cache_options.attend_beyond=true", "stacks.legacy.cache_options.attend_beyond: cache mode"),
    ("compile=fast", "compile must be true or false"),
])
def test_bench_names_a_bad_stack_key(override, message):
    from focuslib.experiments.bench import score_stacks
    from focuslib.experiments.config_checks import ConfigError, plan_bench

    cfg = compose_bench([*LEGACY[:2], override])
    with pytest.raises(ConfigError, match=message):
        plan_bench(cfg, score_stacks(cfg))
