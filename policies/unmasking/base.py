"""What every unmasking policy shares: the step context it is handed, the commit it
returns, token proposal (greedy, or Gumbel-max sampling with temperature, top-k and top-p;
EOS controls) and per-row top-k selection.

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
from functools import cached_property
from typing import Any, ClassVar, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class StepContext:
    """Where the decoder is within the current block when it asks for a commit, and the
    sources of randomness and special token ids the policy may need.

    Randomness: draw it through `rand` (or `gumbel_argmax`), never from torch's global
    generator. With `generators` (one per sequence, as the decoder passes them when
    `generate(..., seed=)` is given) sequence b draws only from generator b, with the
    shape of its own rows, so its tokens do not depend on the rest of the batch. Without,
    `generator` (None: torch's default) serves the whole batch at once.
    """

    step: int | Tensor  # index of this step within the current block, 0-based (int or [B] long)
    steps_per_block: int | None  # steps budgeted for this block; None = no schedule
    n_masked_at_block_start: Tensor  # [B] long: masked positions of the block at block start
    generator: torch.Generator | None = None  # one source of randomness for the whole batch
    generators: Sequence[torch.Generator] | None = None  # one per sequence (wins over `generator`)
    eos_ids: tuple[int, ...] = ()  # the model's end-of-text ids (logits_eos_inf bans them)
    eot_ids: tuple[int, ...] = ()  # its end-of-turn ids (confidence_eos_eot_inf: with eos_ids)

    def rand(self, shape: Sequence[int], *, dtype: torch.dtype = torch.float32,
             device: torch.device | str | None = None) -> Tensor:
        """Uniform [0, 1) draws of `shape` = [B, ...]; with `generators`, row b of the result is
        drawn from generator b alone (shape[1:] per sequence)."""
        shape = tuple(shape)
        if self.generators is None:
            return torch.rand(shape, generator=self.generator, dtype=dtype, device=device)
        if len(self.generators) != shape[0]:
            raise ValueError(f"ctx.generators holds {len(self.generators)} generators for a batch of {shape[0]}")
        return torch.stack([torch.rand(shape[1:], generator=g, dtype=dtype, device=device) for g in self.generators])


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
    scores: Tensor  # [B, L, V] float32: the raw logits (banned ids at -inf)

    @cached_property
    def log_probs(self) -> Tensor:
        """[B, L, V] float32: log_softmax of the raw logits (no temperature), computed when a policy reads it."""
        return self.scores.log_softmax(dim=-1)


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


def check_optional_int(name: str, value: Any, low: int = 1) -> int | None:
    """None, or `value` as an int >= low; ValueError naming `name` otherwise."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be None or an int >= {low}, got {value!r}")
    return int(value)


