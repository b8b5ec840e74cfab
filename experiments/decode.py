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

Data parallel: `torchrun --nproc_per_node N -m experiments.decode ...` (or a SLURM job of N tasks
through hydra/launcher=slurm) shards the task's batches over the ranks (focuslib.evaluate);
rank 0 alone prints, logs and writes the run directory, whose metrics.json records world_size,
rank_examples and rank_wall_time_s. Pass hydra.run.dir explicitly under torchrun: ranks that
start in different seconds would otherwise name different timestamped directories.
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
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
from focuslib.evaluate import init_distributed, is_main_process, leave_distributed


def run(cfg: DictConfig, plan: Plan, run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    """Load the model, evaluate the task, write the run directory; returns what metrics.json holds."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    config = OmegaConf.to_container(cfg, resolve=True)
    device = init_distributed(cfg.model.device)  # torchrun / a multi-task SLURM job: join its process group
    main_rank = is_main_process()  # only rank 0 logs, prints and writes the run directory
    logger = (plan.logger or NullLogger()) if main_rank else NullLogger()
    logger.start(config, run_dir, name=" ".join(overrides) or "defaults")
    if main_rank:
        print(f"loading {cfg.model.path} ({plan.model_cfg.family}, {plan.model_cfg.attention} attention)")
    model, tok = load_model(plan.model_path, dtype=cfg.model.dtype, device=device,
                            config_overrides=OmegaConf.to_container(cfg.model.config_overrides))
    if cfg.compile:
        model.compile_layers()
    decoder = DiffusionDecoder(model, plan.unmasking, plan.eviction, plan.budget,
                               block_size=plan.block_size, cache=plan.cache, cache_options=plan.cache_options,
                               cfg_scale=plan.cfg_scale, tokenizer=tok)
    result = evaluate(decoder, plan.task, gen_length=cfg.gen_length, steps=plan.steps, batch_size=cfg.batch_size,
                      progress=cfg.progress, on_batch=logger.log_step, seed=cfg.seed)
    timings = [result.tokens_per_s] + [  # repeats > 1: the same decoding timed again (it is deterministic)
        evaluate(decoder, plan.task, gen_length=cfg.gen_length, steps=plan.steps, batch_size=cfg.batch_size,
                 progress=False, seed=cfg.seed).tokens_per_s for _ in range(cfg.repeats - 1)]
    result.tokens_per_s = statistics.median(timings)
    record = {**result.metrics(), "tokens_per_s_runs": timings, "overrides": overrides, "config": config}
    if result.world_size > 1:
        _drop_stray_run_dir(run_dir)
        if not main_rank:
            return record
    write_run_dir(run_dir, record, result)
    plot = per_task_plot(result.metrics(), run_dir / "per_task.png", title=" ".join(overrides) or "defaults")
    logger.log_final(result.metrics(), {"per_task": plot})
    logger.finish()
    print_summary(result, decoder, cfg.show, run_dir, timings)
    return record


def _drop_stray_run_dir(run_dir: Path) -> None:
    """Every rank: remove this rank's Hydra run directory if it is not rank 0's and holds only Hydra's files.

    Ranks > 0 write nothing, but Hydra made their run directory (.hydra/, the job log); ranks that
    started in different seconds name different timestamped directories. A collective: all ranks call it.
    """
    dirs: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(dirs, str(run_dir.resolve()))
    if dirs[torch.distributed.get_rank()] == dirs[0] or not run_dir.is_dir():
        return
    if all(p.name == ".hydra" or p.suffix == ".log" for p in run_dir.iterdir()):
        shutil.rmtree(run_dir, ignore_errors=True)


def write_run_dir(run_dir: Path, record: dict[str, Any], result: EvalResult) -> None:
    """metrics.json (what experiments.report reads) and generations.jsonl (one record per problem)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    with open(run_dir / "generations.jsonl", "w") as f:
        for r in result.records:
            f.write(json.dumps(r) + "\n")


def print_summary(result: EvalResult, decoder: DiffusionDecoder, show: int, run_dir: Path,
                  timings: list[float] | None = None) -> None:
    """Console summary: the policies as run, the first `show` generations, the headline metrics."""
    evicting = decoder.eviction.policies
    ranking = any(p.uses_budget for p in evicting)
    budget = decoder.eviction.budget if ranking else None  # only ranking eviction reads a budget
    policies = [decoder.unmasking, *evicting, budget]
    print(f"decoder: {', '.join(repr(p) for p in policies if p is not None)}, cache={decoder.cache_name}")
    for r in result.records[:show]:
        mark = "ok " if r["score"] == 1 else "err"
        print(f"  [{mark}] {r['prompt']!r} -> {r['prediction']!r}  (answer {r['answer']!r}, {r['steps']} steps)")
    m = result.metrics()
    spread = ""
    if timings and len(timings) > 1:
        spread = f" (median of {len(timings)}: {min(timings):.0f}-{max(timings):.0f})"
    print(f"accuracy {m['accuracy']:.1%} on {m['n_examples']} | {m['tokens_per_s']:.0f} tokens/s{spread} | "
          f"{m['tokens_per_step']:.2f} tokens/step | {m['forward_passes']} forward passes | "
          f"{m['row_layers']} row-layers | {m['wall_time_s']:.1f} s")
    if len(m["per_task"]) > 1:
        print("per task: " + ", ".join(f"{t} {a:.0%}" for t, a in m["per_task"].items()))
    if m["world_size"] > 1:
        print(f"data parallel: {m['world_size']} ranks, problems per rank {m['rank_examples']}, "
              f"wall time of the slowest rank, tokens/s summed over the ranks")
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
        try:
            record = run(cfg, plan, Path(hydra_cfg.runtime.output_dir), overrides)
        finally:
            leave_distributed()
    return record["accuracy"]  # the objective, for optimising sweepers


if __name__ == "__main__":
    main()
