"""Tabulate a sweep: one row per run, accuracy against tokens/s with the Pareto front.

    python -m experiments.report multirun/decode/2026-11-23_18-30-00      # writes report.md, report.csv, pareto.png there
    python -m experiments.report DIR --out somewhere/

Reads every metrics.json under DIR (written by experiments.decode, one per run; the
layout of the launcher's run directories does not matter). Columns: the run's
directory, the overrides that differ between runs (key=value from Hydra's task
overrides; a budget.* cell is blank for a run whose eviction uses no budget), then the
metrics. A run is on the Pareto front when no other run is at least as fast and at least
as accurate, and strictly better in one of the two (repeats of one configuration do not
compete: they differ by timing noise alone).

Timing noise: tokens/s is the only noisy metric (decoding is deterministic), so the front
is also judged with a tokens/s interval per run. A configuration timed more than once
(decode's `repeats=N`, or several runs that differ only in settings their eviction does
not read, e.g. budget.alpha without eviction) gets the [min, max] of its timings, shown as
error bars in pareto.png; X = the largest (max - min) / median of those is the measured
noise. A run timed once gets tokens/s x [1 - X/2, 1 + X/2], with X = --noise (default
10%, an assumption, said so in report.md) when nothing was timed twice. Two runs whose
intervals overlap are within noise of each other (report.md lists them), and the Pareto
column says whether a run's place on the front depends on that noise.

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
TIMING = ("tokens_per_s_lo", "tokens_per_s_hi", "timings")  # the tokens/s interval and how many timings measured it
DEFAULT_NOISE = 0.10  # relative tokens/s spread assumed when no configuration of the report was timed twice
FRONT, FRONT_NOISY, NEAR_FRONT = "yes", "yes, within noise", "within noise"  # pareto_noise values ("" = off)


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
        if uses_budget(record, overrides) is False:  # budget.alpha etc. do nothing in this run: blank, not a value
            overrides = {k: ("" if _is_budget_key(k) else v) for k, v in overrides.items()}
        metrics = {m: record.get(m, math.nan) for m in METRICS}
        runs = record.get("tokens_per_s_runs")
        timings = [float(t) for t in runs] if isinstance(runs, list) and runs else [metrics["tokens_per_s"]]
        rows.append({"run": str(path.parent.relative_to(root)) or ".", **overrides, **metrics, "_timings": timings})
    failed = _failed_points(root)
    table = None
    if rows:
        table = pd.DataFrame(rows)
        override_cols = [c for c in table.columns if c not in ("run", "_timings", *METRICS)]
        table[override_cols] = table[override_cols].fillna("")  # an override a run does not have: blank
        config = (table[override_cols].astype(str).agg("\x1f".join, axis=1) if override_cols
                  else pd.Series([""] * len(table)))
        varying = [c for c in override_cols if table[c].astype(str).nunique() > 1]
        table["_config"] = config + "\x1f" + table["accuracy"].astype(str)  # repeats of a config agree on accuracy
        table = table[["run", *varying, *METRICS, "_timings", "_config"]]
        table["pareto"] = pareto_front(table["tokens_per_s"].tolist(), table["accuracy"].tolist(),
                                       table["_config"].tolist())
    return Runs(table, corrupt, failed)


def _is_budget_key(key: str) -> bool:
    return key == "budget" or key.startswith("budget.")


def uses_budget(record: dict[str, Any], overrides: dict[str, str]) -> bool | None:
    """Whether the run's eviction reads a budget (some policy has `uses_budget`), from the resolved config in
    metrics.json; None when it cannot tell (no config, a policy that no longer builds)."""
    config = record.get("config")
    if not isinstance(config, dict) or "eviction" not in config:
        return False if overrides.get("eviction") == "none" else None
    if not config["eviction"]:
        return False  # eviction=none: dense
    try:
        from hydra.utils import instantiate

        from focuslib.eviction import as_policy_list

        return any(getattr(p, "uses_budget", False) for p in as_policy_list(instantiate(config["eviction"])))
    except Exception:
        return None


def load_runs(root: Path, noise: float = DEFAULT_NOISE) -> pd.DataFrame:
    """One row per readable metrics.json under root: run dir, override columns, metrics, pareto, then the timing
    interval (tokens_per_s_lo/hi, timings) and pareto_noise (see add_noise); sorted by run dir."""
    table, _ = add_noise(_table(scan_runs(root), root), noise)
    return table.drop(columns=["_timings", "_config"])


@dataclass
class Noise:
    """How noisy the report's tokens/s is: measured from repeated timings, or assumed."""

    spread: float  # X: relative tokens/s spread, (max - min) / median
    measured: int  # configurations timed more than once (0: X is the assumed default)
    ties: list[tuple[int, int]]  # row positions of runs whose tokens/s intervals overlap


