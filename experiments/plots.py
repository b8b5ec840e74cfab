"""Plots of decode runs (headless: the Agg backend, files only)."""
from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import matplotlib.ticker  # noqa: E402
from matplotlib.text import Text  # noqa: E402
from matplotlib.transforms import Bbox, offset_copy  # noqa: E402


def per_task_plot(metrics: Mapping[str, Any], path: Path, title: str) -> Path:
    """One run: accuracy and tokens committed per step of each sub-task, side by side."""
    tasks = list(metrics["per_task"])
    fig, (acc_ax, tps_ax) = plt.subplots(1, 2, figsize=(9, 3.4))
    acc_ax.bar(tasks, [metrics["per_task"][t] for t in tasks], color="tab:blue")
    acc_ax.set_ylim(0, 1)
    acc_ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))  # the title's scale: percent
    acc_ax.set_ylabel("exact-match accuracy")
    acc_ax.set_title(f"accuracy (all: {metrics['accuracy']:.1%})", fontsize=10)
    tps_ax.bar(tasks, [metrics["tokens_per_step_by_task"][t] for t in tasks], color="tab:orange")
    tps_ax.set_ylabel("tokens committed / step")
    tps_ax.set_title(f"tokens / step (all: {metrics['tokens_per_step']:.2f})", fontsize=10)
    for ax in (acc_ax, tps_ax):
        ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# Offsets (points) tried in turn for a point's number: beside it first, then further out (with an arrow).
_LABEL_OFFSETS = [(5, 3), (5, -11), (-5, 4), (-5, -12), (0, 12), (0, -20), (14, 14), (14, -22), (-14, 14),
                  (-14, -22), (26, 0), (-26, 0), (0, 26), (0, -34), (30, 24), (30, -32), (-30, 24), (-30, -32)]
KEY_CHARS = 62  # characters per line of the key beside the plot (monospace, 8 pt)
CLUSTER_PX = 9.0  # points closer than this (pixels) share one number label: "0,3"


def pareto_plot(speed: Sequence[float], accuracy: Sequence[float], on_front: Sequence[bool],
                labels: Sequence[str], path: Path, title: str, names: Sequence[str] | None = None,
                spread: Sequence[tuple[float, float] | None] | None = None,
                status: Sequence[str] | None = None) -> Path:
    """Accuracy against tokens/s, one numbered point per run; the Pareto front drawn as a red staircase.

    Points carry short numbers (`names`, default 0..n-1: the report's run column) and a key beside
    the plot gives each number's label, so nearby points never overprint each other: points that
    fall on the same spot share one label ("0,3"), and a label that would cover another moves out
    with a leader line. spread[i] = (lo, hi): the tokens/s range of a run timed more than once,
    drawn as a horizontal bar |---|. status[i] (report's pareto_noise): a run whose place on the
    front depends on timing noise ("yes, within noise", "within noise") gets an orange ring.
    """
    n = len(speed)
    names = [str(i) for i in range(n)] if names is None else [str(x) for x in names]
    width = max(map(len, names), default=1)
    key = ["run  (* = Pareto front)"]
    for name, f, label in zip(names, on_front, labels):  # wrapped to the key's width, continuation indented
        key.extend(textwrap.wrap(label, KEY_CHARS - width - 3, initial_indent=f"{name:>{width}} {'*' if f else ' '} ",
                                 subsequent_indent=" " * (width + 3), break_on_hyphens=False) or [name])
    fig = plt.figure(figsize=(11.5, max(5.0, 0.155 * (len(key) + 7) + 1.0)))
    grid = fig.add_gridspec(1, 2, width_ratios=[3, 2], wspace=0.05)
    ax, key_ax = fig.add_subplot(grid[0]), fig.add_subplot(grid[1])
    handles = [ax.scatter(speed, accuracy, color="tab:gray", s=28, zorder=3, label="run")]
    front = sorted((s, a) for s, a, f in zip(speed, accuracy, on_front) if f)
    if front:
        xs, ys = zip(*front)
        ax.step(xs, ys, where="post", color="tab:red", alpha=0.6, zorder=1)
        handles.append(ax.scatter(xs, ys, color="tab:red", s=60, zorder=4, label="Pareto front"))
    if spread is not None and any(r is not None for r in spread):
        handles.append(_range_bars(fig, ax, [(r[0], r[1], a) for r, a in zip(spread, accuracy) if r is not None]))
    noisy = [i for i in range(n) if status is not None and status[i] not in ("", "yes")]  # "yes": surely on it
    if noisy:
        handles.append(ax.scatter([speed[i] for i in noisy], [accuracy[i] for i in noisy], s=150,
                                  facecolors="none", edgecolors="tab:orange", linewidths=1.5, zorder=5,
                                  label="on / off the front within timing noise"))
    ax.set_xlabel("tokens / s")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    _number_points(fig, ax, speed, accuracy, names, ringed=set(noisy))
    # the key: number -> label, front runs marked
    key_ax.axis("off")
    key_ax.text(0.0, 1.0, "\n".join(key), transform=key_ax.transAxes, va="top",
                ha="left", family="monospace", fontsize=8)
    key_ax.legend(handles=handles, loc="lower left", fontsize=8, frameon=False)
    fig.subplots_adjust(left=0.07, right=0.99, bottom=0.1, top=0.92)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _range_bars(fig: Any, ax: Any, bars: Sequence[tuple[float, float, float]]) -> Any:
    """One horizontal bar |---| per distinct (lo, hi, accuracy); bars that would overlap at one accuracy are
    staggered a few pixels apart, so each range stays readable. Returns a legend handle."""
    levels: dict[float, list[float]] = {}  # accuracy -> right end of the last bar on each level
    line = None
    for lo, hi, acc in sorted(set(bars)):
        ends = levels.setdefault(acc, [])
        level = next((k for k, end in enumerate(ends) if end < lo), len(ends))
        ends[level:level + 1] = [hi]
        dy = (0, -5, 5, -10, 10)[level % 5]
        ax.update_datalim([(lo, acc), (hi, acc)])  # an offset transform does not count for autoscaling
        line, = ax.plot([lo, hi], [acc, acc], color="tab:blue", linewidth=1.2, marker="|", markersize=9, zorder=2,
                        transform=offset_copy(ax.transData, fig=fig, y=dy, units="dots"),
                        label="tokens/s range of repeated timings")
    return line


