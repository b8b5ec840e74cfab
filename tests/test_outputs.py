"""What the experiment apps show a researcher: reports that say which differences are timing noise, budget cells
only where a budget applies, numbered plot labels that do not overprint, run headers that name only the policies
that act, and --help that lists only the groups an app can use."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from focuslib.experiments.config_checks import ConfigError, plan_run
from focuslib.experiments.report import (DEFAULT_NOISE, FRONT, FRONT_NOISY, NEAR_FRONT, load_runs, noisy_front,
                                         pareto_front, write_report)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FOCUS = {"_target_": "focuslib.policies.eviction.Focus"}
DYLLM = {"_target_": "focuslib.policies.eviction.DyLLM"}


def write_run(root: Path, name: str, overrides: list[str], speed: float, accuracy: float, eviction: dict | None,
              timings: list[float] | None = None) -> None:
    """A metrics.json as experiments.decode writes it (the resolved config reduced to its eviction node)."""
    (root / name).mkdir(parents=True)
    record = {"accuracy": accuracy, "tokens_per_s": speed, "tokens_per_step": 2.0, "forward_passes": 3,
              "row_layers": 9, "n_examples": 4, "wall_time_s": 1.0, "overrides": overrides,
              "config": {"eviction": eviction or {}}}
    if timings is not None:
        record["tokens_per_s_runs"] = timings
    (root / name / "metrics.json").write_text(json.dumps(record))


def table_rows(md: str) -> list[list[str]]:
    """The cells of report.md's table rows (header and separator dropped)."""
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")][1:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


# --------------------------------------------------------------------------- report: budget cells


def test_report_blanks_budget_cells_of_runs_whose_eviction_uses_no_budget(tmp_path):
    write_run(tmp_path, "0", ["eviction=none", "budget.alpha=1.0"], 900.0, 0.8, None)
    write_run(tmp_path, "1", ["eviction=dyllm", "budget.alpha=2.0"], 700.0, 0.8, DYLLM)
    write_run(tmp_path, "2", ["eviction=focus", "budget.alpha=1.0"], 600.0, 0.75, FOCUS)
    write_run(tmp_path, "3", ["eviction=focus", "budget.alpha=2.0"], 650.0, 0.78, FOCUS)
    table = load_runs(tmp_path)
    assert list(table["budget.alpha"]) == ["", "", "1.0", "2.0"]
    md = write_report(tmp_path)["md"].read_text()
    rows = table_rows(md)
    assert [r[:3] for r in rows] == [["0", "none", ""], ["1", "dyllm", ""], ["2", "focus", "1.0"],
                                     ["3", "focus", "2.0"]]
    assert "blank budget.* cell" in md


def test_a_budget_column_that_applies_to_no_run_is_dropped(tmp_path):
    write_run(tmp_path, "0", ["eviction=none", "budget.alpha=1.0"], 900.0, 0.8, None)
    write_run(tmp_path, "1", ["eviction=dyllm", "budget.alpha=2.0"], 700.0, 0.8, DYLLM)
    assert "budget.alpha" not in load_runs(tmp_path).columns


# --------------------------------------------------------------------------- report: timing noise


def test_runs_differing_only_in_unused_settings_are_repeats_and_measure_the_noise(tmp_path):
    """eviction=none with two alphas is one configuration timed twice: both on the front, X measured from them."""
    write_run(tmp_path, "0", ["eviction=none", "budget.alpha=1.0"], 900.0, 0.8, None)
    write_run(tmp_path, "1", ["eviction=none", "budget.alpha=2.0"], 1000.0, 0.8, None)
    write_run(tmp_path, "2", ["eviction=focus", "budget.alpha=1.0"], 600.0, 0.75, FOCUS)
    table = load_runs(tmp_path)
    assert list(table["pareto"]) == [True, True, False]  # run 1 does not knock its own repeat off the front
    assert list(table["timings"]) == [2, 2, 1]
    assert list(table["tokens_per_s_lo"][:2]) == [900.0, 900.0] and list(table["tokens_per_s_hi"][:2]) == [1000.0] * 2
    assert list(table["pareto_noise"]) == [FRONT, FRONT, ""]
    md = write_report(tmp_path)["md"].read_text()
    assert "Timing noise, measured" in md and "X = 11%" in md  # (1000 - 900) / 950
    assert "900.0 [900.0, 1000.0]" in md