def add_noise(table: pd.DataFrame, noise: float = DEFAULT_NOISE) -> tuple[pd.DataFrame, Noise]:
    """Add the tokens/s interval of every run and its noise-aware Pareto status (module docstring).

    Runs with the same overrides (after blanking settings their eviction does not read) and the same
    accuracy are one configuration: their timings pool. Returns the table with TIMING columns and pareto_noise
    (FRONT: on the front whatever the noise; FRONT_NOISY: on the measured front, but a run within
    noise could dominate it; NEAR_FRONT: off the measured front only by a margin within noise; "").
    """
    table = table.copy()
    pooled: dict[str, list[float]] = {}
    for config, timings in zip(table["_config"], table["_timings"]):
        pooled.setdefault(config, []).extend(t for t in timings if not math.isnan(t))
    spreads = [(max(t) - min(t)) / _median(t) for t in pooled.values() if len(t) > 1 and _median(t) > 0]
    spread = max(spreads) if spreads else noise
    lo, hi, count = [], [], []
    for config, speed in zip(table["_config"], table["tokens_per_s"]):
        timings = pooled[config]
        low, high = (min(timings), max(timings)) if len(timings) > 1 else (speed * (1 - spread / 2),
                                                                           speed * (1 + spread / 2))
        lo.append(low)
        hi.append(high)
        count.append(len(timings))
    table["tokens_per_s_lo"], table["tokens_per_s_hi"], table["timings"] = lo, hi, count
    table["pareto_noise"] = noisy_front(lo, hi, table["accuracy"].tolist(), table["pareto"].tolist(),
                                        table["_config"].tolist())
    ties = [(i, j) for i in range(len(table)) for j in range(i + 1, len(table))
            if lo[i] <= hi[j] and lo[j] <= hi[i]]
    return table, Noise(spread=spread, measured=len(spreads), ties=ties)


