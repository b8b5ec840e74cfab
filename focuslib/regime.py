"""Regime metrics: is a model/task in the regime where token eviction (FOCUS) can pay off?

Eviction saves compute only on masked rows that are *not* committed at a step: FOCUS
drops them after an early layer. If a block commits most of its masked tokens at each
step, or most commits are forced ("at least one token per step") low-confidence picks,
there is little to evict or the ranking has nothing to find. From a decode trace
(`generate(..., trace=True)`, one row per step, sequence and masked block position):

    >>> import pandas as pd
    >>> trace = pd.DataFrame({"step": [0, 0, 1], "seq": [0, 0, 0], "block": [0, 0, 0], "position": [4, 5, 5],
    ...                       "confidence": [0.95, 0.5, 0.7], "committed": [True, False, True]})
    >>> s = regime_stats(trace, n_layers=4, dense_row_layers=12)
    >>> s.committed_fraction_first, s.committed_fraction_later, s.forced_share, s.oracle_saving
    (0.5, 1.0, 0.5, 0.25)

* committed_fraction_first / _later: mean over (sequence, block) first steps (the
  smallest step at which the pair appears in the trace) / over all their later steps
  of (tokens committed at the step / masked rows of the block at the step);
* forced_share: share of committed tokens whose confidence was below `forced_below`
  (under Threshold(forced_below) decoding: the forced "at least one token" commits, plus
  the commits of a block's last budgeted step when a step cap is set);
* oracle_saving: share of the dense run's row-layers an oracle eviction would save on
  replay of the trace: every masked row not committed at a step is evicted inside layer
  `eviction_layer` and skips the remaining n_layers - eviction_layer layers. Only
  meaningful on the trace of a run *without* eviction (with eviction, evicted rows
  cannot commit and the steps themselves change), and `dense_row_layers` must be the
  same run's `stats.row_layers`. Note that focuslib's `Focus(layer=k)` runs layers 0..k
  in full before dropping rows, i.e. skips n_layers - k - 1 layers: its oracle in this
  accounting is `eviction_layer=k + 1`. Rows are positions; under Dream's logit shift
  the row computing position p's logits is p - 1, which this accounting ignores.

`RegimeStats.merge` combines the stats of several batches exactly as if they had been
computed on one trace: fractions weighted by their counts, the oracle saving as a ratio
of sums (never a mean of batch means). The per-step fractions are summed as exact
rationals, so the merged values do not depend on how the sequences were batched, to the bit.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import pandas as pd

REQUIRED = ("step", "seq", "block", "confidence", "committed")
FRACTIONS = ("committed_fraction_first", "committed_fraction_later", "forced_share", "oracle_saving")


@dataclass(frozen=True)
class RegimeStats:
    """Regime metrics of one trace (or of several merged); see the module docstring.

    Rates are NaN when their denominator is empty (no later steps, no commits, unknown or
    zero dense row-layers). Counts: n_steps = (sequence, step) pairs with masked rows
    (equals DecodeStats.sequence_steps for a full trace), n_rows = trace rows,
    n_first_steps = (sequence, block) pairs, n_committed = committed rows,
    n_forced = committed rows below forced_below, oracle_row_layers = row-layers the
    oracle saves, dense_row_layers = the denominator of oracle_saving (None if unknown).
    first_sum / later_sum: the exact sums of the per-step fractions (what `merge` adds).
    """

    committed_fraction_first: float
    committed_fraction_later: float
    forced_share: float
    oracle_saving: float
    n_steps: int
    n_rows: int
    n_first_steps: int
    n_committed: int
    n_forced: int
    oracle_row_layers: int
    dense_row_layers: int | None
    forced_below: float = 0.9
    eviction_layer: int = 1
    first_sum: Fraction = field(default=Fraction(0), repr=False)
    later_sum: Fraction = field(default=Fraction(0), repr=False)

    @property
    def n_later_steps(self) -> int:
        return self.n_steps - self.n_first_steps

    def as_dict(self, prefix: str = "regime/") -> dict[str, float | int | None]:
        """Flat `{prefix + field: value}` (what EvalResult.metrics() stores)."""
        names = (*FRACTIONS, "n_steps", "n_rows", "n_first_steps", "n_committed", "n_forced", "oracle_row_layers",
                 "dense_row_layers", "forced_below", "eviction_layer")
        return {prefix + n: getattr(self, n) for n in names}

    @classmethod
    def merge(cls, parts: Iterable["RegimeStats"]) -> "RegimeStats":
        """The stats of the union of the parts' traces (e.g. the batches of an evaluation).

        Per-step fractions are averaged weighted by their step counts (exact sums), forced_share is
        n_forced / n_committed and oracle_saving is sum(oracle_row_layers) / sum(dense_row_layers)
        (None if any part lacks its dense row-layers). Parts must share forced_below and eviction_layer.
        """
        parts = list(parts)
        if not parts:
            raise ValueError("merge needs at least one RegimeStats")
        settings = {(p.forced_below, p.eviction_layer) for p in parts}
        if len(settings) > 1:
            raise ValueError(f"cannot merge regime stats computed with different (forced_below, eviction_layer): "
                             f"{sorted(settings)}")
        n_steps = sum(p.n_steps for p in parts)
        n_first = sum(p.n_first_steps for p in parts)
        n_committed = sum(p.n_committed for p in parts)
        n_forced = sum(p.n_forced for p in parts)
        saved = sum(p.oracle_row_layers for p in parts)
        dense = None if any(p.dense_row_layers is None for p in parts) else sum(p.dense_row_layers for p in parts)
        first_sum = sum((p.first_sum for p in parts), Fraction(0))
        later_sum = sum((p.later_sum for p in parts), Fraction(0))
        return cls(
            committed_fraction_first=_ratio(first_sum, n_first),
            committed_fraction_later=_ratio(later_sum, n_steps - n_first),
            forced_share=_ratio(n_forced, n_committed), oracle_saving=_ratio(saved, dense),
            n_steps=n_steps, n_rows=sum(p.n_rows for p in parts), n_first_steps=n_first, n_committed=n_committed,
            n_forced=n_forced, oracle_row_layers=saved, dense_row_layers=dense,
            forced_below=parts[0].forced_below, eviction_layer=parts[0].eviction_layer,
            first_sum=first_sum, later_sum=later_sum,
        )


def regime_stats(trace: pd.DataFrame, *, n_layers: int, dense_row_layers: int | None = None,
                 forced_below: float = 0.9, eviction_layer: int = 1) -> RegimeStats:
    """RegimeStats of one decode trace (one `generate` call: `seq` and `step` as the trace numbers them).

    n_layers: the model's layer count; dense_row_layers: `out.stats.row_layers` of the same
    run (None: oracle_saving is NaN, the saved row-layers are still counted). The oracle
    saving is only meaningful for a run without eviction (see the module docstring).
    """
    missing = [c for c in REQUIRED if c not in trace.columns]
    if missing:
        raise ValueError(f"trace lacks column(s) {missing}; a generate(..., trace=True) trace has {list(REQUIRED)}")
    if not 0 <= eviction_layer <= n_layers:
        raise ValueError(f"eviction_layer must lie in [0, n_layers={n_layers}], got {eviction_layer}")
    if dense_row_layers is not None and dense_row_layers < 0:
        raise ValueError(f"dense_row_layers must be >= 0, got {dense_row_layers}")
    committed = trace["committed"].astype(bool)
    df = pd.DataFrame({"seq": trace["seq"].to_numpy(), "block": trace["block"].to_numpy(),
                       "step": trace["step"].to_numpy(), "committed": committed.to_numpy()})
    per_step = df.groupby(["seq", "block", "step"], sort=True)["committed"].agg(["size", "sum"]).reset_index()
    first = per_step["step"] == per_step.groupby(["seq", "block"])["step"].transform("min")
    first_sum, later_sum = _fraction_sum(per_step[first]), _fraction_sum(per_step[~first])
    n_first = int(first.sum())
    n_committed = int(committed.sum())
    # NaN confidence (no logits) cannot be committed; a NaN on a committed row is not counted as forced
    n_forced = int((committed & (trace["confidence"] < forced_below)).sum())
    saved = int((~committed).sum()) * (n_layers - eviction_layer)
    return RegimeStats(
        committed_fraction_first=_ratio(first_sum, n_first),
        committed_fraction_later=_ratio(later_sum, len(per_step) - n_first),
        forced_share=_ratio(n_forced, n_committed), oracle_saving=_ratio(saved, dense_row_layers),
        n_steps=len(per_step), n_rows=len(trace), n_first_steps=n_first, n_committed=n_committed,
        n_forced=n_forced, oracle_row_layers=saved, dense_row_layers=dense_row_layers,
        forced_below=float(forced_below), eviction_layer=int(eviction_layer), first_sum=first_sum, later_sum=later_sum,
    )


def regime_stats_by_group(trace: pd.DataFrame, groups: Mapping[int, str], *, n_layers: int,
                          forced_below: float = 0.9, eviction_layer: int = 1) -> dict[str, RegimeStats]:
    """RegimeStats per group (e.g. sub-task) of the trace's sequences; groups maps seq -> name.

    Row-layers are not recorded per sequence, so each group's oracle_saving is NaN
    (its saved row-layers, oracle_row_layers, are counted).
    """
    seqs = trace["seq"].to_numpy()
    unknown = sorted(set(int(s) for s in seqs) - set(int(k) for k in groups))
    if unknown:
        raise ValueError(f"groups has no entry for trace sequence(s) {unknown}")
    names = pd.Series([groups[int(s)] for s in seqs], index=trace.index)
    return {name: regime_stats(trace[names == name], n_layers=n_layers, forced_below=forced_below,
                               eviction_layer=eviction_layer)
            for name in sorted(set(names))}


def _fraction_sum(per_step: pd.DataFrame) -> Fraction:
    """Exact sum over steps of committed / masked (grouped by the masked count: one Fraction per count)."""
    by_size = per_step.groupby("size")["sum"].sum()
    return sum((Fraction(int(c), int(m)) for m, c in by_size.items()), Fraction(0))


def _ratio(num: int | Fraction, den: int | None) -> float:
    return float(num / den) if den else math.nan


__all__ = ["RegimeStats", "regime_stats", "regime_stats_by_group"]