def test_repeated_timings_of_one_run_give_its_spread(tmp_path):
    write_run(tmp_path, "0", ["unmasking=threshold"], 1000.0, 0.8, None, timings=[900.0, 1000.0, 1100.0])
    write_run(tmp_path, "1", ["unmasking=low_confidence"], 1050.0, 0.8, None, timings=[1000.0, 1050.0, 1150.0])
    write_run(tmp_path, "2", ["unmasking=random"], 400.0, 0.6, None, timings=[380.0, 400.0, 420.0])
    table = load_runs(tmp_path)
    assert list(table["timings"]) == [3, 3, 3]
    # measured front: 1 dominates 0 (faster, as accurate), but their timings overlap: neither place is sure
    assert list(table["pareto"]) == [False, True, False]
    assert list(table["pareto_noise"]) == [NEAR_FRONT, FRONT_NOISY, ""]
    paths = write_report(tmp_path)
    md = paths["md"].read_text()
    assert "X = 20%" in md and "0 ~ 1" in md and "0 ~ 2" not in md
    assert [r[-1] for r in table_rows(md)] == [NEAR_FRONT, FRONT_NOISY, ""]
    assert paths["png"].read_bytes().startswith(b"\x89PNG")


def test_without_repeats_the_report_states_its_noise_rule(tmp_path):
    write_run(tmp_path, "0", ["cache=block"], 1000.0, 0.8, None)
    write_run(tmp_path, "1", ["cache=delayed"], 1040.0, 0.75, None)  # 4% faster: within the 10% rule
    write_run(tmp_path, "2", ["cache=none"], 600.0, 0.8, None)
    md = write_report(tmp_path)["md"].read_text()
    assert DEFAULT_NOISE == 0.10 and "Timing noise, assumed" in md and "X = 10%" in md and "`--noise`" in md
    assert "tokens/s): 0 ~ 1." in md  # the only pair within noise
    # 0 is the most accurate, so nothing can dominate it; 0 could overtake 1 within noise
    assert [r[-1] for r in table_rows(md)] == ["**yes**", FRONT_NOISY, ""]
    assert "X = 30%" in write_report(tmp_path, noise=0.3)["md"].read_text()


def test_noisy_front_rules():
    # a run surely dominated (as accurate, slower beyond noise) is off; a near miss is within noise
    assert noisy_front([10, 5], [11, 6], [0.8, 0.8], [True, False]) == [FRONT, ""]
    assert noisy_front([10, 9], [11, 10.5], [0.8, 0.8], [True, False]) == [FRONT_NOISY, NEAR_FRONT]
    # more accurate but slower: both on the front; the faster stays sure of it when no one can overtake it
    assert noisy_front([10, 5], [11, 6], [0.7, 0.8], [True, True]) == [FRONT, FRONT]
    # repeats of one configuration never dominate each other
    assert noisy_front([9, 9], [10, 10], [0.8, 0.8], [True, True], groups=["a", "a"]) == [FRONT, FRONT]
    assert pareto_front([1.0, 2.0], [0.5, 0.5], groups=["a", "a"]) == [True, True]


