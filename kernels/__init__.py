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

import sys

if __name__ == "kernels":
    # This folder was imported under the bare name `kernels` (a checkout's root on sys.path:
    # `python -m pytest`, `python -m experiments.<app>` from the checkout). That name belongs
    # to Hugging Face's `kernels` package, which transformers imports when it is installed;
    # focuslib's kernels are `focuslib.kernels`. Hand the name over to the installed package.
    import importlib.machinery
    import importlib.util
    from pathlib import Path

    _checkout = Path(__file__).resolve().parents[1]
    _spec = importlib.machinery.PathFinder.find_spec(
        "kernels", [p for p in sys.path if Path(p or ".").resolve() != _checkout])
    if _spec is None or _spec.loader is None:
        raise ImportError("`kernels` is Hugging Face's package, which is not installed; "
                          "focuslib's kernels are imported as `focuslib.kernels`")
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["kernels"] = _module  # an import statement returns what sys.modules holds
    _spec.loader.exec_module(_module)
else:
    from .dispatch import (  # noqa: F401
        FORCE_ENV, TRITON_AVAILABLE, TRITON_IMPORT_ERROR, check_launchable, next_pow2, triton_forced, use_triton,
    )
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
