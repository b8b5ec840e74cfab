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
    dense = {r["batch_size"]: r for r in rows if r["stack"] == "dense"}
    assert dense[1]["forward_passes"] > dense[4]["forward_passes"]  # 6 decodes of one vs 2 batches
    table = (out / "bench.md").read_text()
    assert table == markdown_table(rows) + "\n" and len(table.strip().splitlines()) == 2 + len(rows)
    # stdout: the table bench.md holds (its documented columns), then one line naming the files; no config dump
    assert proc.stdout == table + f"\nwrote bench.json, bench.md, bench.png to {out}\n"
    assert proc.stdout.startswith("| stack | batch_size | tokens_per_s | speedup | row_layers |")
    assert "_target_" not in proc.stdout and "threshold:" not in proc.stdout
    assert (out / "bench.png").stat().st_size > 10_000
