"""Per-step decode traces: one row per (step, sequence, masked position of the current block).

Columns: step, seq, block, position, imp0, imp1, delta (FOCUS importance at layers
0 and 1 among the block's masked rows, and their difference), kept (the row
survived every layer), confidence (probability of the chosen token, NaN when the
row produced no logits), committed (at this step), committed_step (final).
Traces are recorded with any eviction policy, `none` included.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from focuslib.eviction import LayerRows, masked_importance

if TYPE_CHECKING:
    from focuslib.decoder import DecodeState

COLUMNS = ("step", "seq", "block", "position", "imp0", "imp1", "delta", "kept", "confidence", "committed",
           "committed_step")


def _at_positions(values: Tensor, info: LayerRows, block_pos: Tensor) -> Tensor:
    """Row values [B, L] of layer rows, read at block positions [B, S] (NaN where not a row)."""
    row_of = info.rows.rows_at(block_pos, info.state.x.shape[1])
    picked = values.gather(1, row_of.clamp(min=0))
    return torch.where(row_of >= 0, picked, torch.nan)


class TraceRecorder:
    """Collects trace rows on the host; only used when generate(trace=True)."""

    def __init__(self, window: int = 3) -> None:
        self.window = window
        self.parts: list[dict[str, np.ndarray]] = []

    def record(self, step: int, state: "DecodeState", block_pos: Tensor, masked: Tensor, candidates: Tensor,
               confidence: Tensor, chosen: Tensor, layer_rows: list[LayerRows]) -> None:
        """masked [B, S]: block positions still masked (the rows traced); candidates: those with logits."""
        imp = [_at_positions(masked_importance(info, self.window), info, block_pos) for info in layer_rows[:2]]
        seq, slot = masked.nonzero(as_tuple=True)
        pos = block_pos[seq, slot]

        def col(x: Tensor) -> np.ndarray:
            return x[seq, slot].float().cpu().numpy()

        part = {
            "step": np.full(len(seq), step), "seq": seq.cpu().numpy(), "position": pos.cpu().numpy(),
            "block": state.block_id[seq, pos].cpu().numpy(),
            "imp0": col(imp[0]), "imp1": col(imp[1]), "kept": candidates[seq, slot].cpu().numpy(),
            "confidence": col(torch.where(candidates, confidence, torch.nan)),
            "committed": chosen[seq, slot].cpu().numpy(),
        }
        part["delta"] = part["imp1"] - part["imp0"]
        self.parts.append(part)

    def frame(self, committed_step: Tensor) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame({c: [] for c in COLUMNS})
        df = pd.DataFrame({k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]})
        final = committed_step.cpu().numpy()
        df["committed_step"] = final[df["seq"].to_numpy(), df["position"].to_numpy()]
        return df[list(COLUMNS)].reset_index(drop=True)


def save_trace(trace: pd.DataFrame, path: str | Path) -> Path:
    """Write a trace as parquet (columnar, keeps dtypes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    trace.to_parquet(path, index=False)
    return path


def load_trace(path: str | Path) -> pd.DataFrame:
    """Read a trace written by save_trace."""
    return pd.read_parquet(path)
