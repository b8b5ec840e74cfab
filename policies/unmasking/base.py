"""What every unmasking policy shares: the step context it is handed, the commit it
returns, token proposal (greedy or Gumbel-max sampling) and per-row top-k selection.

An unmasking policy answers one question per decoding step: which still-masked rows of
the block receive their token now, and which token. It sees only the tensors below and
knows nothing about the model. Every policy is the same two moves:

1. propose a token and its confidence at every row (`propose`, shared by all policies);
2. choose which candidates to commit (`UnmaskingPolicy.select`, one per policy).

Most policies choose "the k best candidates of each row by some score", with k and the
score being the whole difference between them; `top_k_commit` does that part.

Shapes: B batch, L rows (block positions), V vocabulary.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepContext:
    """Where the decoder is within the current block when it asks for a commit."""

    step: int | Tensor  # index of this step within the current block, 0-based (int or [B] long)
    steps_per_block: int | None  # steps budgeted for this block; None = no schedule
    n_masked_at_block_start: Tensor  # [B] long: masked positions of the block at block start
    generator: torch.Generator | None = None  # source of all randomness of the policy


@dataclass
class Commit:
    """A policy's answer for one step."""

    tokens: Tensor  # [B, L] long: chosen token at every row (meaningful where commit is True)
    commit: Tensor  # [B, L] bool: True = commit this row now
    confidence: Tensor  # [B, L] float32: probability of the chosen token, 0 where not a candidate


@dataclass(frozen=True)
class Proposal:
    """Token proposed at every row, with the model's distribution it came from."""

    tokens: Tensor  # [B, L] long
    confidence: Tensor  # [B, L] float32: softmax probability of `tokens`; 0 where not a candidate
    log_probs: Tensor  # [B, L, V] float32: log_softmax of the raw logits (no temperature)


# ---------------------------------------------------------------------------------------
# argument checks (constructors validate eagerly so a sweep fails before it starts)


def check_number(
    name: str,
    value: float,
    *,
    low: float = -math.inf,
    high: float = math.inf,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return `value` as a float, or raise ValueError naming `name` if it is not a finite
    real number inside the interval (low, high), each end open or closed as asked."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ValueError(f"{name} must lie in {interval}, got {value!r}")
    return float(value)


def check_schedule(ctx: StepContext, policy: str) -> int:
    """Return ctx.steps_per_block, or raise if a scheduled policy was called without one."""
    steps = ctx.steps_per_block
    if steps is None or isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"{policy} needs a step schedule: ctx.steps_per_block must be an int >= 1, "
            f"got {steps!r}"
        )
    return steps


# ---------------------------------------------------------------------------------------
# token proposal


def gumbel_argmax(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """Sample from softmax(logits / temperature) with the Gumbel-max trick, in float64.

    LLaDA's `add_gumbel_noise` computes argmax(exp(l) / (-log u) ** T) with u ~ U[0, 1) in
    float64 (low-precision Gumbel noise is known to hurt generation quality). We take the
    log of that expression, l - T * log(-log u): the same argmax for the same u, but it
    cannot overflow for large logits. logits [B, L, V] -> tokens [B, L] long.
    """
    u = torch.rand(logits.shape, generator=generator, dtype=torch.float64, device=logits.device)
    return (logits.double() - temperature * torch.log(-torch.log(u))).argmax(dim=-1)


def propose(
    logits: Tensor, candidates: Tensor, temperature: float, generator: torch.Generator | None
) -> Proposal:
    """Choose a token at every row (argmax, or a tempered sample) and its confidence.

    Confidence is the probability of the chosen token under the model's own distribution
    (softmax of the raw logits in float32, no temperature), as LLaDA and Fast-dLLM rank by.
    logits [B, L, V] any float dtype; candidates [B, L] bool, True = still masked and
    committable.
    """
    log_probs = logits.float().log_softmax(dim=-1)  # [B, L, V]
    if temperature == 0.0:
        tokens = logits.argmax(dim=-1)  # [B, L]
    else:
        tokens = gumbel_argmax(logits, temperature, generator)
    confidence = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).exp()  # [B, L]
    confidence = confidence.masked_fill(~candidates, 0.0)
    return Proposal(tokens=tokens, confidence=confidence, log_probs=log_probs)


def token_entropy(log_probs: Tensor) -> Tensor:
    """Entropy in nats of each row's distribution. log_probs [B, L, V] -> [B, L].
    `entr` is -p log p with 0 at p = 0, so vocab entries with -inf logits are harmless."""
    return torch.special.entr(log_probs.exp()).sum(dim=-1)


# ---------------------------------------------------------------------------------------
# selection helpers


def rank_candidates(scores: Tensor, candidates: Tensor) -> Tensor:
    """Rank of every row by descending score, candidates before all non-candidates.
    Ties go to the leftmost row (stable sort), so results do not depend on how a backend's
    topk breaks ties. scores [B, L] float; candidates [B, L] bool -> ranks [B, L] long."""
    floor = torch.finfo(scores.dtype).min
    keyed = scores.clamp(min=floor).masked_fill(~candidates, -math.inf)  # -inf only off-candidate
    order = keyed.argsort(dim=-1, descending=True, stable=True)  # [B, L]: row index by rank
    positions = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, positions)


def top_k_commit(scores: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """True at the k highest-scoring candidates of each row, with k clipped to
    [1, number of candidates] so that a row with candidates always commits one and a row
    without commits none. scores [B, L]; candidates [B, L] bool; k [B] int -> [B, L] bool."""
    n_candidates = candidates.sum(dim=-1)  # [B]
    k = torch.minimum(k.long().clamp(min=1), n_candidates)
    return (rank_candidates(scores, candidates) < k.unsqueeze(-1)) & candidates


def leading_true_count(passes: Tensor) -> Tensor:
    """Length of the leading run of True in each row. passes [B, L] bool -> [B] long."""
    return passes.long().cumprod(dim=-1).sum(dim=-1)


# ---------------------------------------------------------------------------------------
# the policy interface


class UnmaskingPolicy(abc.ABC):
    """Decides, at each step, which masked rows of the block are committed.

    Guarantees, for any input: no non-candidate is committed; each batch row with at least
    one candidate commits at least one (so decoding terminates); a row without candidates
    commits nothing. Vectorised over the batch; no host syncs.
    """

    needs_schedule: ClassVar[bool] = False  # True = __call__ requires ctx.steps_per_block

    def __init__(self, temperature: float = 0.0) -> None:
        self.temperature = check_number("temperature", temperature, low=0.0)

    def __call__(self, logits: Tensor, candidates: Tensor, ctx: StepContext) -> Commit:
        """logits [B, L, V] raw, aligned to rows; candidates [B, L] bool, True = still
        masked and may be committed this step."""
        if candidates.shape != logits.shape[:-1] or candidates.dtype != torch.bool:
            raise ValueError(
                f"candidates must be a bool tensor of shape {tuple(logits.shape[:-1])}, "
                f"got {candidates.dtype} {tuple(candidates.shape)}"
            )
        if self.needs_schedule:
            check_schedule(ctx, type(self).__name__)
        proposal = propose(logits, candidates, self.temperature, ctx.generator)
        commit = self.select(proposal, candidates, ctx) & candidates
        return Commit(tokens=proposal.tokens, commit=commit, confidence=proposal.confidence)

    @abc.abstractmethod
    def select(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        """[B, L] bool, True = commit this row now. Must commit at least one candidate in
        every row that has one (top_k_commit does); __call__ masks out non-candidates."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"
