"""What eviction policies see between layers, and how a stack of them is applied.

An eviction policy is handed `LayerRows` after each layer and may answer with a
keep mask over the rows; the decoder then compacts the rows (gather), so later
layers really process fewer tokens. Budget policies tell ranking policies how
many rows to keep. Policies see tensors only, never the model's internals.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import torch
from torch import Tensor

from focuslib.rows import Rows
from kernels.compaction import compact_rows, gather_rows
from kernels.importance import focus_importance

if TYPE_CHECKING:
    from focuslib.decoder import DecodeState
    from focuslib.model import Transformer


@dataclass
class LayerRows:
    """The rows that just went through layer `layer` ([B, L] tensors; True = property holds)."""

    layer: int
    rows: Rows
    q: Tensor  # [B, L, H, D] post-norm, post-RoPE queries of this layer
    k: Tensor  # [B, L, G, D] keys of this layer
    masked: Tensor  # [B, L] row is a still-masked position of its sequence's current block
    block_start: Tensor  # [B] absolute position where the current block starts
    state: "DecodeState"


def masked_importance(info: LayerRows, window: int = 3) -> Tensor:
    """FOCUS importance [B, L] of each masked row among the masked rows (0 for other rows).

    Queries and keys are restricted to the masked rows (in position order), scored,
    max-pooled over neighbouring keys, softmaxed and summed over heads and queries.
    """
    index, valid = compact_rows(info.masked)  # [B, M]
    imp = focus_importance(gather_rows(info.q, index), gather_rows(info.k, index), valid, window)  # [B, M]
    out = torch.zeros(info.masked.shape, dtype=torch.float32, device=imp.device)
    return out.scatter_add_(1, index, torch.where(valid, imp, 0.0))


class EvictionPolicy(Protocol):
    """After a layer, return a keep mask [B, L] over info.rows (True = keep computing), or None for no change."""

    def reset(self, batch: int) -> None: ...

    def after_layer(self, info: LayerRows, budget: Tensor | None) -> Tensor | None: ...


class EvictionStack:
    """Applies eviction policies in order; each sees the rows the previous one kept."""

    def __init__(self, policies: Sequence[Any], budget: Any | None) -> None:
        self.policies = list(policies)
        self.budget = budget

    @classmethod
    def build(cls, eviction: Any, budget: Any, model: "Transformer") -> "EvictionStack":
        policies = [] if eviction is None else list(eviction) if isinstance(eviction, (list, tuple)) else [eviction]
        policies = [p for p in policies if p is not None]
        for p in policies:
            check = getattr(p, "check", None)
            if check is not None:
                check(model.cfg)
        needs_budget = any(getattr(p, "needs_budget", False) for p in policies)
        if needs_budget and budget is None:
            names = [type(p).__name__ for p in policies if getattr(p, "needs_budget", False)]
            raise ValueError(f"eviction policy {names} ranks rows and needs a budget policy (e.g. FocusBudget)")
        return cls(policies, budget)

    def reset(self, batch: int) -> None:
        for p in self.policies:
            p.reset(batch)

    def after_layer(self, info: LayerRows) -> Tensor | None:
        keep = None
        for p in self.policies:
            budget = self.budget(info) if getattr(p, "needs_budget", False) else None
            mask = p.after_layer(info, budget)
            if mask is not None:
                keep = mask if keep is None else keep & mask
        return keep

    def __bool__(self) -> bool:
        return bool(self.policies)
