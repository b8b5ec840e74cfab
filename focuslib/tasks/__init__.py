"""Task suites: prompts, reference answers and scoring for decoding experiments.

    task = load_task("mix", 200, seed="test")
    preds = [...]                      # generated answer text, one per prompt
    task.evaluate(preds)               # {"score": ..., "score/chain_sum": ..., ...}

Procedural tasks (chain_sum, number_sorting, spell_backward, basic_arithmetic,
mix; the long-answer tribonacci, count_by, repeat, walk, long_mix) use compact character-level formats (see `procedural`); their splits are
a partition by prompt hash (hash % 10: 0-7 train, 8 validation, 9 test), so
train/validation/test never share a problem. File-backed benchmarks (gsm8k,
humaneval, sharegpt) are for real checkpoints (see `benchmarks`).
"""

from __future__ import annotations

import inspect
import numbers
from collections.abc import Callable
from typing import Any

from .base import SPLITS, Task, prompt_split, resolve_seed
from .benchmarks import HUMANEVAL_STOPS, build_gsm8k, build_humaneval, build_sharegpt
from .chat import apply_chat_template
from .long import prefix_match
from .procedural import CHARSET, DEFAULT_MIX_WEIGHTS, MIXES, STREAMS, build_mix, build_procedural

__all__ = [
    "CHARSET", "DEFAULT_MIX_WEIGHTS", "HUMANEVAL_STOPS", "MIXES", "PROCEDURAL_TASKS", "SPLITS", "TASK_NAMES",
    "Task", "apply_chat_template", "load_task", "prefix_match", "prompt_split",
]

PROCEDURAL_TASKS: tuple[str, ...] = (*STREAMS, *MIXES)

_FILE_BUILDERS: dict[str, Callable[..., Task]] = {
    "gsm8k": build_gsm8k,
    "humaneval": build_humaneval,
    "sharegpt": build_sharegpt,
}

TASK_NAMES: tuple[str, ...] = (*PROCEDURAL_TASKS, *_FILE_BUILDERS)


def load_task(name: str, n: int, seed: int | str = "test", **kwargs: Any) -> Task:
    """Build `n` problems of task `name`, deterministically for (name, n, seed, kwargs).

    seed: "train" / "validation" / "test", or an int. An int seed draws a fresh
        stream from the *train* split unless `split=` names another one, so
        `seed=epoch` gives new training data that never overlaps evaluation data.
    kwargs: the task's options. Procedural tasks: their difficulty knobs (see the
        generator functions in `procedural`) and `unique=True` to forbid repeated
        prompts; mix: `weights={...}` and per-sub-task knob dicts such as
        `chain_sum={"max_terms": 4}`; gsm8k: `path`, `template`; humaneval:
        `timeout`, `stop_sequences`; sharegpt: `min_chars`, `max_chars`.
        gsm8k, humaneval and sharegpt also take `chat=True` with `tokenizer=` (the
        checkpoint's): each prompt becomes the user turn of the tokenizer's chat
        template (`apply_chat_template`), as instruct models are evaluated.
    A smaller n gives a prefix of a larger n with the same seed and options.
    """
    if name not in TASK_NAMES:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASK_NAMES)}")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    n = int(n)
    spec = resolve_seed(seed, kwargs.pop("split", None))
    if name in MIXES:
        return build_mix(n, spec, name=name, **kwargs)
    if name in STREAMS:
        return build_procedural(name, n, spec, **kwargs)
    builder = _FILE_BUILDERS[name]
    _check_options(name, builder, kwargs)
    return builder(n, spec, **kwargs)


def _check_options(name: str, builder: Callable[..., Task], kwargs: dict[str, Any]) -> None:
    """Name the task and its valid options instead of Python's bare 'unexpected keyword'."""
    known = [p for p in inspect.signature(builder).parameters if p not in ("n", "spec")]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {unknown}; known: {known + ['split']}")

