"""Evaluation harness: decode every problem of a task in ragged batches and score it.

    >>> from focuslib import DiffusionDecoder, evaluate, load_model
    >>> from focuslib.tasks import load_task
    >>> from policies.unmasking import Threshold
    >>> model, tok = load_model("tiny-sdar")
    >>> result = evaluate(DiffusionDecoder(model, Threshold(0.9), tokenizer=tok), load_task("mix", 8), gen_length=16)
    >>> 0.0 <= result.accuracy <= 1.0
    True
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from tqdm.auto import tqdm

from focuslib.decoder import DecodeStats, DiffusionDecoder
from focuslib.tasks import Task


@dataclass
class EvalResult:
    """Accuracy and cost of decoding one task; `records` has one dict per problem."""

    accuracy: float
    per_task: dict[str, float]  # sub-task -> accuracy
    tokens_per_step_by_task: dict[str, float]  # sub-task -> tokens committed per step per sequence
    tokens_per_s: float
    forward_passes: int
    row_layers: int
    tokens_per_step: float
    tokens_committed: int
    wall_time_s: float
    n_examples: int
    records: list[dict[str, Any]] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """Everything but the records: what metrics.json and loggers store."""
        out = asdict(self)
        out.pop("records")
        return out


def evaluate(decoder: DiffusionDecoder, task: Task, *, gen_length: int, steps: int | None = None,
             batch_size: int = 32, progress: bool = True, stop_at_eos: bool = True,
             on_batch: Callable[[dict[str, float]], None] | None = None) -> EvalResult:
    """Decode task.prompts with `decoder` (batches of `batch_size`, ragged) and score the texts.

    tokens_per_s counts committed tokens (EOS filler included) over decoding wall time only.
    on_batch: called after each batch with running metrics (examples, accuracy, tokens_per_s,
    tokens_per_step, forward_passes), e.g. to stream them to an experiment logger.
    """
    if decoder.tokenizer is None:
        raise ValueError("evaluate needs text: build the decoder with tokenizer=...")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = list(task.dataset)
    total = DecodeStats()
    records: list[dict[str, Any]] = []
    bar = tqdm(total=len(rows), desc=f"evaluate {task.name}", unit="ex", disable=not progress, leave=False)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        out = decoder.generate([r["prompt"] for r in chunk], gen_length=gen_length, steps=steps, stop_at_eos=stop_at_eos)
        total.add(out.stats)
        for row, text, n_steps, n_tok in zip(chunk, out.text, out.steps_per_sequence, out.committed_per_sequence):
            records.append({"task": row.get("task", task.name), "prompt": row["prompt"], "answer": row["answer"],
                            "prediction": text, "score": task.score(text, row), "steps": n_steps, "committed": n_tok})
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{total.tokens_per_s:.0f}")
        if on_batch is not None:
            on_batch({"examples": len(records), "accuracy": _mean([r["score"] for r in records]),
                      "tokens_per_s": total.tokens_per_s, "tokens_per_step": total.tokens_per_step,
                      "forward_passes": total.forward_passes})
    bar.close()
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    scores = [r["score"] for r in records]
    return EvalResult(
        accuracy=_mean(scores),
        per_task={t: _mean([r["score"] for r in rs]) for t, rs in sorted(by_task.items())},
        tokens_per_step_by_task={t: sum(r["committed"] for r in rs) / max(sum(r["steps"] for r in rs), 1)
                                 for t, rs in sorted(by_task.items())},
        tokens_per_s=total.tokens_per_s, forward_passes=total.forward_passes, row_layers=total.row_layers,
        tokens_per_step=total.tokens_per_step, tokens_committed=total.tokens_committed,
        wall_time_s=total.wall_time_s, n_examples=len(records), records=records,
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
