"""Policies that decide how many rows to commit from the model's confidence alone
(`needs_schedule = False`): the number of steps per block is an outcome, not an input.

Each one computes a per-row count k and commits the k most confident candidates (at
least one), so they differ only in how k is read off the sorted confidences.

Shapes: B batch, L rows (block positions), V vocabulary.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import (
    Proposal,
    StepContext,
    UnmaskingPolicy,
    check_number,
    leading_true_count,
    rank_candidates,
    token_entropy,
    top_k_commit,
)


def sorted_by_rank(values: Tensor, ranks: Tensor) -> Tensor:
    """values [B, L] reordered so that column r holds the row of rank r."""
    return torch.empty_like(values).scatter_(-1, ranks, values)


class Threshold(UnmaskingPolicy):
    """Fast-dLLM's confidence threshold (and SDAR's `low_confidence_dynamic`): commit every
    candidate whose confidence is >= threshold, and always at least the most confident."""

    def __init__(
        self, threshold: float = 0.9, temperature: float = 0.0, *, top_k: int | None = None, top_p: float | None = None,
        logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False
    ) -> None:
        super().__init__(
            temperature=temperature, top_k=top_k, top_p=top_p, logits_eos_inf=logits_eos_inf,
            confidence_eos_eot_inf=confidence_eos_eot_inf
        )
        self.threshold = check_number("threshold", threshold, low=0.0, high=1.0, low_open=True)

    def select(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        # the candidates above the bar, and always the most confident candidate (left-most on ties), which is
        # above the bar whenever any is; a row without candidates gets a non-candidate, which __call__ masks out
        conf = torch.where(candidates, proposal.confidence, -1.0)  # [B, L]; threshold > 0 > -1
        return (conf >= self.threshold).scatter_(-1, conf.argmax(-1, keepdim=True), True)


class Factor(UnmaskingPolicy):
    """Fast-dLLM's factor rule: with candidate confidences sorted c_1 >= c_2 >= ... >= c_N,
    commit the n most confident, n the largest with c_m >= 1 - factor / (m + 1) for every
    m <= n (equivalently (m + 1)(1 - c_m) <= factor); n = 1 always passes.

    What the published code does (NVlabs/Fast-dLLM, llada/generate.py,
    `get_transfer_index_dynamic`), and how this class follows it:

    - The test is `c_n < 1 - factor / (n + 1)` -> stop, i.e. a candidate passes on
      equality (<=, not the strict < of the paper's prose). Followed; c_n is compared in
      float64 as there.
    - The threshold for n = 1 is replaced by -1, so the first candidate always passes.
      Followed. Because c_n falls and 1 - f/(n+1) rises with n, passing is a prefix.
    - Off-by-one: after the scan, `if top_i == 0 or top_i == N - 1: top_i += 1`. When
      only the last sorted candidate fails, the scan stops at N - 1 and this bumps it to
      N, so that candidate is committed too (in particular any two remaining candidates
      are always committed together). `reference_off_by_one=True` (default) reproduces
      this; False applies the rule as stated above.
    - The reference loops over batch rows in Python; this is the vectorised equivalent.
    """

    def __init__(
        self, factor: float = 1.0, temperature: float = 0.0, reference_off_by_one: bool = True,
        *, top_k: int | None = None, top_p: float | None = None,
        logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False
    ) -> None:
        super().__init__(
            temperature=temperature, top_k=top_k, top_p=top_p, logits_eos_inf=logits_eos_inf,
            confidence_eos_eot_inf=confidence_eos_eot_inf
        )
        self.factor = check_number("factor", factor, low=0.0, low_open=True)
        if not isinstance(reference_off_by_one, bool):
            raise ValueError(f"reference_off_by_one must be a bool, got {reference_off_by_one!r}")
        self.reference_off_by_one = reference_off_by_one

    def select(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        ranks = rank_candidates(proposal.confidence, candidates)  # [B, L]
        c = sorted_by_rank(proposal.confidence.double(), ranks)  # [B, L] descending over candidates
        n = torch.arange(1, c.shape[-1] + 1, device=c.device, dtype=torch.float64)  # [L]
        passes = (c >= 1.0 - self.factor / (n + 1.0)) | (n == 1)  # [B, L] True = c_n passes
        n_candidates = candidates.sum(dim=-1)  # [B]
        k = torch.minimum(leading_true_count(passes), n_candidates)  # [B]
        if self.reference_off_by_one:
            k = torch.where(k == n_candidates - 1, n_candidates, k)
        return top_k_commit(proposal.confidence, candidates, k)


class EBSampler(UnmaskingPolicy):
    """EB-sampler (Ben-Hamu et al. 2025, "Accelerated Sampling from Masked Diffusion
    Models via Entropy Bounded Unmasking"): sort candidates by confidence, descending, and
    commit the largest prefix U with sum_{j in U} H_j - max_{j in U} H_j <= gamma, where
    H_j is the entropy (nats) of row j's distribution; at least one row.

    The bound tolerates the dependence error of committing U jointly: with gamma = 0 only
    rows whose distributions are (jointly) deterministic are committed together.

    Default gamma = 0.1. The paper's own default could not be confirmed here: it reports
    sweeps over gamma; two public re-implementations use 0.1 (the Info-Gain sampler's
    `generate_with_eb_sampler` default and UNI-D2's EB-sampler example run), and JetEngine
    exposes it as `eb_threshold`. The paper also allows ranking by entropy or margin; this
    class ranks by confidence, as the design notes specify.
    """

    def __init__(
        self, gamma: float = 0.1, temperature: float = 0.0, *, top_k: int | None = None, top_p: float | None = None,
        logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False
    ) -> None:
        super().__init__(
            temperature=temperature, top_k=top_k, top_p=top_p, logits_eos_inf=logits_eos_inf,
            confidence_eos_eot_inf=confidence_eos_eot_inf
        )
        self.gamma = check_number("gamma", gamma, low=0.0)

    def select(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        ranks = rank_candidates(proposal.confidence, candidates)  # [B, L]
        entropy = token_entropy(proposal.log_probs).double().masked_fill(~candidates, 0.0)
        h = sorted_by_rank(entropy, ranks)  # [B, L] in confidence order, candidates first
        excess = h.cumsum(dim=-1) - h.cummax(dim=-1).values  # [B, L]: sum - max over prefix
        k = leading_true_count(excess <= self.gamma)  # [B]
        return top_k_commit(proposal.confidence, candidates, k)


__all__ = ["Threshold", "Factor", "EBSampler"]
