"""Kernels for FOCUS and DyLLM decoding: PyTorch references plus Triton versions.

Every kernel family lives in one module (``importance``, ``selection``,
``compaction``, ``dyllm``) holding a ``*_reference`` PyTorch function (the CPU path
and the test oracle), its ``@triton.jit`` kernel(s), and one public dispatch
function. The dispatch runs Triton when the tensors are on CUDA, or whenever the
environment variable ``FOCUSLIB_FORCE_TRITON=1`` is set (tests run it that way on
CPU tensors under ``TRITON_INTERPRET=1``); otherwise it runs the reference.

Triton is imported guarded so that ``import focuslib.kernels`` works without it:
``TRITON_AVAILABLE`` says whether it imported and ``TRITON_IMPORT_ERROR`` keeps the
reason when it did not. Without Triton, CUDA tensors fall back to the reference (with
a one-time warning), but a *forced* Triton call raises instead of quietly using the
reference, so a test that means to exercise a kernel cannot pass without running it.

Note on the interpreter: Triton decides between compiled and interpreted kernels when
``@triton.jit`` runs, i.e. when these modules are imported. ``TRITON_INTERPRET=1``
must therefore be in the environment before ``kernels`` is first imported.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

# --- shared helpers; defined before the submodule imports below use them -------------

TRITON_IMPORT_ERROR: str | None = None
try:  # guarded: a CPU-only install without triton must still import the package
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    TRITON_AVAILABLE = True
except Exception as exc:  # noqa: BLE001 - any import failure means "no triton"
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]
    TRITON_AVAILABLE = False
    TRITON_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

FORCE_ENV = "FOCUSLIB_FORCE_TRITON"
_warned_fallback = False


def triton_forced() -> bool:
    """True when ``FOCUSLIB_FORCE_TRITON=1`` (read at call time, so tests can flip it)."""
    return os.environ.get(FORCE_ENV, "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Decide the dispatch path for a kernel call on ``tensors``.

    Forced -> Triton, raising if Triton is missing (never a silent fallback).
    CUDA tensors -> Triton when available, else the reference with one warning.
    Anything else -> the reference.
    """
    if triton_forced():
        if not TRITON_AVAILABLE:
            raise RuntimeError(
                f"{FORCE_ENV}=1 but triton failed to import ({TRITON_IMPORT_ERROR})"
            )
        return True
    if not any(t.is_cuda for t in tensors):
        return False
    if not TRITON_AVAILABLE:
        global _warned_fallback
        if not _warned_fallback:
            warnings.warn(
                f"triton unavailable ({TRITON_IMPORT_ERROR}); kernels use PyTorch references",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_fallback = True
        return False
    return True


def check_launchable(kernel: Any, tensor: torch.Tensor) -> None:
    """Fail with a clear message when a compiled kernel is about to get CPU tensors.

    Compiled Triton kernels need a GPU; on CPU tensors they only run when they were
    created in interpreter mode (``TRITON_INTERPRET=1`` before importing ``kernels``).
    Without this check the user gets an obscure driver error instead.
    """
    if tensor.is_cuda:
        return
    if type(kernel).__name__ != "InterpretedFunction":
        raise RuntimeError(
            "Triton kernel called on CPU tensors but it was not built in interpreter "
            "mode: set TRITON_INTERPRET=1 before the first `import focuslib.kernels`"
        )


def next_pow2(n: int, minimum: int = 1) -> int:
    """Smallest power of two >= max(n, minimum) (Triton block sizes must be 2^k)."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


# --- public API ----------------------------------------------------------------------

from .compaction import (  # noqa: E402
    compact_rows,
    compact_rows_reference,
    gather_rows,
    gather_rows_reference,
)
from .dyllm import (  # noqa: E402
    cosine_rows,
    dyllm_context_update,
    dyllm_context_update_reference,
    dyllm_update_and_cosine,
    dyllm_update_and_cosine_reference,
)
from .importance import focus_importance, focus_importance_reference, masked_importance  # noqa: E402
from .selection import focus_select, focus_select_reference  # noqa: E402

__all__ = [
    "TRITON_AVAILABLE",
    "TRITON_IMPORT_ERROR",
    "compact_rows",
    "compact_rows_reference",
    "cosine_rows",
    "dyllm_context_update",
    "dyllm_context_update_reference",
    "dyllm_update_and_cosine",
    "dyllm_update_and_cosine_reference",
    "focus_importance",
    "focus_importance_reference",
    "masked_importance",
    "focus_select",
    "focus_select_reference",
    "gather_rows",
    "gather_rows_reference",
    "use_triton",
]