def _number_points(fig: Any, ax: Any, speed: Sequence[float], accuracy: Sequence[float],
                   names: Sequence[str], ringed: set[int] = frozenset()) -> None:
    """Label each point (or each cluster of coincident points) with its number, avoiding overlaps."""
    fig.canvas.draw()  # fixes the limits, so data -> pixel transforms are final
    renderer = fig.canvas.get_renderer()
    finite = [i for i in range(len(speed)) if math.isfinite(speed[i]) and math.isfinite(accuracy[i])]
    px = {i: ax.transData.transform((speed[i], accuracy[i])) for i in finite}
    clusters: list[list[int]] = []
    for i in finite:
        for c in clusters:
            if math.dist(px[c[0]], px[i]) < CLUSTER_PX:
                c.append(i)
                break
        else:
            clusters.append([i])
    half = {i: 9 if i in ringed else 4 for i in px}  # pixels: a marker, or the orange ring around it
    taken = [Bbox.from_extents(x - half[i], y - half[i], x + half[i], y + half[i]) for i, (x, y) in px.items()]
    area = ax.get_window_extent(renderer)
    for c in clusters:
        text = ",".join(names[i] for i in c)
        xy = (speed[c[0]], accuracy[c[0]])
        note = None
        for dx, dy in _LABEL_OFFSETS:
            far = abs(dx) > 8 or abs(dy) > 14
            if note is not None:
                note.remove()
            note = ax.annotate(text, xy, textcoords="offset points", xytext=(dx, dy), fontsize=8,
                               ha="left" if dx >= 0 else "right", color="black", zorder=6,
                               arrowprops={"arrowstyle": "-", "color": "0.5", "lw": 0.6} if far else None)
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer)  # the text alone (an Annotation's includes its arrow)
            inside = area.x0 <= box.x0 and box.x1 <= area.x1 and area.y0 <= box.y0 and box.y1 <= area.y1
            if inside and not any(box.overlaps(t) for t in taken):
                break
        taken.append(Text.get_window_extent(note, renderer))
