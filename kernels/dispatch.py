"""Shared by every kernel module: the Triton import guard and the dispatch rule (see the package docstring)."""

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
