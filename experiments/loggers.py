"""Experiment loggers for experiments.decode (`logger=none` default, `logger=wandb`).

The constructor only checks its arguments (it runs during config validation, before
any model loads, and must have no side effects); `start` opens the run. metrics.json
in the run directory is written by the app regardless of the logger, so a logger is
an extra sink, never the record.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

WANDB_MODES = ("online", "offline", "disabled")


class NullLogger:
    """Logs nothing: the interface every logger implements."""

    def start(self, config: Mapping[str, Any], run_dir: Path, name: str) -> None:
        """Open the run with the resolved config."""

    def log_step(self, metrics: Mapping[str, float]) -> None:
        """Running metrics after each evaluated batch."""

    def log_final(self, metrics: Mapping[str, Any], images: Mapping[str, Path]) -> None:
        """Final metrics and plots of the run."""

    def finish(self) -> None:
        """Close the run (flush files)."""


class WandbLogger(NullLogger):
    """Weights & Biases run per decode run; works offline (mode=offline or WANDB_MODE=offline)."""

    def __init__(self, project: str = "focuslib", entity: str | None = None, mode: str | None = None,
                 group: str | None = None, tags: Sequence[str] = (), dir: str | None = None) -> None:
        if mode is not None and mode not in WANDB_MODES:
            raise ValueError(f"mode must be one of {', '.join(WANDB_MODES)} or null, got {mode!r}")
        if not project:
            raise ValueError("project must be a non-empty name")
        self.project, self.entity, self.mode, self.group = project, entity, mode, group
        self.tags, self.dir = list(tags), dir
        self.run: Any = None
        self._step = 0

    def start(self, config: Mapping[str, Any], run_dir: Path, name: str) -> None:
        from focuslib.extras import require

        wandb = require("wandb", "logger=wandb")  # imported here: slow, and only needed when this logger is chosen

        directory = Path(self.dir) if self.dir else run_dir
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, group=self.group,
                              tags=self.tags, dir=str(directory), name=name, config=dict(config))

    def log_step(self, metrics: Mapping[str, float]) -> None:
        self._step += 1
        self.run.log({f"running/{k}": v for k, v in metrics.items()}, step=self._step)

    def log_final(self, metrics: Mapping[str, Any], images: Mapping[str, Path]) -> None:
        import wandb

        flat = flatten(metrics)
        self.run.summary.update(flat)
        self.run.log({**{f"final/{k}": v for k, v in flat.items()},
                      **{k: wandb.Image(str(p)) for k, p in images.items()}}, step=self._step + 1)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


def flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested metric dicts to 'per_task/chain_sum'-style scalar keys (NaN dropped: wandb charts reject it)."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[name] = value
    return out
