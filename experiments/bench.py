"""Benchmark eviction stacks against dense decoding, all else equal.

    python -m experiments.bench                     # writes bench.json, bench.md, bench.png in the run dir

Every stack decodes the same prompts with the same model, unmasking policy and cache
mode; only eviction (and its budget) differs. For each batch size it reports tokens/s,
speedup over dense, forward passes, row-layers computed (the FLOP proxy), the compute
ratio dense/stack row-layers, the share of that ratio turned into speed
(speedup / compute ratio), tokens committed per step and accuracy.

With `regime=true` (default) one extra, untimed dense evaluation per batch size records a
trace and adds the regime metrics of focuslib.regime to the dense rows
(committed_fraction_first, committed_fraction_later, forced_share, oracle_saving; blank
for eviction stacks, whose traces include eviction, except forced_share, which their quality
run measures), and to every row
row_layer_bound = (1 - row_layers / dense row_layers) / dense oracle_saving: the share of
the oracle's row-layer saving the stack achieves (0 for dense, negative when it computes more).

A stack may also set `cache_options` (merged over `cache.options`): `eviction=focus_legacy` as
it ran before it matched the authors' code needs `stacks.<name>.cache_options.attend_beyond_last_row=true`.

`scores=[imp1,leftmost,...]` adds one stack per ranking score (`focus:<score>`: FOCUS's keep
rule and budget, only the score swapped). With `quality=true` (default) one extra, untimed run
per eviction stack labels every step by the same step run without eviction
(`generate(dense_labels=True)`) and reports miss_rate (rows dense decoding would commit that
the stack evicted) and the mean within-step AUC of the stack's score with a bootstrap CI.
The oracle score runs every step densely first: its tokens/s is not a speed.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from .config_checks import clean_errors, plan_bench
from focuslib import DiffusionDecoder, evaluate, load_model
from focuslib.tasks import load_task

COLUMNS = ("stack", "batch_size", "tokens_per_s", "speedup", "row_layers", "compute_ratio", "speedup_share",
           "forward_passes", "tokens_per_step", "accuracy", "n_examples")
QUALITY_COLUMNS = ("miss_rate", "auc", "auc_lo", "auc_hi")
REGIME_COLUMNS = ("committed_fraction_first", "committed_fraction_later", "forced_share", "oracle_saving",
                  "row_layer_bound")


def build_stack(spec: DictConfig) -> tuple[Any, Any]:
    """(eviction, budget) of a stack config; missing or empty entries mean none."""
    eviction = instantiate(spec.eviction) if spec.get("eviction") else None
    budget = instantiate(spec.budget) if spec.get("budget") else None
    return eviction, budget


def score_stacks(cfg: DictConfig) -> dict[str, DictConfig]:
    """Every stack of cfg.stacks, plus one `focus:<score>` stack per name in cfg.scores (FOCUS's keep rule and
    budget from stacks.focus with only the ranking score swapped)."""
    stacks = {name: cfg.stacks[name] for name in cfg.stacks}
    for score in cfg.get("scores") or []:
        spec = OmegaConf.merge(cfg.stacks.focus, {"eviction": {"score": score}})
        stacks[f"focus:{score}"] = spec
    return stacks


def stack_cache_options(cfg: DictConfig, spec: DictConfig) -> dict[str, Any]:
    """The cache options a stack runs with: cfg.cache.options, updated by the stack's own `cache_options`
    (e.g. the legacy FOCUS stack's delayed cache attending beyond its last row)."""
    merged = OmegaConf.merge(cfg.cache.get("options") or {}, spec.get("cache_options") or {})
    return OmegaConf.to_container(merged, resolve=True)  # type: ignore[return-value]


def quality_cell(decoder: DiffusionDecoder, task: Any, cfg: DictConfig, batch_size: int) -> dict[str, Any]:
    """Miss rate, within-step AUC of the stack's score and forced share, from one untimed run labelled by the
    dense step.

    miss_rate: share of the rows dense decoding would commit at a step that the stack evicted;
    auc [auc_lo, auc_hi]: mean within-step AUC of the policy's score for those rows (NaN without a score);
    forced_share: share of the stack's own commits below confidence 0.9 (`focuslib.regime`): a stack
    that evicts the decodable rows leaves the "at least one token per step" rule to guess.
    """
    import pandas as pd

    from focuslib.regime import regime_stats
    from focuslib.stats import miss_rate, within_step_auc

    frames = []
    for start in range(0, len(task), batch_size):
        out = decoder.generate(task.prompts[start:start + batch_size], gen_length=cfg.gen_length, steps=cfg.steps,
                               trace=True, dense_labels=True)
        frames.append(out.trace.assign(seq=out.trace["seq"] + start))
    trace = pd.concat(frames, ignore_index=True)
    quality = within_step_auc(trace, "score", "dense_commit", n_resamples=cfg.get("n_resamples", 500))
    values = {"miss_rate": miss_rate(trace), **{k: quality[k] for k in ("auc", "auc_lo", "auc_hi")},
              "forced_share": regime_stats(trace, n_layers=decoder.cfg.n_layers).forced_share}
    return {k: None if math.isnan(v) else v for k, v in values.items()}


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


def regime_cell(decoder: DiffusionDecoder, task: Any, cfg: DictConfig, batch_size: int) -> dict[str, Any]:
    """Regime metrics of one untimed traced evaluation (meaningful for the dense stack only)."""
    result = evaluate(decoder, task, gen_length=cfg.gen_length, steps=cfg.steps, batch_size=batch_size,
                      progress=False, regime=True)
    values = {k: getattr(result.regime, k) for k in REGIME_COLUMNS[:4]}
    return {k: None if math.isnan(v) else v for k, v in values.items()}  # None: valid JSON (null), blank in bench.md


def add_regime_bound(rows: list[dict[str, Any]]) -> None:
    """row_layer_bound = achieved row-layer saving / the dense oracle saving of the same batch size.

    Rows of stacks other than dense get None for the block fractions and the oracle saving
    (their traces include eviction, so the oracle replay does not apply) and keep the forced
    share of their quality run, if any; the bound is None where the dense oracle saving is
    unknown or zero.
    """
    dense = {r["batch_size"]: r for r in rows if r["stack"] == "dense"}
    for r in rows:
        base = dense[r["batch_size"]]
        if r["stack"] != "dense":
            r.update({k: None for k in REGIME_COLUMNS[:4] if k != "forced_share"})
            r.setdefault("forced_share", None)
        oracle = base.get("oracle_saving")
        ok = oracle is not None and not math.isnan(oracle) and oracle > 0
        r["row_layer_bound"] = (1.0 - r["row_layers"] / base["row_layers"]) / oracle if ok else None


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
    if cfg.compile:  # every stack then runs the same compiled layers; repeats >= 2 hides the compile
        model.compile_layers()
    task = load_task(cfg.task.name, cfg.n_examples, seed=cfg.task.seed, **cfg.task.options)
    unmasking = instantiate(cfg.unmasking)
    stacks = score_stacks(cfg)
    names = ["dense", *[n for n in stacks if n != "dense"]]
    rows = []
    quality: dict[str, dict[str, Any]] = {}
    cells = [(b, n) for b in cfg.batch_sizes for n in names]
    for batch_size, name in tqdm(cells, desc="bench", unit="cell"):
        eviction, budget = build_stack(stacks[name])
        decoder = DiffusionDecoder(model, unmasking, eviction, budget, block_size=cfg.block_size,
                                   cache=cfg.cache.mode, cache_options=stack_cache_options(cfg, stacks[name]),
                                   tokenizer=tok)
        tqdm.write(f"batch {batch_size:>3}  {name}", file=sys.stderr)  # progress: stdout is the table
        row = {"stack": name, **time_cell(decoder, task, cfg, batch_size)}
        if cfg.get("regime", True) and name == "dense":
            row.update(regime_cell(decoder, task, cfg, batch_size))
        if cfg.get("quality", True) and name != "dense":  # greedy: the same at every batch size, measured once
            quality.setdefault(name, quality_cell(decoder, task, cfg, batch_size))
            row.update(quality[name])
        rows.append(row)
    add_ratios(rows)
    if cfg.get("regime", True):
        add_regime_bound(rows)
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a GitHub markdown table with COLUMNS, plus REGIME_COLUMNS when the rows have them (bench.md).

    Missing regime values (None or NaN) are left blank.
    """
    columns = COLUMNS + tuple(c for c in QUALITY_COLUMNS + REGIME_COLUMNS if any(c in r for r in rows))
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns)
    fmt = {"tokens_per_s": "{:.0f}", "speedup": "{:.2f}x", "compute_ratio": "{:.2f}x", "speedup_share": "{:.0%}",
           "tokens_per_step": "{:.2f}", "accuracy": "{:.1%}", "committed_fraction_first": "{:.2f}",
           "committed_fraction_later": "{:.2f}", "forced_share": "{:.0%}", "oracle_saving": "{:.0%}",
           "row_layer_bound": "{:.0%}", "miss_rate": "{:.1%}", "auc": "{:.3f}", "auc_lo": "{:.3f}",
           "auc_hi": "{:.3f}"}

    def cell(r: dict[str, Any], c: str) -> str:
        v = r[c] if c in COLUMNS else r.get(c)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        return fmt.get(c, "{}").format(v)

    lines = ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join([head, *lines])


STYLES = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"), ("X", "-."), ("*", ":")]


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Six panels against batch size, one line per stack (bench.png); matplotlib is imported only here.

    Every panel has its legend; each stack has its own marker and line style and a slight x offset (the
    batch-size axis is logarithmic: a fixed factor), so stacks with identical values (e.g. forward passes of
    dense and DyLLM) stay visible side by side. Accuracy is drawn on 0-100%, so a 2-point gap looks like one.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    panels = [("tokens_per_s", "tokens/s"), ("speedup", "speedup over dense"), ("forward_passes", "forward passes"),
              ("row_layers", "row-layers computed"), ("tokens_per_step", "tokens committed / step"),
              ("accuracy", "accuracy")]
    stacks = list(dict.fromkeys(r["stack"] for r in rows))
    jitter = {s: 2 ** (0.06 * (k - (len(stacks) - 1) / 2)) for k, s in enumerate(stacks)}  # x factor per stack
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, label) in zip(axes.flat, panels):
        for k, stack in enumerate(stacks):
            mine = [r for r in rows if r["stack"] == stack]
            marker, line = STYLES[k % len(STYLES)]
            ax.plot([r["batch_size"] * jitter[stack] for r in mine], [r[key] for r in mine], marker=marker,
                    linestyle=line, markersize=6, alpha=0.85, label=stack)
        ax.set_xscale("log", base=2)
        sizes = sorted({r["batch_size"] for r in rows})
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("batch size")
        ax.set_ylabel(label)
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if key == "speedup":
            ax.axhline(1.0, color="0.4", linewidth=0.8, zorder=0)
        if key == "accuracy":
            ax.set_ylim(0, 1.02)
            ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        else:  # counts and rates from zero, so ratios between stacks read as drawn; the top third for the legend
            top = max((r[key] for r in rows if r[key] is not None), default=1.0)
            ax.set_ylim(0, 1.5 * top if top > 0 else 1.0)
        ax.legend(fontsize=7, ncol=1 if len(stacks) <= 4 else 2, loc="lower center" if key == "accuracy" else
                  "upper center")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@hydra.main(config_path="../conf", config_name="bench", version_base=None)
def main(cfg: DictConfig) -> None:
    with clean_errors():  # config errors (checked before the model loads) and corrupt checkpoints: message only
        plan_bench(cfg, score_stacks(cfg))
        rows = run_bench(cfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "bench.json").write_text(json.dumps(rows, indent=2))
    table = markdown_table(rows)
    (out / "bench.md").write_text(table + "\n")
    title = f"{cfg.model.path}, {instantiate(cfg.unmasking)!r}, cache={cfg.cache.mode}"
    plot(rows, out / "bench.png", f"{title}, {cfg.n_examples} problems")
    print(table)
    print(f"\nwrote bench.json, bench.md, bench.png to {out}")


if __name__ == "__main__":
    main()
