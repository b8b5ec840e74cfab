"""Tabulate a sweep: one row per run, accuracy against tokens/s with the Pareto front.

    python -m experiments.report multirun/decode/2026-11-23_18-30-00      # writes report.md, report.csv, pareto.png there
    python -m experiments.report DIR --out somewhere/

Reads every metrics.json under DIR (written by experiments.decode, one per run; the
layout of the launcher's run directories does not matter). Columns: the run's
directory, the overrides that differ between runs (key=value from Hydra's task
overrides), then the metrics. A run is on the Pareto front when no other run is at
least as fast and at least as accurate, and strictly better in one of the two.
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from experiments.plots import pareto_plot

METRICS = ("accuracy", "tokens_per_s", "tokens_per_step", "forward_passes", "row_layers", "n_examples", "wall_time_s")


def load_runs(root: Path) -> pd.DataFrame:
    """One row per metrics.json under root: run dir, override columns, metrics; sorted by run dir."""
    rows = []
    for path in sorted(root.rglob("metrics.json"), key=lambda p: _natural_key(p.parent.relative_to(root))):
        record = json.loads(path.read_text())
        overrides = dict(_split_override(o) for o in record.get("overrides", []))
        rows.append({"run": str(path.parent.relative_to(root)) or ".", **overrides,
                     **{m: record.get(m, math.nan) for m in METRICS}})
    if not rows:
        raise FileNotFoundError(f"no metrics.json under {root}: is it the directory of a decode sweep?")
    table = pd.DataFrame(rows)
    override_cols = [c for c in table.columns if c not in ("run", *METRICS)]
    varying = [c for c in override_cols if table[c].astype(str).nunique() > 1]
    table = table[["run", *varying, *METRICS]]
    table["pareto"] = pareto_front(table["tokens_per_s"].tolist(), table["accuracy"].tolist())
    return table


def _split_override(override: str) -> tuple[str, str]:
    """'+budget.alpha=1.5' -> ('budget.alpha', '1.5'): Hydra's add/delete prefixes do not make a new column."""
    key, _, value = override.lstrip("+~").partition("=")
    return key, value


def _natural_key(path: Path) -> list[Any]:
    """Sort '2' before '10' (multirun job numbers)."""
    return [int(p) if p.isdigit() else p for p in path.parts]


def pareto_front(speed: Sequence[float], accuracy: Sequence[float]) -> list[bool]:
    """True for runs that no other run dominates (higher is better on both axes; NaN never on the front)."""
    points = list(zip(speed, accuracy))

    def dominated(i: int) -> bool:
        s, a = points[i]
        return any(s2 >= s and a2 >= a and (s2 > s or a2 > a) for j, (s2, a2) in enumerate(points) if j != i)

    return [not (math.isnan(s) or math.isnan(a)) and not dominated(i) for i, (s, a) in enumerate(points)]


def markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency); front runs in bold."""
    fmt = {"accuracy": "{:.1%}", "tokens_per_s": "{:.1f}", "tokens_per_step": "{:.2f}", "wall_time_s": "{:.1f}"}
    cols = [c for c in table.columns if c != "pareto"]
    lines = ["| " + " | ".join(cols) + " | Pareto |", "|" + "---|" * (len(cols) + 1)]
    for _, row in table.iterrows():
        cells = [fmt.get(c, "{}").format(row[c]) for c in cols]
        lines.append("| " + " | ".join(cells) + f" | {'**yes**' if row['pareto'] else ''} |")
    return "\n".join(lines) + "\n"


def write_report(root: Path, out: Path | None = None) -> dict[str, Path]:
    """Write report.md, report.csv and pareto.png into `out` (default: root); returns their paths."""
    out = out or root
    out.mkdir(parents=True, exist_ok=True)
    table = load_runs(root)
    paths = {"md": out / "report.md", "csv": out / "report.csv", "png": out / "pareto.png"}
    table.to_csv(paths["csv"], index=False)
    paths["md"].write_text(f"# Sweep report: {root}\n\n{len(table)} runs; Pareto front over (tokens/s, accuracy).\n\n"
                           + markdown(table))
    label_cols = [c for c in table.columns if c not in ("run", "pareto", *METRICS)]
    labels = [" ".join(f"{c}={row[c]}" for c in label_cols) or row["run"] for _, row in table.iterrows()]
    pareto_plot(table["tokens_per_s"].tolist(), table["accuracy"].tolist(), table["pareto"].tolist(), labels,
                paths["png"], title=f"{root.name}: accuracy vs tokens/s ({len(table)} runs)")
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a multirun directory (or any directory holding metrics.json files)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: DIR)")
    args = parser.parse_args(argv)
    paths = write_report(args.dir, args.out)
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
