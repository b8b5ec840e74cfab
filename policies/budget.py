"""Budget policies: how many rows of a block a ranking eviction policy keeps.

A budget policy is called with the rows after a layer and returns K [B] (long,
>= 1) per sequence; `None` as the decoder's budget means "no budget".
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor

if TYPE_CHECKING:
    from focuslib.eviction import LayerRows


class BudgetPolicy(Protocol):
    """Any callable LayerRows -> K [B] long (>= 1): the decoder accepts user budgets, not only the two below."""

    def __call__(self, info: "LayerRows") -> Tensor: ...


def decoded_per_step(info: "LayerRows") -> Tensor:
    """[B] float: running average of tokens decoded per step in the current block (1 at block start)."""
    state = info.state
    masked_now = info.masked.sum(1)
    decoded = (state.masked_at_block_start - masked_now).clamp(min=0).float()
    steps = state.step_in_block.float()
    return torch.where(steps > 0, decoded / steps.clamp(min=1), torch.ones_like(decoded))


class FocusBudget:
    """FOCUS: K = ceil(alpha * max(a, 1)), a = tokens decoded per step so far in the block."""

    def __init__(self, alpha: float = 1.5) -> None:
        if not alpha > 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        self.alpha = alpha

    def __call__(self, info: "LayerRows") -> Tensor:
        a = decoded_per_step(info).clamp(min=1.0)
        # small epsilon keeps ceil(1.5 * 2) == 3 despite float rounding
        return torch.ceil(self.alpha * a - 1e-6).long().clamp(min=1)

    def __repr__(self) -> str:
        return f"FocusBudget(alpha={self.alpha})"


class FixedBudget:
    """A fixed count of rows (`count`) or a fraction of the block's masked rows (`fraction`)."""

    def __init__(self, count: int | None = None, fraction: float | None = None) -> None:
        if (count is None) == (fraction is None):
            raise ValueError("FixedBudget needs exactly one of count or fraction")
        if count is not None and count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        self.count, self.fraction = count, fraction

    def __call__(self, info: "LayerRows") -> Tensor:
        masked = info.masked.sum(1)
        if self.count is not None:
            return torch.full_like(masked, self.count)
        return torch.ceil(masked.float() * self.fraction).long().clamp(min=1)

    def __repr__(self) -> str:
        return f"FixedBudget(count={self.count}, fraction={self.fraction})"


__all__ = ["BudgetPolicy", "FocusBudget", "FixedBudget", "decoded_per_step"]
