"""focuslib: composable decoding for diffusion LLMs (unmasking x eviction x budget policies).

The public names below are imported on first use (PEP 562), so importing a light module such
as `focuslib.contract` (what policies depend on) does not pull in the decoder.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "DecodeStats": "focuslib.decoder", "DiffusionDecoder": "focuslib.decoder", "GenerationOutput": "focuslib.decoder",
    "EvalResult": "focuslib.evaluate", "evaluate": "focuslib.evaluate",
    "bundled_checkpoints": "focuslib.loading", "load_model": "focuslib.loading", "save_checkpoint": "focuslib.loading",
    "ModelConfig": "focuslib.model", "MoEConfig": "focuslib.model", "Transformer": "focuslib.model",
    "load_trace": "focuslib.trace", "save_trace": "focuslib.trace",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from focuslib.decoder import DecodeStats, DiffusionDecoder, GenerationOutput
    from focuslib.evaluate import EvalResult, evaluate
    from focuslib.loading import bundled_checkpoints, load_model, save_checkpoint
    from focuslib.model import ModelConfig, MoEConfig, Transformer
    from focuslib.trace import load_trace, save_trace


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'focuslib' has no attribute {name!r}")
    module = importlib.import_module(_EXPORTS[name])
    # bind every export of that module now: importing focuslib.evaluate also sets the package attribute
    # `evaluate` to the submodule, which must not shadow the function of the same name
    globals().update({n: getattr(module, n) for n, m in _EXPORTS.items() if m == module.__name__})
    return globals()[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
