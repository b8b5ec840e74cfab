"""Budget policies: how many masked rows of the current block a ranking eviction policy keeps.

A budget policy is a `focuslib.contract.BudgetPolicy`: called with the step's `StepView`,
it returns K [B] (long, >= 1) per sequence. `None` as the decoder's budget means "no budget".
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from focuslib.contract import BudgetPolicy, StepView


def decoded_per_step(step: StepView) -> Tensor:
    """[B] float: running average of tokens decoded per step in the current block (1 at block start)."""
    decoded = (step.masked_at_block_start - step.n_masked).clamp(min=0).float()
    steps = step.step_in_block.float()
    return torch.where(steps > 0, decoded / steps.clamp(min=1), torch.ones_like(decoded))


class FocusBudget(BudgetPolicy):
    """FOCUS: K = ceil(alpha * max(a, 1)), a = tokens decoded per step so far in the block.

    alpha: 1.5 is the FOCUS authors' benchmark script and SGLang default (kept here);
    their LMDeploy engine defaults to 1.0 and requires alpha >= 1.
    """

    def __init__(self, alpha: float = 1.5) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"alpha must be > 0 and finite, got {alpha!r}")
        self.alpha = float(alpha)

    def __call__(self, step: StepView) -> Tensor:
        a = decoded_per_step(step).clamp(min=1.0)
        # small epsilon keeps ceil(1.5 * 2) == 3 despite float rounding
        return torch.ceil(self.alpha * a - 1e-6).long().clamp(min=1)

    def __repr__(self) -> str:
        return f"FocusBudget(alpha={self.alpha})"


class FixedBudget(BudgetPolicy):
    """A fixed count of rows (`count`) or a fraction of the block's masked rows (`fraction`)."""

    def __init__(self, count: int | None = None, fraction: float | None = None) -> None:
        if (count is None) == (fraction is None):
            raise ValueError("FixedBudget needs exactly one of count or fraction")
        if count is not None and (isinstance(count, bool) or not isinstance(count, numbers.Integral) or count < 1):
            raise ValueError(f"FixedBudget count must be an int >= 1, got {count!r}")
        if fraction is not None and (isinstance(fraction, bool) or not isinstance(fraction, numbers.Real)
                                     or not 0 < fraction <= 1):
            raise ValueError(f"FixedBudget fraction must be a number in (0, 1], got {fraction!r}")
        self.count = None if count is None else int(count)
        self.fraction = None if fraction is None else float(fraction)

    def __call__(self, step: StepView) -> Tensor:
        if self.count is not None:
            return torch.full_like(step.n_masked, self.count)
        return torch.ceil(step.n_masked.float() * self.fraction).long().clamp(min=1)

    def __repr__(self) -> str:
        return f"FixedBudget(count={self.count})" if self.count is not None else f"FixedBudget(fraction={self.fraction})"


__all__ = ["BudgetPolicy", "FixedBudget", "FocusBudget", "decoded_per_step"]
