"""Evaluation harness: decode every problem of a task in ragged batches and score it.

    >>> from focuslib import DiffusionDecoder, evaluate, load_model
    >>> from focuslib.tasks import load_task
    >>> from focuslib.policies.unmasking import Threshold
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
from focuslib.regime import RegimeStats, regime_stats, regime_stats_by_group
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
    regime: RegimeStats | None = None  # evaluate(..., regime=True): regime metrics over every batch
    regime_by_task: dict[str, RegimeStats] = field(default_factory=dict)  # sub-task -> regime (oracle_saving NaN)

    def metrics(self) -> dict[str, Any]:
        """Everything but the records: what metrics.json and loggers store.

        With regime metrics: flat `regime/<name>` keys (RegimeStats.as_dict) and
        `regime/<sub-task>/<fraction>` for the per-step fractions and forced_share of each sub-task.
        """
        out = asdict(self)
        for key in ("records", "regime", "regime_by_task"):
            out.pop(key)
        if self.regime is not None:
            out.update(self.regime.as_dict())
            for name, stats in self.regime_by_task.items():
                out.update({f"regime/{name}/{k}": getattr(stats, k)
                            for k in ("committed_fraction_first", "committed_fraction_later", "forced_share")})
        return out


def evaluate(decoder: DiffusionDecoder, task: Task, *, gen_length: int, steps: int | None = None,
             batch_size: int = 32, progress: bool = True, stop_at_eos: bool = True,
             on_batch: Callable[[dict[str, float]], None] | None = None, regime: bool = False,
             forced_below: float = 0.9, eviction_layer: int = 1) -> EvalResult:
    """Decode task.prompts with `decoder` (batches of `batch_size`, ragged) and score the texts.

    tokens_per_s counts committed tokens (EOS filler included) over decoding wall time only.
    on_batch: called after each batch with running metrics (examples, accuracy, tokens_per_s,
    tokens_per_step, forward_passes), e.g. to stream them to an experiment logger.
    regime: decode with trace=True and fill `result.regime` (focuslib.regime.RegimeStats, merged
    over the batches: fractions weighted by counts, oracle saving as a ratio of sums) and
    `result.regime_by_task`; forced_below and eviction_layer are passed to `regime_stats`.
    The oracle saving is meaningful only for a decoder without eviction. Tracing adds
    host-side work, so do not time a regime run.
    """
    if decoder.tokenizer is None:
        raise ValueError("evaluate needs text: build the decoder with tokenizer=...")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if regime and not 0 <= eviction_layer <= decoder.cfg.n_layers:
        raise ValueError(f"eviction_layer must lie in [0, n_layers={decoder.cfg.n_layers}], got {eviction_layer}")
    rows = list(task.dataset)
    total = DecodeStats()
    records: list[dict[str, Any]] = []
    regimes: list[RegimeStats] = []
    regimes_by_task: dict[str, list[RegimeStats]] = defaultdict(list)
    n_layers = decoder.cfg.n_layers
    bar = tqdm(total=len(rows), desc=f"evaluate {task.name}", unit="ex", disable=not progress, leave=False)
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        out = decoder.generate([r["prompt"] for r in chunk], gen_length=gen_length, steps=steps, stop_at_eos=stop_at_eos,
                               trace=regime)
        total.add(out.stats)
        if regime:
            regimes.append(regime_stats(out.trace, n_layers=n_layers, dense_row_layers=out.stats.row_layers,
                                        forced_below=forced_below, eviction_layer=eviction_layer))
            groups = {i: row.get("task", task.name) for i, row in enumerate(chunk)}
            for name, stats in regime_stats_by_group(out.trace, groups, n_layers=n_layers, forced_below=forced_below,
                                                     eviction_layer=eviction_layer).items():
                regimes_by_task[name].append(stats)
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
        regime=RegimeStats.merge(regimes) if regimes else None,
        regime_by_task={t: RegimeStats.merge(parts) for t, parts in sorted(regimes_by_task.items())},
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
