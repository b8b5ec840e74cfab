"""Per-step decode traces: one row per (step, sequence, masked position of the current block).

Columns: step, seq, block, position, imp0, imp1, delta (attention importance among the
block's masked rows at the reference layer and at the eviction layer -- layers 0 and 1,
or those of the ranking eviction policy in use -- and their difference), score (the
ranking policy's score of the row, NaN without one), kept (the row survived every
layer), confidence (probability of the chosen token, NaN when the row produced no
logits), committed (at this step), committed_step (final); with
`generate(..., dense_labels=True)` also dense_commit (committed at this step by the same
step run without eviction). Traces are recorded with any eviction policy, `none` included.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from focuslib.contract import LayerView
from focuslib.kernels import masked_importance

if TYPE_CHECKING:
    from focuslib.schedule import DecodeState

COLUMNS = ("step", "seq", "block", "position", "imp0", "imp1", "delta", "score", "kept", "confidence", "committed",
           "committed_step")


def _importance_at(view: LayerView, block_pos: Tensor, window: int) -> Tensor:
    """Importance of the view's masked rows, read at block positions [B, S] (NaN where not a row)."""
    imp = masked_importance(view.q, view.k, view.masked, window, width=view.masked_width)  # [B, L]
    row_of = view.rows.rows_at(block_pos, view.step.positions)
    return torch.where(row_of >= 0, imp.gather(1, row_of.clamp(min=0)), torch.nan)


class TraceRecorder:
    """Collects trace rows on the host; only used when generate(trace=True).

    layers: (reference layer, eviction layer) whose importance is recorded as imp0 / imp1.
    """

    def __init__(self, layers: tuple[int, int] = (0, 1), window: int = 3) -> None:
        self.layers, self.window = tuple(layers), window
        self.parts: list[dict[str, np.ndarray]] = []

    def record(self, step: int, state: "DecodeState", block_pos: Tensor, masked: Tensor, candidates: Tensor,
               confidence: Tensor, chosen: Tensor, views: dict[int, LayerView], columns: dict[str, Tensor]) -> None:
        """masked [B, S]: block positions still masked (the rows traced); candidates: those with logits.

        views: LayerView at the Q/K/V point of the recorded layers (all masked rows present);
        columns: per-position [B, T] values of this step from the eviction policies (e.g. score).
        """
        imp = [_importance_at(views[i], block_pos, self.window) if i in views else torch.full_like(confidence, torch.nan)
               for i in self.layers]
        seq, slot = masked.nonzero(as_tuple=True)
        pos = block_pos[seq, slot]

        def col(x: Tensor) -> np.ndarray:
            return x[seq, slot].float().cpu().numpy()

        score = columns.get("score")
        part = {
            "step": np.full(len(seq), step), "seq": seq.cpu().numpy(), "position": pos.cpu().numpy(),
            "block": state.block_id[seq, pos].cpu().numpy(),
            "imp0": col(imp[0]), "imp1": col(imp[1]),
            "score": score[seq, pos].float().cpu().numpy() if score is not None else np.full(len(seq), np.nan),
            "kept": candidates[seq, slot].cpu().numpy(),
            "confidence": col(torch.where(candidates, confidence, torch.nan)),
            "committed": chosen[seq, slot].cpu().numpy(),
        }
        part["delta"] = part["imp1"] - part["imp0"]
        if "dense_commit" in columns:
            part["dense_commit"] = columns["dense_commit"][seq, pos].cpu().numpy()
        self.parts.append(part)

    def frame(self, committed_step: Tensor) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame({c: [] for c in COLUMNS})
        df = pd.DataFrame({k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]})
        final = committed_step.cpu().numpy()
        df["committed_step"] = final[df["seq"].to_numpy(), df["position"].to_numpy()]
        extra = ["dense_commit"] if "dense_commit" in df else []
        return df[list(COLUMNS) + extra].reset_index(drop=True)


def save_trace(trace: pd.DataFrame, path: str | Path) -> Path:
    """Write a trace as parquet (columnar, keeps dtypes)."""
    if trace is None:
        raise TypeError("save_trace got None instead of a trace: GenerationOutput.trace is None unless the prompts "
                        "were decoded with generate(..., trace=True)")
    if not isinstance(trace, pd.DataFrame):
        raise TypeError(f"save_trace needs a trace DataFrame (GenerationOutput.trace), got {type(trace).__name__}")
    missing = [c for c in COLUMNS if c not in trace.columns]
    if missing:
        raise ValueError(f"save_trace: the DataFrame is not a decode trace; missing columns {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trace.to_parquet(path, index=False)
    return path


def load_trace(path: str | Path) -> pd.DataFrame:
    """Read a trace written by save_trace; ValueError naming the file and the missing columns if it is not one."""
    trace = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in trace.columns]
    if missing:
        raise ValueError(f"{path} is not a decode trace: missing columns {missing} (a trace has {list(COLUMNS)}, "
                         "optionally dense_commit)")
    return trace
