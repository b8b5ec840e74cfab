"""Experiments as users run them: compose every shipped option, reject bad values by key,
sweep (basic and joblib launchers), report, and log to wandb offline.

Composition and validation use Hydra's compose API (fast, in-process); the app itself runs
in subprocesses exactly as a user types it, on tiny-sdar with a few problems.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from focuslib.experiments.config_checks import ConfigError, keyed, plan_run
from focuslib.experiments.report import load_runs, pareto_front, write_report

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
GROUPS = ("model", "unmasking", "eviction", "budget", "cache", "task", "logger", "experiment")
REFERENCE = ROOT / "tests" / "data" / "reference-checkpoints"  # published metadata of the real checkpoints
REAL_MODELS = {"llada_8b_instruct": "llada-8b-instruct", "dream_7b_instruct": "dream-v0-instruct-7b",
               "sdar_8b_chat_b32": "sdar-8b-chat", "llada2_mini": "llada2-mini"}
FAST = ["task.n=2", "progress=false"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def compose_cfg(overrides: list[str], hydra: bool = False):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=overrides, return_hydra_config=hydra)


def plan(overrides: list[str]):
    return plan_run(compose_cfg([*FAST, *overrides]))


def problems(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as err:
        plan(overrides)
    return str(err.value)


# --------------------------------------------------------------------------- composition


def test_every_group_has_its_options():
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"
    assert {"tiny_sdar", "tiny_llada", *REAL_MODELS} <= set(options("model"))
    assert {"mix", "gsm8k", "humaneval", "sharegpt", "chain_sum"} <= set(options("task"))
    assert {"auto", "none", "prefix", "dual", "block", "delayed"} <= set(options("cache"))
    assert {"none", "wandb"} <= set(options("logger"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_option_composes(group, option):
    cfg = compose_cfg([f"{group}={option}"])
    assert OmegaConf.select(cfg, "gen_length") >= 1
    if group == "unmasking":
        assert cfg.unmasking._target_.startswith("focuslib.policies.")
    if group == "model":  # real checkpoints leave the path to the user
        assert OmegaConf.is_missing(cfg.model, "path") == (option in REAL_MODELS)
    if group == "task":
        assert cfg.task.name == option


def test_focus_fill_is_focus_with_the_fill_progress_rule():
    focus, fill = (OmegaConf.to_container(compose_cfg([f"eviction={o}"]).eviction) for o in ("focus", "focus_fill"))
    assert focus["progress_rule"] == "mark" and fill == {**focus, "progress_rule": "fill"}


def _target_nodes(node):
    if isinstance(node, dict):
        if "_target_" in node:
            yield node
        for value in node.values():
            yield from _target_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _target_nodes(value)


@pytest.mark.parametrize("group", ["unmasking", "eviction", "budget", "logger"])
def test_option_keys_are_the_constructor_arguments(group):
    """Configs mirror constructors: every argument is exposed under its Python name, nothing else."""
    import importlib
    import inspect

    for path in (CONF / group).glob("*.yaml"):
        for node in _target_nodes(OmegaConf.to_container(OmegaConf.load(path)) or {}):
            module, name = node["_target_"].rsplit(".", 1)
            params = set(inspect.signature(getattr(importlib.import_module(module), name)).parameters)
            assert set(node) - {"_target_"} == params, (path.name, name)


@pytest.mark.parametrize("launcher,target", [("local", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_configs_compose(launcher, target):
    cfg = compose_cfg([f"hydra/launcher={launcher}"], hydra=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and "timeout_min" in cfg.hydra.launcher


def test_unknown_group_option_is_rejected_naming_the_group():
    with pytest.raises(MissingConfigException, match="unmasking"):
        compose_cfg(["unmasking=no_such_policy"])


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException, match="thresold"):
        compose_cfg(["unmasking.thresold=0.5"])
    with pytest.raises(ConfigCompositionException, match="gen_lenght"):
        compose_cfg(["gen_lenght=8"])


def test_mistyped_value_is_rejected_naming_the_key():
    with pytest.raises(ConfigCompositionException, match="gen_length"):
        compose_cfg(["gen_length=sixteen"])


# --------------------------------------------------------------------------- validation


def _valid_overrides(group: str, option: str, tmp_path: Path) -> list[str]:
    """What a user adds so that `group=option` forms a runnable config (paths, matching family)."""
    extra = [f"{group}={option}"]
    if group == "model" and option in REAL_MODELS:
        extra += [f"model.path={REFERENCE / REAL_MODELS[option]}", "model.device=cpu"]
    if group == "eviction" and option != "none":
        extra.append("budget=focus")
    if group == "cache" and option in ("prefix", "dual"):
        extra.append("model=tiny_llada")
    if group == "task" and option in ("humaneval", "sharegpt"):  # text the tiny models' char vocabularies lack
        extra += ["model=sdar_8b_chat_b32", f"model.path={REFERENCE / REAL_MODELS['sdar_8b_chat_b32']}",
                  "model.device=cpu"]
    if group == "task" and option == "gsm8k":
        data = tmp_path / "gsm8k.jsonl"
        rows = [{"question": f"{i}+1=", "answer": f"#### {i + 1}"} for i in range(3)]
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        extra.append(f"task.options.path={data}")
    return extra


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS if g != "experiment" for o in options(g)])
def test_every_option_validates(group, option, tmp_path):
    built = plan(_valid_overrides(group, option, tmp_path))
    assert built.unmasking is not None and built.task is not None and len(built.task) == 2
    assert built.model_cfg.n_layers >= 1


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_validates(experiment):
    built = plan([f"experiment={experiment}"])
    assert built.unmasking is not None


def test_experiment_presets_set_what_they_promise():
    fast = compose_cfg(["experiment=fast_dllm"])
    assert fast.cache.mode == "dual" and fast.model.path == "tiny-llada"
    assert fast.unmasking._target_.endswith("Threshold")
    sweep = compose_cfg(["experiment=focus_vs_dense"], hydra=True)
    assert set(sweep.hydra.sweeper.params.eviction.split(",")) == {"none", "focus"}


def test_real_models_require_a_path_and_name_it():
    for name in REAL_MODELS:
        assert "model.path is required" in problems([f"model={name}"])


def test_missing_task_file_is_named():
    assert "task.options.path is required" in problems(["task=gsm8k"])
    assert "task.options.path: gsm8k: no such file" in problems(["task=gsm8k", "task.options.path=/no/such/file.jsonl"])


@pytest.mark.parametrize("overrides,key", [
    (["budget=focus", "budget.alpha=-1"], "budget.alpha must be > 0"),
    (["budget=focus", "budget.alpha=0"], "budget.alpha must be > 0"),
    (["unmasking.threshold=0"], "unmasking.threshold must lie in (0.0, 1.0]"),
    (["unmasking.threshold=1.5"], "unmasking.threshold must lie in (0.0, 1.0]"),
    (["unmasking=low_confidence", "unmasking.temperature=-1"], "unmasking.temperature"),
    (["budget=fixed", "budget.count=0"], "budget.count"),
    (["model=tiny_llada", "block_size=5"], "gen_length 16 is not a multiple of block_size 5"),
    (["model=tiny_llada", "gen_length=12", "block_size=8"], "gen_length 12 is not a multiple of block_size 8"),
    (["model=tiny_sdar", "block_size=4"], "block_size=4 differs from the model's block-causal block 8"),
    (["cache=dual"], "cache.mode 'dual'"),
    (["model=tiny_llada", "cache=delayed"], "cache.mode 'delayed'"),
    (["gen_length=0"], "gen_length must be >= 1"),
    (["gen_length=512"], "gen_length=512 leaves no room for a prompt within the model's max_positions 128"),
    (["batch_size=0"], "batch_size must be >= 1"),
    (["task.n=0"], "task.n must be >= 1"),
    (["model.path=no-such-model"], "model.path"),
    (["model.dtype=float17"], "model.dtype"),
    (["model=tiny_llada", "unmasking=low_confidence", "steps=1"], "steps=1 is fewer than the 2 blocks"),
    (["logger=wandb", "logger.mode=sometimes"], "logger.mode"),
    (["eviction=focus", "budget=focus", "eviction.layer=0"], "eviction.layer: Focus layer must be"),
    (["eviction=focus", "budget=focus", "eviction.layer=10"], "eviction.layer: Focus(layer=10) needs a model"),
    (["eviction=focus_dyllm", "budget=focus", "eviction.policies.0.window=2"], "eviction.policies.0.window"),
])
def test_invalid_values_are_rejected_naming_the_key(overrides, key):
    assert key in problems(overrides)


def test_all_problems_are_reported_at_once():
    text = problems(["budget=focus", "budget.alpha=-1", "unmasking.threshold=2", "cache=dual"])
    assert "budget.alpha" in text and "unmasking.threshold" in text and "cache.mode" in text


@pytest.mark.parametrize("eviction", ["focus", "focus_dyllm"])
def test_ranking_eviction_without_budget_is_rejected(eviction):
    assert "budget: eviction policy" in problems([f"eviction={eviction}", "budget=none"])


def test_eviction_stacks_build_as_one_policy_list():
    from focuslib.experiments.config_checks import _as_list

    assert _as_list(None) == [] and _as_list("p") == ["p"]
    assert _as_list(["a", ["b", None]]) == ["a", "b"] and _as_list({"x": "a", "y": ["b"]}) == ["a", "b"]
    built = plan(["eviction=focus_dyllm", "budget=focus"]).eviction
    assert [type(p).__name__ for p in built] == ["Focus", "DyLLM"]  # a Stack, passed to the decoder as is


def test_the_issue_sweep_composes_and_validates_per_point():
    # python -m experiments.decode -m eviction=none,focus budget.alpha=1.2,1.5,1.8 needs no other override
    for eviction in ("none", "focus"):
        for alpha in ("1.2", "1.8"):
            built = plan([f"eviction={eviction}", f"budget.alpha={alpha}"])
            assert built.budget.alpha == float(alpha)
            assert (built.eviction is None) == (eviction == "none")


def test_schedule_policies_get_one_token_per_step_by_default():
    assert plan(["unmasking=low_confidence"]).steps == 16
    assert plan(["unmasking=threshold"]).steps is None
    assert plan(["unmasking=low_confidence", "steps=8"]).steps == 8


def test_keyed_names_the_key():
    assert keyed("budget", ["alpha"], "alpha must be > 0, got -1") == "budget.alpha must be > 0, got -1"
    assert keyed("x", ["gamma"], "bad gamma value") == "x.gamma: bad gamma value"
    assert keyed("x", ["gamma"], "something else") == "x: something else"


# --------------------------------------------------------------------------- report (no decoding)


def test_pareto_front():
    speed = [1.0, 2.0, 3.0, 3.0, 0.5, float("nan")]
    acc = [0.9, 0.8, 0.5, 0.4, 0.95, 1.0]
    assert pareto_front(speed, acc) == [True, True, True, False, True, False]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [True, True]  # ties dominate nobody


def test_report_from_handmade_runs(tmp_path):
    points = {"0": ("eviction=none", 10.0, 0.9), "1": ("eviction=focus", 20.0, 0.85), "2": ("eviction=x", 5.0, 0.8)}
    for run, (override, speed, acc) in points.items():
        (tmp_path / run).mkdir()
        (tmp_path / run / "metrics.json").write_text(json.dumps(
            {"accuracy": acc, "tokens_per_s": speed, "tokens_per_step": 2.0, "forward_passes": 3, "row_layers": 9,
             "n_examples": 4, "wall_time_s": 1.0, "overrides": [override, "task.n=4"]}))
    table = load_runs(tmp_path)
    assert list(table["eviction"]) == ["none", "focus", "x"]
    assert "task.n" not in table.columns  # same for every run: not a column
    assert list(table["pareto"]) == [True, True, False]
    paths = write_report(tmp_path)
    assert "| 1 | focus | 85.0% | 20.0 |" in paths["md"].read_text()


def test_report_of_empty_dir_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        write_report(tmp_path)


# --------------------------------------------------------------------------- evaluate's per-batch hook


def test_evaluate_reports_running_metrics_after_each_batch():
    from focuslib import DiffusionDecoder, evaluate, load_model
    from focuslib.tasks import load_task
    from focuslib.policies.unmasking import Threshold

    model, tok = load_model("tiny-sdar")
    seen: list[dict[str, float]] = []
    result = evaluate(DiffusionDecoder(model, Threshold(0.9), tokenizer=tok), load_task("mix", 5), gen_length=16,
                      batch_size=2, progress=False, on_batch=seen.append)
    assert [m["examples"] for m in seen] == [2, 4, 5]
    assert seen[-1]["accuracy"] == result.accuracy and seen[-1]["forward_passes"] == result.forward_passes
    assert all(m["tokens_per_s"] > 0 for m in seen)


# --------------------------------------------------------------------------- the app, as users run it

REQUIRED = ("accuracy", "tokens_per_s", "forward_passes", "row_layers", "tokens_per_step", "n_examples", "config")


def run_app(module: str, *args: str, env: dict[str, str] | None = None,
            timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


def test_invalid_value_stops_the_app_before_the_model_loads(tmp_path):
    proc = run_app("experiments.decode", "eviction=focus", "budget.alpha=-1", f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert "budget.alpha must be > 0" in proc.stderr and "needs a budget" not in proc.stderr
    assert "Traceback" not in proc.stderr and "error: invalid config:\n  - budget.alpha" in proc.stderr
    assert "loading" not in proc.stdout and not (tmp_path / "metrics.json").exists()


def test_check_only_validates_every_sweep_point_without_loading(tmp_path):
    proc = run_app("experiments.decode", "-m", "eviction=none,focus", "check_only=true", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("config ok: eviction=") == 2
    assert "loading" not in proc.stdout and not list(tmp_path.rglob("metrics.json"))


def test_two_by_two_sweep_and_report(tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_app("experiments.decode", "-m", "unmasking=threshold,low_confidence", "cache=block,delayed",
                   "task.n=4", "progress=false", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted(sweep.rglob("metrics.json"))
    assert len(files) == 4
    seen = set()
    for f in files:
        record = json.loads(f.read_text())
        assert all(k in record for k in REQUIRED), record.keys()
        assert record["n_examples"] == 4 and record["forward_passes"] > 0 and 0 <= record["accuracy"] <= 1
        cfg = record["config"]
        seen.add((cfg["unmasking"]["_target_"].rsplit(".", 1)[-1], cfg["cache"]["mode"]))
        assert (f.parent / "generations.jsonl").read_text().count("\n") == 4
    assert seen == {(u, c) for u in ("Threshold", "LowConfidence") for c in ("block", "delayed")}
    assert "'0-7+6=' ->" in proc.stdout  # generations are printed

    report = run_app("experiments.report", str(sweep))
    assert report.returncode == 0, report.stderr[-3000:]
    with open(sweep / "report.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and {"unmasking", "cache", "accuracy", "tokens_per_s", "pareto"} <= set(rows[0])
    table_rows = [ln for ln in (sweep / "report.md").read_text().splitlines() if ln.startswith("| ")][1:]
    assert len(table_rows) == 4
    png = (sweep / "pareto.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000
    # threshold decoding commits several tokens per step; the schedule commits one
    fastest = max(rows, key=lambda r: float(r["tokens_per_step"]))
    assert fastest["unmasking"] == "threshold" and float(fastest["tokens_per_step"]) > 1.5


def test_joblib_sweep_logging_to_wandb_offline(tmp_path):
    """Parallel local sweep (joblib processes), each run with its own offline wandb run in its run directory."""
    proc = run_app("experiments.decode", "-m", "hydra/launcher=local", "logger=wandb", "unmasking.threshold=0.5,0.9",
                   "task.n=4", "batch_size=2", "progress=false", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib" in proc.stdout + proc.stderr
    runs = sorted(p.parent for p in tmp_path.rglob("metrics.json"))
    records = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert {r["config"]["unmasking"]["threshold"] for r in records} == {0.5, 0.9}
    for run in runs:
        assert json.loads((run / "metrics.json").read_text())["n_examples"] == 4
        wandb_runs = list((run / "wandb").glob("offline-run-*"))
        assert len(wandb_runs) == 1
        data = next(wandb_runs[0].glob("run-*.wandb")).read_bytes()
        for key in (b"final/accuracy", b"final/tokens_per_s", b"running/tokens_per_s", b"unmasking"):
            assert key in data, key
        assert list(wandb_runs[0].rglob("per_task*.png"))  # the run's plot was logged
