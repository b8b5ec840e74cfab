"""Policies that follow a per-block step budget (`needs_schedule = True`).

LLaDA (`low_confidence`, `random`): the block's initial mask count is spread evenly over
its steps, the remainder going to the earliest steps; the last step commits whatever is
left. Dream (`maskgit_plus`, `topk_margin`, `entropy`, `origin`): a reverse-time grid
t = linspace(1, eps, steps + 1); going from t to s commits a fraction 1 - s/t of the rows
still masked, all of them at the last step.

Shapes: B batch, L rows (block positions), V vocabulary.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from .base import (
    Proposal,
    StepContext,
    UnmaskingPolicy,
    check_number,
    sampled_ranking,
    token_entropy,
    top_k_commit,
)


def step_index(ctx: StepContext, batch: int, device: torch.device) -> Tensor:
    """ctx.step as a [B] long tensor (the decoder passes one step counter per sequence)."""
    step = ctx.step
    if isinstance(step, Tensor) and step.dtype == torch.long and step.shape == (batch,):
        return step  # what the decoder passes, as it is
    return torch.as_tensor(step, device=device).long().expand(batch)


def is_last_step(ctx: StepContext, batch: int, device: torch.device) -> Tensor:
    """[B] bool: True at the block's final budgeted step, and at any step past the budget
    (a decoder may overrun when rows were not committable), so leftovers are always flushed."""
    return step_index(ctx, batch, device) >= ctx.steps_per_block - 1


# ---------------------------------------------------------------------------------------
# LLaDA


def llada_quota(ctx: StepContext) -> Tensor:
    """Rows to commit at this step: n0 // steps, plus one on the first n0 % steps steps,
    with n0 = masked rows at block start. Summed over the block's steps it equals n0.
    Returns [B] long. (LLaDA's `get_num_transfer_tokens`, one step at a time.)"""
    n0 = ctx.n_masked_at_block_start
    steps = ctx.steps_per_block
    # n0 // steps + (step < n0 % steps), in one floor division (step < steps; later steps commit all anyway)
    return (n0 + (steps - 1) - step_index(ctx, n0.shape[0], n0.device)) // steps


class _LLaDAQuota(UnmaskingPolicy):
    """Commit the top-`quota` candidates by `scores`; everything left at the last step."""

    needs_schedule = True

    def select(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        last = is_last_step(ctx, candidates.shape[0], candidates.device)  # [B]
        k = torch.where(last, candidates.sum(dim=-1), llada_quota(ctx))  # [B]
        return top_k_commit(self.scores(proposal, candidates, ctx), candidates, k)

    @abc.abstractmethod
    def scores(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        """[B, L] float: higher = committed earlier."""


class LowConfidence(_LLaDAQuota):
    """LLaDA's `low_confidence` remasking: commit the quota's most confident candidates."""

    def scores(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        return proposal.confidence


class RandomRemask(_LLaDAQuota):
    """LLaDA's `random` remasking: the quota's candidates are chosen uniformly at random
    (uniform scores from ctx.rand); tokens are still argmax or sampled as usual."""

    def scores(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        return ctx.rand(candidates.shape, dtype=torch.float64, device=candidates.device)


# ---------------------------------------------------------------------------------------
# Dream


def dream_fraction(ctx: StepContext, eps: float, device: torch.device) -> Tensor:
    """1 - s/t for this step on Dream's grid t = linspace(1, eps, steps + 1), computed as
    Dream does (float32 linspace on the logits' device) so counts match its rounding.
    Returns a float32 tensor of ctx.step's shape; callers treat the last step separately."""
    grid = torch.linspace(1.0, eps, ctx.steps_per_block + 1, device=device)  # [steps + 1]
    step = torch.as_tensor(ctx.step, device=device).long().clamp(max=ctx.steps_per_block - 1)
    return 1.0 - grid[step + 1] / grid[step]


class _DreamSchedule(UnmaskingPolicy):
    """Holds Dream's grid end point eps (t runs from 1 down to eps)."""

    needs_schedule = True

    def __init__(
        self, eps: float = 1e-3, temperature: float = 0.0, *, top_k: int | None = None, top_p: float | None = None,
        logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False
    ) -> None:
        super().__init__(
            temperature=temperature, top_k=top_k, top_p=top_p, logits_eos_inf=logits_eos_inf,
            confidence_eos_eot_inf=confidence_eos_eot_inf
        )
        self.eps = check_number("eps", eps, low=0.0, high=1.0, low_open=True, high_open=True)


class _DreamRanked(_DreamSchedule):
    """Commit int(n * (1 - s/t)) candidates ranked by `scores` (n = current candidates),
    all of them at the last step, at least one.

    Differences from Dream's `generation_utils.py`, all deliberate: Dream takes n as the
    batch-average mask count and may commit zero rows at a step; here n is per row (a
    batch gives the same result as one row at a time) and at least one row is committed.
    Dream ranks by the tempered (and top-p/top-k filtered) distribution; here scores come
    from the untempered one, as for every policy of this library.

    alg_temp > 0 (Dream's option): the k rows are sampled without replacement from
    softmax(scores / alg_temp) over the candidates instead of taken as the top k (Dream:
    torch.multinomial; here Gumbel-top-k, the same distribution, drawn through ctx.rand).
    """

    def __init__(
        self, eps: float = 1e-3, temperature: float = 0.0, alg_temp: float = 0.0, *, top_k: int | None = None,
        top_p: float | None = None, logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False
    ) -> None:
        super().__init__(
            eps=eps, temperature=temperature, top_k=top_k, top_p=top_p, logits_eos_inf=logits_eos_inf,
            confidence_eos_eot_inf=confidence_eos_eot_inf
        )
        self.alg_temp = check_number("alg_temp", alg_temp, low=0.0)

    def select(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        n = candidates.sum(dim=-1)  # [B]
        fraction = (n.float() * dream_fraction(ctx, self.eps, n.device)).floor().long()
        k = torch.where(is_last_step(ctx, n.shape[0], n.device), n, fraction)
        scores = self.scores(proposal, candidates)
        if self.alg_temp > 0:
            scores = sampled_ranking(scores, self.alg_temp, ctx)
        return top_k_commit(scores, candidates, k)

    @abc.abstractmethod
    def scores(self, proposal: Proposal, candidates: Tensor) -> Tensor:
        """[B, L] float: higher = committed earlier."""


class MaskGITPlus(_DreamRanked):
    """Dream `maskgit_plus`: rank by the probability of the chosen token (the top-1
    probability when greedy; Dream also uses the sampled token's probability)."""

    def scores(self, proposal: Proposal, candidates: Tensor) -> Tensor:
        return proposal.confidence


class TopKMargin(_DreamRanked):
    """Dream `topk_margin`: rank by top-1 minus top-2 probability of the distribution."""

    def scores(self, proposal: Proposal, candidates: Tensor) -> Tensor:
        top2 = proposal.log_probs.topk(2, dim=-1).values.exp()  # [B, L, 2]
        return top2[..., 0] - top2[..., 1]


class Entropy(_DreamRanked):
    """Dream `entropy`: rank by negative entropy (most peaked distribution first)."""

    def scores(self, proposal: Proposal, candidates: Tensor) -> Tensor:
        return -token_entropy(proposal.log_probs)


class Origin(_DreamSchedule):
    """Dream `origin`: every candidate is committed independently with probability 1 - s/t
    (all at the last step). Dream may commit nothing at a step; here, if no candidate of
    a row is drawn, its most confident candidate is committed so decoding always advances."""

    def select(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        last = is_last_step(ctx, candidates.shape[0], candidates.device)[:, None]  # [B, 1]
        p = dream_fraction(ctx, self.eps, candidates.device)
        p = p[:, None] if p.dim() else p
        u = ctx.rand(candidates.shape, device=candidates.device)
        drawn = candidates & ((u < p) | last)  # [B, L] True = drawn for commit
        one = torch.ones(candidates.shape[0], dtype=torch.long, device=candidates.device)
        best = top_k_commit(proposal.confidence, candidates, one)  # [B, L] most confident
        none_drawn = ~drawn.any(dim=-1, keepdim=True)  # [B, 1] True = fall back to best
        return drawn | (best & none_drawn)
