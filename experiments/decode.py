"""Decode one configuration on a task: print a few generations and the stats, write metrics.json.

    python -m experiments.decode                                    # tiny-sdar, threshold 0.9, 64 mix problems
    python -m experiments.decode unmasking=low_confidence cache=none task=chain_sum task.n=16
    python -m experiments.decode -m unmasking=threshold,low_confidence cache=block,delayed
    python -m experiments.decode -m hydra/launcher=local threads=1 eviction=none,focus budget=focus
    python -m experiments.decode experiment=fast_dllm logger=wandb
    python -m experiments.decode -m eviction=none,focus budget.alpha=1.2,1.5 check_only=true   # validate a sweep

The config (conf/config.yaml) is checked right after composition (experiments.config_checks)
so a bad value stops the run before weights load; config and checkpoint errors print their
message alone (no traceback; HYDRA_FULL_ERROR=1 shows it) and exit with status 1. The run directory (Hydra's output dir)
gets metrics.json (metrics + resolved config + overrides), generations.jsonl and per_task.png;
`python -m experiments.report <multirun dir>` tabulates a sweep.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from .config_checks import Plan, clean_errors, plan_run
from .loggers import NullLogger
from .plots import per_task_plot
from focuslib import DiffusionDecoder, EvalResult, evaluate, load_model


def run(cfg: DictConfig, plan: Plan, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Load the model, evaluate the task, write the run directory; returns what metrics.json holds."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    config = OmegaConf.to_container(cfg, resolve=True)
    logger = plan.logger or NullLogger()
    logger.start(config, run_dir, name=" ".join(overrides) or "defaults")
    print(f"loading {cfg.model.path} ({plan.model_cfg.family}, {plan.model_cfg.attention} attention)")
    model, tok = load_model(plan.model_path, dtype=cfg.model.dtype, device=cfg.model.device,
                            config_overrides=OmegaConf.to_container(cfg.model.config_overrides))
    decoder = DiffusionDecoder(model, plan.unmasking, plan.eviction, plan.budget,
                               block_size=plan.block_size, cache=plan.cache, cache_options=plan.cache_options,
                               tokenizer=tok)
    result = evaluate(decoder, plan.task, gen_length=cfg.gen_length, steps=plan.steps, batch_size=cfg.batch_size,
                      progress=cfg.progress, on_batch=logger.log_step)
    record = {**result.metrics(), "overrides": overrides, "config": config}
    write_run_dir(run_dir, record, result)
    plot = per_task_plot(result.metrics(), run_dir / "per_task.png", title=" ".join(overrides) or "defaults")
    logger.log_final(result.metrics(), {"per_task": plot})
    logger.finish()
    print_summary(result, decoder, cfg.show, run_dir)
    return record


def write_run_dir(run_dir: Path, record: dict[str, Any], result: EvalResult) -> None:
    """metrics.json (what experiments.report reads) and generations.jsonl (one record per problem)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    with open(run_dir / "generations.jsonl", "w") as f:
        for r in result.records:
            f.write(json.dumps(r) + "\n")


def print_summary(result: EvalResult, decoder: DiffusionDecoder, show: int, run_dir: Path) -> None:
    """Console summary: the policies as run, the first `show` generations, the headline metrics."""
    evicting = decoder.eviction.policies
    budget = decoder.eviction.budget if evicting else None  # a budget without ranking eviction does nothing
    policies = [decoder.unmasking, *evicting, budget]
    print(f"decoder: {', '.join(repr(p) for p in policies if p is not None)}, cache={decoder.cache_name}")
    for r in result.records[:show]:
        mark = "ok " if r["score"] == 1 else "err"
        print(f"  [{mark}] {r['prompt']!r} -> {r['prediction']!r}  (answer {r['answer']!r}, {r['steps']} steps)")
    m = result.metrics()
    print(f"accuracy {m['accuracy']:.1%} on {m['n_examples']} | {m['tokens_per_s']:.0f} tokens/s | "
          f"{m['tokens_per_step']:.2f} tokens/step | {m['forward_passes']} forward passes | "
          f"{m['row_layers']} row-layers | {m['wall_time_s']:.1f} s")
    if len(m["per_task"]) > 1:
        print("per task: " + ", ".join(f"{t} {a:.0%}" for t, a in m["per_task"].items()))
    print(f"wrote {run_dir / 'metrics.json'}")


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    with clean_errors():  # ConfigError naming the bad keys, before any weights load; corrupt checkpoints
        plan = plan_run(cfg)
        hydra_cfg = HydraConfig.get()
        overrides = list(hydra_cfg.overrides.task)
        if cfg.check_only:
            print(f"config ok: {' '.join(overrides) or 'defaults'} ({cfg.model.path}, {len(plan.task)} problems)")
            return math.nan
        record = run(cfg, plan, Path(hydra_cfg.runtime.output_dir), overrides)
    return record["accuracy"]  # the objective, for optimising sweepers


if __name__ == "__main__":
    main()