def _median(values: Sequence[float]) -> float:
    v = sorted(values)
    return (v[(len(v) - 1) // 2] + v[len(v) // 2]) / 2


def noisy_front(lo: Sequence[float], hi: Sequence[float], accuracy: Sequence[float],
                on_front: Sequence[bool], groups: Sequence[Any] | None = None) -> list[str]:
    """Pareto status of each run when its tokens/s may lie anywhere in [lo, hi] (accuracy is exact).

    j surely dominates i: at least as accurate and faster at every speed the intervals allow (and strictly
    better in one). j may dominate i: some speeds in the intervals make it dominate. Runs of one group
    (repeats of a configuration) never dominate each other.
    """
    n = len(lo)
    groups = list(range(n)) if groups is None else list(groups)
    others = [[j for j in range(n) if j != i and groups[j] != groups[i]] for i in range(n)]

    def surely(j: int, i: int) -> bool:
        return accuracy[j] >= accuracy[i] and lo[j] >= hi[i] and (accuracy[j] > accuracy[i] or lo[j] > hi[i])

    def maybe(j: int, i: int) -> bool:
        return accuracy[j] >= accuracy[i] and hi[j] >= lo[i] and (accuracy[j] > accuracy[i] or hi[j] > lo[i])

    out = []
    for i in range(n):
        if any(math.isnan(x) for x in (lo[i], hi[i], accuracy[i])):
            out.append("")
        elif not any(maybe(j, i) for j in others[i]):
            out.append(FRONT)
        elif on_front[i]:
            out.append(FRONT_NOISY)
        elif not any(surely(j, i) for j in others[i]):
            out.append(NEAR_FRONT)
        else:
            out.append("")
    return out


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


def pareto_front(speed: Sequence[float], accuracy: Sequence[float],
                 groups: Sequence[Any] | None = None) -> list[bool]:
    """True for runs that no other run dominates (higher is better on both axes; NaN never on the front).

    groups: runs with the same group are repeats of one configuration and never dominate each other
    (their tokens/s differ by timing noise alone)."""
    points = list(zip(speed, accuracy))
    groups = list(range(len(points))) if groups is None else list(groups)

    def dominated(i: int) -> bool:
        s, a = points[i]
        return any(s2 >= s and a2 >= a and (s2 > s or a2 > a)
                   for j, (s2, a2) in enumerate(points) if j != i and groups[j] != groups[i])

    return [not (math.isnan(s) or math.isnan(a)) and not dominated(i) for i, (s, a) in enumerate(points)]


def markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no tabulate dependency); front runs in bold.

    With add_noise's columns: tokens/s measured more than once shows its [min, max], and the Pareto
    column says whether the run's place depends on timing noise.
    """
    fmt = {"accuracy": "{:.1%}", "tokens_per_s": "{:.1f}", "tokens_per_step": "{:.2f}", "wall_time_s": "{:.1f}"}
    hidden = ("pareto", "pareto_noise", "_timings", "_config", *TIMING)
    cols = [c for c in table.columns if c not in hidden]
    lines = ["| " + " | ".join(cols) + " | Pareto |", "|" + "---|" * (len(cols) + 1)]
    for _, row in table.iterrows():
        cells = [fmt.get(c, "{}").format(row[c]) for c in cols]
        if "timings" in table.columns and row["timings"] > 1:
            i = cols.index("tokens_per_s")
            cells[i] += f" [{row['tokens_per_s_lo']:.1f}, {row['tokens_per_s_hi']:.1f}]"
        status = row["pareto_noise"] if "pareto_noise" in table.columns else ("yes" if row["pareto"] else "")
        lines.append("| " + " | ".join(cells) + f" | {'**yes**' if status == FRONT else status} |")
    return "\n".join(lines) + "\n"


def noise_notes(table: pd.DataFrame, noise: Noise) -> str:
    """report.md's paragraph on timing noise: what X is and where it comes from, and which runs tie."""
    x = f"{noise.spread:.0%}"
    if noise.measured:
        were = "configuration was" if noise.measured == 1 else "configurations were"
        source = (f"Timing noise, measured: {noise.measured} {were} timed more than once (decode's "
                  "`repeats=N`, or runs that differ only in settings their eviction does not read); "
                  f"{'its' if noise.measured == 1 else 'their'} tokens/s spread by up to X = {x} ((max - min) / "
                  "median; the [min, max] is shown after tokens_per_s and as error bars in pareto.png). Runs timed "
                  "once count as tokens/s x [1 - X/2, 1 + X/2].")
    else:
        source = (f"Timing noise, assumed: no configuration was timed twice, so tokens/s within X = {x} of each other "
                  "(overlapping intervals tokens/s x [1 - X/2, 1 + X/2]) count as ties. X is a stated rule, not a "
                  "measurement (`--noise` sets it); run decode with `repeats=3` to measure it.")
    label = [str(r) for r in table["run"]]
    ties = ", ".join(f"{label[i]} ~ {label[j]}" for i, j in noise.ties) or "none"
    legend = (f"Pareto: **yes** = on the front whatever the timing noise; \"{FRONT_NOISY}\" = on the measured front, "
              f"but a run within noise could dominate it; \"{NEAR_FRONT}\" = off the measured front only by a "
              "tokens/s margin within noise.")
    blank = ""
    if any(_is_budget_key(c) for c in table.columns):
        blank = " A blank budget.* cell: that run's eviction uses no budget (the setting does nothing there)."
    return f"{source}\n\nRuns within noise of each other (tokens/s): {ties}.\n\n{legend}{blank}\n"


def write_report(root: Path, out: Path | None = None, noise: float = DEFAULT_NOISE) -> dict[str, Path]:
    """Write report.md, report.csv and pareto.png into `out` (default: root); returns their paths.

    noise: the relative tokens/s spread assumed when no configuration was timed twice (add_noise)."""
    out = out or root
    runs = scan_runs(root)
    table, problems = _table(runs, root), runs.problems()
    table, measured = add_noise(table, noise)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "report.md", "csv": out / "report.csv", "png": out / "pareto.png"}
    table.drop(columns=["_timings", "_config"]).to_csv(paths["csv"], index=False)
    left_out = ""
    if problems:
        left_out = (f"\n## {len(problems)} failed or missing points (not in the table)\n\n"
                    + "".join(f"- {p}\n" for p in problems))
    paths["md"].write_text(f"# Sweep report: {root}\n\n{len(table)} runs; Pareto front over (tokens/s, accuracy)."
                           f"{f' {len(problems)} failed or missing points are listed below.' if problems else ''}"
                           "\n\n" + markdown(table) + "\n" + noise_notes(table, measured) + left_out)
    label_cols = [c for c in table.columns if c not in ("run", "pareto", "pareto_noise", "_timings", "_config",
                                                        *METRICS, *TIMING)]
    labels = [" ".join(f"{c}={row[c]}" for c in label_cols if str(row[c]) != "") or "(defaults)"
              for _, row in table.iterrows()]
    spread = [(lo, hi) if n > 1 else None
              for lo, hi, n in zip(table["tokens_per_s_lo"], table["tokens_per_s_hi"], table["timings"])]
    pareto_plot(table["tokens_per_s"].tolist(), table["accuracy"].tolist(), table["pareto"].tolist(), labels,
                paths["png"], title=f"{root.name}: accuracy vs tokens/s ({len(table)} runs)",
                names=[str(r) for r in table["run"]], spread=spread, status=table["pareto_noise"].tolist())
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a multirun directory (or any directory holding metrics.json files)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: DIR)")
    parser.add_argument("--noise", type=float, default=DEFAULT_NOISE,
                        help="relative tokens/s spread counted as timing noise when no configuration was timed twice "
                             f"(default {DEFAULT_NOISE}); a measured spread replaces it")
    args = parser.parse_args(argv)
    if not 0 <= args.noise < 2:
        parser.error(f"--noise must lie in [0, 2), got {args.noise}")
    try:
        paths = write_report(args.dir, args.out, args.noise)
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