def test_report_cli_rejects_a_nonsense_noise(tmp_path):
    write_run(tmp_path, "0", ["cache=block"], 1000.0, 0.8, None)
    proc = subprocess.run([sys.executable, "-m", "experiments.report", str(tmp_path), "--noise", "-1"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--noise must lie in [0, 2)" in proc.stderr


# --------------------------------------------------------------------------- plots


def test_pareto_labels_do_not_overprint(tmp_path):
    """Coincident points share one number label; no two labels overlap, and none covers a marker."""
    import matplotlib.pyplot as plt
    from matplotlib.text import Text

    from focuslib.experiments import plots

    speed = [1000.0, 1000.5, 1001.0, 1020.0, 1035.0, 1050.0, 600.0, 601.0]
    accuracy = [0.80, 0.80, 0.80, 0.80, 0.805, 0.80, 0.70, 0.70]
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(speed, accuracy)
    plots._number_points(fig, ax, speed, accuracy, [str(i) for i in range(len(speed))])
    renderer = fig.canvas.get_renderer()
    labels = {t.get_text(): Text.get_window_extent(t, renderer) for t in ax.texts}
    assert sorted(",".join(labels).split(",")) == sorted(str(i) for i in range(len(speed)))  # every run named once
    assert "0,1,2" in labels  # the three coincident points share a label
    boxes = list(labels.values())
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    for x, y in (ax.transData.transform(p) for p in zip(speed, accuracy)):
        assert not any(b.contains(x, y) for b in boxes)
    plt.close(fig)
    path = plots.pareto_plot(speed, accuracy, pareto_front(speed, accuracy), [f"run {i}" for i in range(8)],
                             tmp_path / "p.png", "t", spread=[(990.0, 1040.0)] + [None] * 7,
                             status=[FRONT_NOISY] + [""] * 7)
    assert path.read_bytes().startswith(b"\x89PNG")


# --------------------------------------------------------------------------- the apps as users run them


def run_app(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def help_groups(text: str) -> dict[str, list[str]]:
    """group -> options from the 'group: a, b' lines of an app's --help (before its Config section)."""
    head = text.split("== Config ==")[0]
    return {k.strip(): [o.strip() for o in v.split(",") if o.strip()]
            for k, _, v in (ln.partition(":") for ln in head.splitlines() if ":" in ln and "(" not in ln)}


@pytest.mark.parametrize("app,groups", [
    ("experiments.decode", {"budget", "cache", "eviction", "experiment", "logger", "model", "task", "unmasking"}),
    ("experiments.bench", {"budget", "cache", "eviction", "model", "task", "unmasking"}),
    ("experiments.train", {"train"}),
])
def test_help_lists_only_the_apps_own_groups(app, groups):
    proc = run_app(app, "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    listed = help_groups(proc.stdout)
    assert set(listed) == groups, listed
    for group in groups - {"train"}:
        assert listed[group] == sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    if app == "experiments.train":
        assert listed["train"] == ["tiny_llada", "tiny_sdar", "tiny_sdar_b32", "tiny_sdar_b32_long", "walk_lookup"]


def test_train_presets_are_not_a_group_of_the_shared_conf():
    assert not (CONF / "train").exists()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        with pytest.raises(Exception, match="train"):
            compose("config", overrides=["train=tiny_sdar"])


def test_train_fields_named_like_decode_groups_take_plain_values():
    """`task=walk` and `model.dim=64` set TrainConfig fields: conf/'s task and model groups are not on the train
    app's search path (they once shadowed them: "Could not override 'task'. No match in the defaults list")."""
    import focuslib.experiments.train  # noqa: F401  (registers train_schema)

    with initialize_config_dir(config_dir=str(ROOT / "experiments" / "train_conf"), version_base=None):
        cfg = compose("train", overrides=["train=tiny_sdar_b32", "task=walk", "~task_options",
                                          "+task_options={min_len: 4}", "model.dim=64"])
    assert cfg.task == "walk" and dict(cfg.task_options) == {"min_len": 4} and cfg.model.dim == 64
    assert cfg.model.block_size == 32  # the preset still applies


def test_repeats_must_be_positive():
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=["repeats=0", "task.n=2"])
    with pytest.raises(ConfigError, match="repeats must be >= 1"):
        plan_run(cfg)


def test_decode_header_names_a_budget_only_for_ranking_eviction_and_repeats_time_again(tmp_path):
    proc = run_app("experiments.decode", "-m", "eviction=dyllm,focus", "task.n=2", "repeats=2", "progress=false",
                   "show=0", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    headers = [ln for ln in proc.stdout.splitlines() if ln.startswith("decoder: ")]
    assert len(headers) == 2
    assert "DyLLM(" in headers[0] and "Budget" not in headers[0]
    assert "Focus(" in headers[1] and "FocusBudget(alpha=1.5)" in headers[1]
    assert proc.stdout.count("(median of 2: ") == 2
    for run in ("0", "1"):
        record = json.loads((tmp_path / run / "metrics.json").read_text())
        assert len(record["tokens_per_s_runs"]) == 2
        assert record["tokens_per_s"] == pytest.approx(statistics.median(record["tokens_per_s_runs"]))
    md = write_report(tmp_path)["md"].read_text()
    assert "Timing noise, measured: 2 configurations were" in md
