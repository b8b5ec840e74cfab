"""Benchmark eviction stacks against dense decoding, all else equal.

    python -m experiments.bench                     # writes bench.json, bench.md, bench.png in the run dir

Every stack decodes the same prompts with the same model, unmasking policy and cache
mode; only eviction (and its budget) differs. For each batch size it reports tokens/s,
speedup over dense, forward passes, row-layers computed (the FLOP proxy), the compute
ratio dense/stack row-layers, the share of that ratio turned into speed
(speedup / compute ratio), tokens committed per step and accuracy.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from focuslib import DiffusionDecoder, evaluate, load_model
from focuslib.tasks import load_task

COLUMNS = ("stack", "batch_size", "tokens_per_s", "speedup", "row_layers", "compute_ratio", "speedup_share",
           "forward_passes", "tokens_per_step", "accuracy", "n_examples")


def build_stack(spec: DictConfig) -> tuple[Any, Any]:
    """(eviction, budget) of a stack config; missing or empty entries mean none."""
    eviction = instantiate(spec.eviction) if spec.get("eviction") else None
    budget = instantiate(spec.budget) if spec.get("budget") else None
    return eviction, budget


def time_cell(decoder: DiffusionDecoder, task: Any, cfg: DictConfig, batch_size: int) -> dict[str, Any]:
    """Best of `repeats` timed evaluations (the first also warms up caches and allocators)."""
    best = None
    for _ in range(cfg.repeats):
        result = evaluate(decoder, task, gen_length=cfg.gen_length, steps=cfg.steps, batch_size=batch_size,
                          progress=False)
        if best is None or result.tokens_per_s > best.tokens_per_s:
            best = result
    return {"batch_size": batch_size, "tokens_per_s": best.tokens_per_s, "row_layers": best.row_layers,
            "forward_passes": best.forward_passes, "tokens_per_step": best.tokens_per_step,
            "accuracy": best.accuracy, "n_examples": best.n_examples}


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """speedup and compute ratio relative to the dense row of the same batch size."""
    dense = {r["batch_size"]: r for r in rows if r["stack"] == "dense"}
    for r in rows:
        base = dense[r["batch_size"]]
        r["speedup"] = r["tokens_per_s"] / base["tokens_per_s"]
        r["compute_ratio"] = base["row_layers"] / r["row_layers"]
        r["speedup_share"] = r["speedup"] / r["compute_ratio"]


def run_bench(cfg: DictConfig) -> list[dict[str, Any]]:
    """One row per (batch size, stack); dense runs first at each batch size so ratios have a base."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, tok = load_model(cfg.model.path, dtype=cfg.model.dtype, device=cfg.model.device)
    task = load_task(cfg.task.name, cfg.n_examples, seed=cfg.task.seed, **cfg.task.options)
    unmasking = instantiate(cfg.unmasking)
    names = ["dense", *[n for n in cfg.stacks if n != "dense"]]
    rows = []
    cells = [(b, n) for b in cfg.batch_sizes for n in names]
    for batch_size, name in tqdm(cells, desc="bench", unit="cell"):
        eviction, budget = build_stack(cfg.stacks[name])
        decoder = DiffusionDecoder(model, unmasking, eviction, budget, block_size=cfg.block_size,
                                   cache=cfg.cache.mode, tokenizer=tok)
        tqdm.write(f"batch {batch_size:>3}  {name}")
        rows.append({"stack": name, **time_cell(decoder, task, cfg, batch_size)})
    add_ratios(rows)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table with COLUMNS (bench.md)."""
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS)
    fmt = {"tokens_per_s": "{:.0f}", "speedup": "{:.2f}x", "compute_ratio": "{:.2f}x", "speedup_share": "{:.0%}",
           "tokens_per_step": "{:.2f}", "accuracy": "{:.1%}"}
    lines = ["| " + " | ".join(fmt.get(c, "{}").format(r[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join([head, *lines])


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Six panels against batch size, one line per stack (bench.png); matplotlib is imported only here."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("tokens_per_s", "tokens/s"), ("speedup", "speedup over dense"), ("forward_passes", "forward passes"),
              ("row_layers", "row-layers computed"), ("tokens_per_step", "tokens committed / step"),
              ("accuracy", "accuracy")]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6.5))
    for ax, (key, label) in zip(axes.flat, panels):
        for stack in dict.fromkeys(r["stack"] for r in rows):
            mine = [r for r in rows if r["stack"] == stack]
            ax.plot([r["batch_size"] for r in mine], [r[key] for r in mine], marker="o", label=stack)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@hydra.main(config_path="../conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    out = Path(HydraConfig.get().runtime.output_dir)
    rows = run_bench(cfg)
    (out / "bench.json").write_text(json.dumps(rows, indent=2))
    table = markdown_table(rows)
    (out / "bench.md").write_text(table + "\n")
    title = f"{cfg.model.path}, {cfg.unmasking._target_.rsplit('.', 1)[-1]}, cache={cfg.cache.mode}"
    plot(rows, out / "bench.png", title)
    print(table)
    print(f"\nwrote {out / 'bench.json'}, bench.md, bench.png  ({OmegaConf.to_yaml(cfg.unmasking).strip()})")


if __name__ == "__main__":
    main()
