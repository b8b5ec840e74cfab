"""Tabulate a sweep: one row per run, accuracy against tokens/s with the Pareto front.

    python -m experiments.report multirun/decode/2026-11-23_18-30-00      # writes report.md, report.csv, pareto.png there
    python -m experiments.report DIR --out somewhere/

Reads every metrics.json under DIR (written by experiments.decode, one per run; the
layout of the launcher's run directories does not matter). Columns: the run's
directory, the overrides that differ between runs (key=value from Hydra's task
overrides), then the metrics. A run is on the Pareto front when no other run is at
least as fast and at least as accurate, and strictly better in one of the two.

Nothing is dropped silently: a metrics.json that cannot be read is named and skipped, and
the points of a -m sweep (a directory with Hydra's multirun.yaml, one numbered run
directory per point) that have no metrics.json -- failed, unfinished or never started --
are listed under the table, in report.md and on stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from .plots import pareto_plot

METRICS = ("accuracy", "tokens_per_s", "tokens_per_step", "forward_passes", "row_layers", "n_examples", "wall_time_s")


@dataclass
class Runs:
    """What a report directory holds: the readable runs, and every point that is not in the table."""

    table: pd.DataFrame | None  # one row per readable metrics.json (None when there is none)
    corrupt: dict[str, str] = field(default_factory=dict)  # metrics.json path -> why it could not be read
    failed: dict[str, str] = field(default_factory=dict)  # sweep point (run dir) -> what is missing

    def problems(self) -> list[str]:
        """One line per point left out of the table."""
        return ([f"{path}: unreadable metrics.json ({why})" for path, why in self.corrupt.items()]
                + [f"{run}: {why}" for run, why in self.failed.items()])


def scan_runs(root: Path) -> Runs:
    """Read every metrics.json under root; name the unreadable ones and the sweep points without one."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    rows, corrupt = [], {}
    for path in sorted(root.rglob("metrics.json"), key=lambda p: _natural_key(p.parent.relative_to(root))):
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError(f"a JSON object is expected, got {type(record).__name__}")
            overrides = dict(_split_override(str(o)) for o in record.get("overrides", []))
        except (OSError, UnicodeDecodeError, ValueError, TypeError) as err:  # JSONDecodeError is a ValueError
            corrupt[str(path)] = str(err)
            continue
        rows.append({"run": str(path.parent.relative_to(root)) or ".", **overrides,
                     **{m: record.get(m, math.nan) for m in METRICS}})
    failed = _failed_points(root)
    table = None
    if rows:
        table = pd.DataFrame(rows)
        override_cols = [c for c in table.columns if c not in ("run", *METRICS)]
        varying = [c for c in override_cols if table[c].astype(str).nunique() > 1]
        table = table[["run", *varying, *METRICS]]
        table["pareto"] = pareto_front(table["tokens_per_s"].tolist(), table["accuracy"].tolist())
    return Runs(table, corrupt, failed)


def load_runs(root: Path) -> pd.DataFrame:
    """One row per readable metrics.json under root: run dir, override columns, metrics; sorted by run dir."""
    return _table(scan_runs(root), root)


def _table(runs: Runs, root: Path) -> pd.DataFrame:
    if runs.table is None:
        if runs.corrupt:
            raise ValueError(f"no readable metrics.json under {root}; unreadable: "
                             + "; ".join(f"{p} ({why})" for p, why in runs.corrupt.items()))
        raise FileNotFoundError(f"no metrics.json under {root}: is it the directory of a decode sweep?")
    return runs.table


def _failed_points(root: Path) -> dict[str, str]:
    """Run directories of sweep points without a metrics.json, and sweep points with no run directory.

    Sweeps are the directories under root holding Hydra's multirun.yaml (and root itself when it
    has numbered run directories); their points are the numbered subdirectories, and as many as
    the basic sweeper's overrides expand to when multirun.yaml says.
    """
    sweeps = {p.parent for p in root.rglob("multirun.yaml")}
    if any(p.is_dir() and p.name.isdigit() for p in root.iterdir()):
        sweeps.add(root)
    out = {}
    for sweep in sorted(sweeps):
        points = {int(p.name): p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit()}
        expected = max(_sweep_size(sweep), max(points, default=-1) + 1)
        for num in range(expected):
            name = str((sweep / str(num)).relative_to(root))
            if num not in points:
                out[name] = "no run directory: the point was never started (the sweep stopped early?)"
            elif not (points[num] / "metrics.json").is_file():
                label = _point_overrides(points[num])
                out[name] = f"no metrics.json: the run failed or did not finish{label}"
    return out


def _sweep_size(sweep: Path) -> int:
    """Points of a basic-sweeper sweep from its multirun.yaml (product of the sweep overrides); 0 if unknown."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        from omegaconf import OmegaConf

        hydra = OmegaConf.load(sweep / "multirun.yaml").hydra
        if not str(hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return 0
        overrides = list(hydra.overrides.task) + [f"{k}={v}" for k, v in (hydra.sweeper.get("params") or {}).items()]
        size = 1
        for o in OverridesParser.create().parse_overrides(overrides):
            if o.is_sweep_override():
                size *= len(list(o.sweep_string_iterator()))
        return size
    except Exception:  # no multirun.yaml, another sweeper, or an override we cannot expand
        return 0


def _point_overrides(run_dir: Path) -> str:
    """' (key=value ...)' from the run's .hydra/overrides.yaml, or ''."""
    try:
        from omegaconf import OmegaConf

        return " (" + " ".join(map(str, OmegaConf.load(run_dir / ".hydra" / "overrides.yaml"))) + ")"
    except Exception:
        return ""


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
    runs = scan_runs(root)
    table, problems = _table(runs, root), runs.problems()
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "csv": out / "report.csv", "png": out / "pareto.png"}
    table.to_csv(paths["csv"], index=False)
    left_out = ""
    if problems:
        left_out = (f"\n## {len(problems)} failed or missing points (not in the table)\n\n"
                    + "".join(f"- {p}\n" for p in problems))
    paths["md"].write_text(f"# Sweep report: {root}\n\n{len(table)} runs; Pareto front over (tokens/s, accuracy)."
                           f"{f' {len(problems)} failed or missing points are listed below.' if problems else ''}"
                           "\n\n" + markdown(table) + left_out)
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
    try:
        paths = write_report(args.dir, args.out)
        problems = scan_runs(args.dir).problems()
    except (FileNotFoundError, ValueError) as err:  # nothing to report: the message alone, no traceback
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    print(paths["md"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)


if __name__ == "__main__":
    main()
