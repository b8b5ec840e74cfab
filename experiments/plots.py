"""Plots of decode runs (headless: the Agg backend, files only)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker  # noqa: E402


def per_task_plot(metrics: Mapping[str, Any], path: Path, title: str) -> Path:
    """One run: accuracy and tokens committed per step of each sub-task, side by side."""
    tasks = list(metrics["per_task"])
    fig, (acc_ax, tps_ax) = plt.subplots(1, 2, figsize=(9, 3.2))
    acc_ax.bar(tasks, [metrics["per_task"][t] for t in tasks], color="tab:blue")
    acc_ax.set_ylim(0, 1)
    acc_ax.set_title(f"accuracy (all: {metrics['accuracy']:.1%})", fontsize=10)
    tps_ax.bar(tasks, [metrics["tokens_per_step_by_task"][t] for t in tasks], color="tab:orange")
    tps_ax.set_title(f"tokens / step (all: {metrics['tokens_per_step']:.2f})", fontsize=10)
    for ax in (acc_ax, tps_ax):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def pareto_plot(speed: Sequence[float], accuracy: Sequence[float], on_front: Sequence[bool],
                labels: Sequence[str], path: Path, title: str) -> Path:
    """Accuracy against tokens/s, one point per run; the Pareto front drawn as a red staircase."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    ax.scatter(speed, accuracy, color="tab:gray", zorder=2, label="run")
    front = sorted((s, a) for s, a, f in zip(speed, accuracy, on_front) if f)
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="tab:red", alpha=0.6, zorder=1)
        ax.scatter(xs, ys, color="tab:red", s=70, zorder=3, label="Pareto front")
    for s, a, text in zip(speed, accuracy, labels):
        ax.annotate(text, (s, a), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel("tokens / s")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.25, y=0.15)  # room for the labels
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