def check_flag(name: str, value: Any) -> bool:
    """`value` if it is a bool; ValueError naming `name` otherwise."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


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


def _gumbel_max(logits: Tensor, temperature: float, u: Tensor) -> Tensor:
    return (logits.double() - temperature * torch.log(-torch.log(u))).argmax(dim=-1)


def gumbel_argmax(logits: Tensor, temperature: float, rng: "StepContext | torch.Generator | None") -> Tensor:
    """Sample from softmax(logits / temperature) with the Gumbel-max trick, in float64.

    LLaDA's `add_gumbel_noise` computes argmax(exp(l) / (-log u) ** T) with u ~ U[0, 1) in
    float64 (low-precision Gumbel noise is known to hurt generation quality). We take the
    log of that expression, l - T * log(-log u): the same argmax for the same u, but it
    cannot overflow for large logits. logits [B, L, V] -> tokens [B, L] long. rng: a
    StepContext (per-sequence generators: sequence b draws u [L, V] from its own, one
    sequence at a time, which also bounds the float64 noise to one sequence's worth), or
    one generator for the whole batch.
    """
    if isinstance(rng, StepContext) and rng.generators is not None:
        if len(rng.generators) != logits.shape[0]:
            raise ValueError(f"ctx.generators holds {len(rng.generators)} generators for a batch of {logits.shape[0]}")
        return torch.stack([
            _gumbel_max(logits[b], temperature,
                        torch.rand(logits.shape[1:], generator=g, dtype=torch.float64, device=logits.device))
            for b, g in enumerate(rng.generators)])
    gen = rng.generator if isinstance(rng, StepContext) else rng
    return _gumbel_max(logits, temperature,
                       torch.rand(logits.shape, generator=gen, dtype=torch.float64, device=logits.device))


def sampling_support(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None) -> Tensor | None:
    """[B, L, V] bool, True = the token may be sampled under top-k and top-p (None: every token may).

    As Dream's `sample_tokens` (`top_p_logits`, `top_k_logits`), on the tempered logits
    l / T: top-p keeps the most probable tokens up to and including the first whose
    cumulative probability exceeds top_p (top_p >= 1 keeps all); top-k keeps every token
    whose logit is >= the k-th largest (ties kept); both given, a token must pass both.
    """
    keep = None
    if top_p is not None and top_p < 1.0:
        ordered, order = (logits.float() / temperature).sort(dim=-1, descending=True)
        beyond = ordered.softmax(dim=-1).cumsum(dim=-1) > top_p  # [B, L, V] in sorted order
        drop = torch.nn.functional.pad(beyond[..., :-1], (1, 0), value=False)  # shift: keep the crossing token
        keep = torch.empty_like(drop).scatter_(-1, order, ~drop)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]  # [B, L, 1]
        keep = logits >= kth if keep is None else keep & (logits >= kth)
    return keep


def propose(
    logits: Tensor,
    candidates: Tensor,
    temperature: float = 0.0,
    rng: "StepContext | torch.Generator | None" = None,
    *,
    top_k: int | None = None,
    top_p: float | None = None,
    banned: Sequence[int] = (),
    unconfident: Sequence[int] = (),
) -> Proposal:
    """Choose a token at every row (argmax, or a tempered sample) and its confidence.

    Confidence is the probability of the chosen token under the model's own distribution
    (softmax of the raw logits in float32, no temperature, top-k or top-p), as LLaDA and
    Fast-dLLM rank by. logits [B, L, V] any float dtype; candidates [B, L] bool, True =
    still masked and committable. rng: the step's StepContext (its per-sequence
    generators) or one generator. Sampling (temperature > 0) draws from
    softmax(logits / temperature) restricted to `sampling_support(top_k, top_p)`; greedy
    ignores top-k and top-p (the argmax always passes both).

    banned: token ids whose logits are -inf before anything else (LLaDA's `logits_eos_inf`),
    so they are never chosen and the distribution is renormalised without them.
    unconfident: token ids that never win on confidence (LLaDA's `confidence_eos_eot_inf`):
    the confidence is then the chosen token's probability with these ids' logits at -inf,
    i.e. 0 when one of them was chosen and renormalised without them otherwise.
    """
    if banned:
        logits = logits.index_fill(-1, torch.as_tensor(list(banned), device=logits.device), float("-inf"))
    scores = logits if logits.dtype == torch.float32 else logits.float()  # [B, L, V]
    probs = scores.softmax(dim=-1)  # as LLaDA's and Fast-dLLM's loops compute the confidence
    if temperature == 0.0:
        tokens = logits.argmax(dim=-1)  # [B, L]
        confidence = probs.amax(dim=-1)  # the argmax's probability: exp(0) / sum, the row's largest
    else:
        support = sampling_support(logits, temperature, top_k, top_p)
        sample_from = logits if support is None else logits.masked_fill(~support, float("-inf"))
        tokens = gumbel_argmax(sample_from, temperature, rng)
        confidence = probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # [B, L]
    if unconfident:
        ids = torch.as_tensor(list(unconfident), device=logits.device)
        ranked = scores.index_fill(-1, ids, float("-inf")).softmax(dim=-1)  # NaN: nothing else left
        confidence = ranked.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).nan_to_num(0.0)
    confidence = torch.where(candidates, confidence, 0.0)
    return Proposal(tokens=tokens, confidence=confidence, scores=scores)


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
    keyed = torch.where(candidates, scores.clamp(min=floor), -math.inf)  # -inf only off-candidate
    order = keyed.argsort(dim=-1, descending=True, stable=True)  # [B, L]: row index by rank
    return order.argsort(dim=-1)  # the inverse permutation: rank by row index


def top_k_commit(scores: Tensor, candidates: Tensor, k: Tensor) -> Tensor:
    """True at the k highest-scoring candidates of each row, with k clipped to
    [1, number of candidates] so that a row with candidates always commits one and a row
    without commits none. scores [B, L]; candidates [B, L] bool; k [B] int -> [B, L] bool."""
    n_candidates = candidates.sum(dim=-1)  # [B]
    k = torch.minimum((k if k.dtype == torch.long else k.long()).clamp(min=1), n_candidates)
    return rank_candidates(scores, candidates) < k[:, None]  # candidates hold the first ranks, and k <= their count


def sampled_ranking(scores: Tensor, temperature: float, ctx: StepContext) -> Tensor:
    """Scores whose top-k is a sample of k rows without replacement from softmax(scores / temperature)
    over the candidates (Gumbel-top-k: scores / T + Gumbel noise, float64, drawn through `ctx.rand`).

    The same distribution as Dream's `alg_temp` selection, torch.multinomial(softmax(confidence
    / alg_temp), k) without replacement. scores [B, L] -> [B, L] float64.
    """
    u = ctx.rand(scores.shape, dtype=torch.float64, device=scores.device)
    return scores.double() / temperature - torch.log(-torch.log(u))


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

    def __init__(self, temperature: float = 0.0, *, top_k: int | None = None, top_p: float | None = None,
                 logits_eos_inf: bool = False, confidence_eos_eot_inf: bool = False) -> None:
        """Token proposal options, shared by every policy (each subclass's constructor lists and passes them on,
        so that Hydra configs mirror every argument):

        temperature: 0 = argmax; > 0 = sample from softmax(logits / temperature) (Gumbel-max, float64);
        top_k, top_p: with temperature > 0, sample only among the k most likely tokens / the nucleus
            of probability top_p (Dream's `sample_tokens`); None = no restriction;
        logits_eos_inf: the model's end-of-text logits are -inf before anything else (LLaDA's option);
        confidence_eos_eot_inf: end-of-text and end-of-turn tokens never win on confidence (LLaDA's
            option; see `propose`). Both take their ids from the StepContext (the decoder passes the model's).
        """
        self.temperature = check_number("temperature", temperature, low=0.0)
        self.top_k = check_optional_int("top_k", top_k)
        self.top_p = None if top_p is None else check_number("top_p", top_p, low=0.0, high=1.0, low_open=True)
        self.logits_eos_inf = check_flag("logits_eos_inf", logits_eos_inf)
        self.confidence_eos_eot_inf = check_flag("confidence_eos_eot_inf", confidence_eos_eot_inf)

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
        proposal = propose(logits, candidates, self.temperature, ctx, top_k=self.top_k, top_p=self.top_p,
                           **self._special_ids(ctx))
        commit = self.select(proposal, candidates, ctx) & candidates
        return Commit(tokens=proposal.tokens, commit=commit, confidence=proposal.confidence)

    @abc.abstractmethod
    def select(self, proposal: Proposal, candidates: Tensor, ctx: StepContext) -> Tensor:
        """[B, L] bool, True = commit this row now. Must commit at least one candidate in
        every row that has one (top_k_commit does); __call__ masks out non-candidates."""

    def _special_ids(self, ctx: StepContext) -> dict[str, tuple[int, ...]]:
        """propose's `banned` and `unconfident` ids under the EOS options, from ctx."""
        if self.logits_eos_inf and not ctx.eos_ids:
            raise ValueError("logits_eos_inf=True needs the model's end-of-text ids in ctx.eos_ids "
                             "(the decoder passes ModelConfig.eos_ids; this model has none)")
        if self.confidence_eos_eot_inf and not (ctx.eos_ids or ctx.eot_ids):
            raise ValueError("confidence_eos_eot_inf=True needs the model's end-of-text / end-of-turn ids in "
                             "ctx.eos_ids, ctx.eot_ids (the decoder passes ModelConfig.eos_ids; this model has none)")
        return {"banned": ctx.eos_ids if self.logits_eos_inf else (),
                "unconfident": (*ctx.eos_ids, *ctx.eot_ids) if self.confidence_eos_eot_inf else ()}

    def __repr__(self) -> str:
        """Constructor arguments; the sampling options only where they differ from their defaults."""
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if _QUIET_DEFAULTS.get(k, _SHOWN) != v)
        return f"{type(self).__name__}({args})"


_SHOWN = object()
_QUIET_DEFAULTS: dict[str, Any] = {"top_k": None, "top_p": None, "logits_eos_inf": False,
                                   "confidence_eos_eot_inf": False, "alg_temp": 0.0}
