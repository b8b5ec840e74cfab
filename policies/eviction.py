"""Eviction policies: which rows keep being computed through the layers of a step.

* `RankingEviction` -- FOCUS's keep rule (gate / top-K under a budget, adjacency, progress
  mark; `focuslib.kernels.focus_select`) over a pluggable row score (`SCORES`): the importance delta
  between layers 0 and `layer` (FOCUS), layer importance alone, stale confidence,
  position, random, or an oracle. Swapping only the score answers "does importance matter?".
* `Focus`  -- `RankingEviction` with the importance-delta score: FOCUS as its authors' code
  runs it (docs/design.md, "FOCUS"); every rule that differed in earlier focuslib versions
  is an option, so an ablation can switch them one at a time.
* `DyLLM`  -- cosine saliency: each layer recomputes only the rows whose input changed or
  whose attention context drifted; the rest reuse cached results (its own `LayerRunner`).
* `Stack`  -- several policies in one config (`eviction=[Focus(), DyLLM()]` in Python).

`eviction=None` (conf/eviction/none.yaml) means no eviction.

Shapes: B batch, L rows, S block slots, T positions (+1 trash column), H heads,
G kv heads, D head dim, C width.
"""
from __future__ import annotations

import abc
import numbers
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Sequence

import torch
from torch import Tensor

from focuslib.contract import (
    BudgetPolicy, CommitView, EvictionPolicy, LayerCall, LayerOutput, LayerRunner, LayerView, Projection,
)
from focuslib.layer import attend_rows, finish_rows, packed_rope, project_rows
from focuslib.rows import Rows
from focuslib.kernels import compact_rows, dyllm_update_and_cosine, focus_select, gather_rows, masked_importance

if TYPE_CHECKING:
    from focuslib.model import ModelConfig


def _choice(owner: str, name: str, value: Any, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{owner} {name} must be one of {list(allowed)}, got {value!r}")
    return value


def _positive_int(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{owner} {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _window(owner: str, window: Any) -> int:
    if isinstance(window, bool) or not isinstance(window, numbers.Integral) or window < 1 or window % 2 == 0:
        raise ValueError(f"{owner} window must be an odd int >= 1, got {window!r}")
    return int(window)


# ----------------------------------------------------------------------------- row scores


class RowScore(abc.ABC):
    """Ranks the still-masked rows of the block at the eviction layer: higher = more worth computing.

    `observe` sees every layer before the eviction layer (at its Q/K/V point); `score`
    returns [B, L] float over the rows at the eviction layer (only masked rows matter).
    `exact = True` makes the ranking policy keep exactly the rows with a positive score.
    """

    exact: ClassVar[bool] = False
    needs_dense_commits: ClassVar[bool] = False

    def begin(self, batch: int, positions: int, device: torch.device) -> Any:
        return None

    def observe(self, view: LayerView, state: Any) -> None:
        """Called at the Q/K/V point of each layer before the eviction layer."""

    @abc.abstractmethod
    def score(self, view: LayerView, state: Any) -> Tensor:
        """[B, L] float over the rows at the eviction layer."""

    def after_step(self, commit: CommitView, state: Any) -> None:
        """Called once per step with the unmasking decision."""

    def see_dense_commits(self, state: Any, committed: Tensor) -> None:
        """Only for needs_dense_commits: committed [B, T] bool, what dense decoding commits at this step."""


class LayerImportance(RowScore):
    """FOCUS importance at the eviction layer alone ("imp1"): attention the row receives from the masked set."""

    def __init__(self, window: int = 3, round_to_model_dtype: bool = True) -> None:
        self.window = _window(type(self).__name__, window)
        self.round_to_model_dtype = bool(round_to_model_dtype)

    def importance(self, view: LayerView) -> Tensor:
        """[B, L] float32 importance of the masked rows at this view's layer (0 elsewhere)."""
        dtype = view.q.dtype if self.round_to_model_dtype else None
        return masked_importance(view.q, view.k, view.masked, self.window, round_to=dtype, width=view.masked_width)

    def score(self, view: LayerView, state: Any) -> Tensor:
        return self.importance(view)


class ImportanceDelta(LayerImportance):
    """FOCUS: importance at the eviction layer minus importance at layer 0 (rows whose importance grew)."""

    def begin(self, batch: int, positions: int, device: torch.device) -> dict[str, Tensor]:
        return {"imp0": torch.zeros(batch, positions + 1, device=device)}  # [B, T+1] by position

    def observe(self, view: LayerView, state: dict[str, Tensor]) -> None:
        if view.layer == 0:
            state["imp0"] = view.rows.by_position(self.importance(view), view.step.positions, 0.0)

    def score(self, view: LayerView, state: dict[str, Tensor]) -> Tensor:
        return self.importance(view) - state["imp0"].gather(1, view.rows.pos)


class StaleConfidence(LayerImportance):
    """Each row's confidence at the last step it produced logits; rows that never did rank by imp1.

    The fallback is the row's importance at the eviction layer divided by the largest
    importance among the block's masked rows, so it lies in [0, 1] like a confidence.
    """

    def begin(self, batch: int, positions: int, device: torch.device) -> Tensor:
        return torch.full((batch, positions), float("nan"), device=device)  # [B, T] last confidence

    def score(self, view: LayerView, state: Tensor) -> Tensor:
        imp = self.importance(view)
        fallback = imp / imp.amax(1, keepdim=True).clamp(min=1e-12)
        stale = state.gather(1, view.rows.pos)
        return torch.where(torch.isnan(stale), fallback, stale)

    def after_step(self, commit: CommitView, state: Tensor) -> None:
        seen = commit.masked & commit.has_logits
        current = state.gather(1, commit.slots)
        state.scatter_(1, commit.slots, torch.where(seen, commit.confidence.float(), current))


class Leftmost(RowScore):
    """Position: the left-most masked rows first (the control against which importance must be judged)."""

    def score(self, view: LayerView, state: Any) -> Tensor:
        return -view.rows.pos.float()


class RandomScore(RowScore):
    """Uniform random scores from a generator seeded per generate call."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = _positive_int("RandomScore", "seed", seed, 0)

    def begin(self, batch: int, positions: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(self.seed)

    def score(self, view: LayerView, state: torch.Generator) -> Tensor:
        return torch.rand(view.rows.pos.shape, generator=state, device=view.rows.pos.device)


class Oracle(RowScore):
    """Keeps exactly the rows dense decoding commits at this step (the decoder runs the step densely first).

    For analysis only: it doubles the work of every step. It bounds what any score can achieve.
    """

    exact = True
    needs_dense_commits = True

    def begin(self, batch: int, positions: int, device: torch.device) -> dict[str, Tensor]:
        return {"committed": torch.zeros(batch, positions, dtype=torch.bool, device=device)}

    def see_dense_commits(self, state: dict[str, Tensor], committed: Tensor) -> None:
        state["committed"] = committed

    def score(self, view: LayerView, state: dict[str, Tensor]) -> Tensor:
        return state["committed"].gather(1, view.rows.pos).float()


SCORES: dict[str, type[RowScore]] = {
    "importance_delta": ImportanceDelta,
    "imp1": LayerImportance,
    "stale_confidence": StaleConfidence,
    "leftmost": Leftmost,
    "random": RandomScore,
    "oracle": Oracle,
}


def build_score(score: str | RowScore, window: int, round_to_model_dtype: bool, seed: int) -> RowScore:
    """A RowScore from its name in SCORES (given the ranking policy's options), or the instance itself."""
    if isinstance(score, RowScore):
        return score
    cls = SCORES.get(score) if isinstance(score, str) else None
    if cls is None:
        raise ValueError(f"unknown eviction score {score!r}; known: {sorted(SCORES)} or a RowScore instance")
    if issubclass(cls, LayerImportance):
        return cls(window=window, round_to_model_dtype=round_to_model_dtype)
    return cls(seed=seed) if cls is RandomScore else cls()


# ----------------------------------------------------------------------------- ranking eviction (FOCUS)


@dataclass
class _RankingState:
    score: Any  # the score's own per-call state
    mark: Tensor  # [B] long, furthest block slot computed past the eviction layer in this block (-1: none)
    scores: Tensor  # [B, T] float, this step's score of each masked row (NaN elsewhere), for traces


class RankingEviction(EvictionPolicy):
    """Keep the block's masked rows that a score ranks highest; the rest skip the remaining layers.

    At layer `layer` every still-masked row of the current block gets a score; with budget
    K [B] from the budget policy, `focuslib.kernels.focus_select` keeps (if |M| > K) the rows at or
    above mean + std of the scores when there are at least K of them, else the top K, plus
    the left neighbour of each kept row, plus -- progress rule -- evicted rows left of the
    right-most kept row that no earlier step of the block computed. Unmasked rows and rows
    outside the block are always kept; evicted rows produce no logits at this step.

    Options (defaults = the FOCUS authors' code; the alternatives are focuslib's earlier rules):
      eviction_point  "qkv": inside layer `layer`, after its Q/K/V and RoPE, before attention;
                      "output": after layer `layer` has run on every row.
      evicted_keys    "stale": evicted rows' K/V from earlier steps stay visible to kept rows up
                      to the right-most kept row of the block, keys right of it are hidden;
                      "hidden": evicted rows vanish as keys.
      progress_rule   "mark": see above; "fill": keep every row from the first still-masked one
                      to the right-most kept row.
      gate_std        "population" (divide by n) or "sample" (n - 1).
      round_to_model_dtype  importance rounded to the model dtype before the delta (True) or float32.

    Logit-shifted models (Dream: position p is predicted by the row at p - 1): rows are scored
    as tokens, and a kept masked position also keeps its predictor row p - 1.
    """

    uses_budget = True

    def __init__(self, score: str | RowScore = "importance_delta", layer: int = 1, window: int = 3, *,
                 eviction_point: str = "qkv", evicted_keys: str = "stale", progress_rule: str = "mark",
                 gate_std: str = "population", round_to_model_dtype: bool = True, seed: int = 0) -> None:
        name = type(self).__name__
        self.layer = _positive_int(name, "layer", layer, 1)
        self.window = _window(name, window)
        self.eviction_point = _choice(name, "eviction_point", eviction_point, ("qkv", "output"))
        self.evicted_keys = _choice(name, "evicted_keys", evicted_keys, ("stale", "hidden"))
        self.progress_rule = _choice(name, "progress_rule", progress_rule, ("mark", "fill"))
        self.gate_std = _choice(name, "gate_std", gate_std, ("population", "sample"))
        self.round_to_model_dtype = bool(round_to_model_dtype)
        self.score = build_score(score, self.window, self.round_to_model_dtype, seed)
        self.score_name = score if isinstance(score, str) else type(score).__name__

    @property
    def needs_dense_commits(self) -> bool:  # type: ignore[override]
        return self.score.needs_dense_commits

    def check(self, cfg: "ModelConfig") -> None:
        """Reject a model too shallow for `layer` when the decoder is built, not at the first step."""
        if self.layer >= cfg.n_layers:
            raise ValueError(f"{type(self).__name__}(layer={self.layer}) needs a model with more than {self.layer} "
                             f"layers; this one has {cfg.n_layers}")

    def begin(self, batch: int, positions: int, device: torch.device) -> _RankingState:
        return _RankingState(score=self.score.begin(batch, positions, device),
                             mark=torch.full((batch,), -1, dtype=torch.long, device=device),
                             scores=torch.full((batch, positions), float("nan"), device=device))

    def at_qkv(self, view: LayerView, state: _RankingState, budget: BudgetPolicy | None) -> Tensor | None:
        if view.layer < self.layer:
            self.score.observe(view, state.score)
        elif view.layer == self.layer and self.eviction_point == "qkv":
            return self._select(view, state, budget)
        return None

    def after_layer(self, view: LayerView, state: _RankingState, budget: BudgetPolicy | None) -> Tensor | None:
        if view.layer == self.layer and self.eviction_point == "output":
            return self._select(view, state, budget)
        return None

    def after_step(self, commit: CommitView, state: _RankingState) -> None:
        self.score.after_step(commit, state.score)

    def see_dense_commits(self, state: _RankingState, committed: Tensor) -> None:
        self.score.see_dense_commits(state.score, committed)

    def trace_columns(self, state: _RankingState) -> dict[str, Tensor]:
        return {"score": state.scores}

    def trace_importance(self) -> tuple[tuple[int, int], int]:
        return (0, self.layer), self.window

    def _select(self, view: LayerView, state: _RankingState, budget: BudgetPolicy | None) -> Tensor:
        """Keep mask [B, L] over the rows, computed on the block's slots; also advances the progress mark."""
        assert budget is not None
        scores = self.score.score(view, state.score).float()  # [B, L]
        state.scores = view.rows.by_position(torch.where(view.masked, scores, torch.nan), view.step.positions,
                                             float("nan"))[:, :-1]
        row_of = view.block_rows()  # [B, S]
        has_row = row_of >= 0
        slot_row = row_of.clamp(min=0)
        masked = has_row & view.masked.gather(1, slot_row)  # [B, S] masked slots with a row
        score_s = torch.where(masked, scores.gather(1, slot_row), 0.0)
        state.mark = torch.where(view.step.step_in_block == 0, -1, state.mark)
        if self.score.exact:
            keep_s = ~masked | (score_s > 0)
        else:
            progress = state.mark if self.progress_rule == "mark" else _first_true(masked)
            keep_s = focus_select(score_s, masked, budget(view.step), progress,
                                  gate_std=self.gate_std, progress_rule=self.progress_rule)
        slot = torch.arange(row_of.shape[1], device=row_of.device)
        rightmost = torch.where(has_row & keep_s, slot, -1).amax(1)  # [B] right-most computed slot
        state.mark = torch.maximum(state.mark, rightmost)
        b, l = view.rows.pos.shape
        keep = torch.ones(b, l + 1, dtype=torch.bool, device=scores.device)  # rows outside the block: kept
        keep.scatter_(1, torch.where(has_row, row_of, l), keep_s)  # slots without a row write column L
        keep = keep[:, :l]
        if view.step.logit_shift:  # Dream: a kept masked position needs its predictor row, p - 1
            kept_masked = view.rows.by_position(keep & view.masked, view.step.positions, False)[:, 1:]  # [B, T]
            keep = keep | kept_masked.gather(1, view.rows.pos)  # row p kept when position p + 1 is
        return keep

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(score={self.score_name!r}, layer={self.layer}, window={self.window}, "
                f"eviction_point={self.eviction_point!r}, evicted_keys={self.evicted_keys!r}, "
                f"progress_rule={self.progress_rule!r}, gate_std={self.gate_std!r}, "
                f"round_to_model_dtype={self.round_to_model_dtype})")


class Focus(RankingEviction):
    """FOCUS (importance-delta eviction) exactly as its authors' code runs it; see RankingEviction for the options."""


def _first_true(mask: Tensor) -> Tensor:
    """[B] index of the first True of mask [B, S] (S when there is none)."""
    s = mask.shape[1]
    return torch.where(mask, torch.arange(s, device=mask.device), s).amin(1)


# ----------------------------------------------------------------------------- DyLLM


class DyLLM(EvictionPolicy):
    """DyLLM: per layer, recompute only salient rows; reuse cached K/V, contexts and outputs for the rest.

    Per layer l, over the rows the cache mode asks for:
      1. rows whose input changed ("updated": at layer 0 the rows whose token changed
         since DyLLM last computed them, rows it never computed through every layer, and
         every row during the first `dense_steps` steps; at layer l > 0 the rows salient
         at layer l-1) get fresh Q/K/V, written into the K/V cache;
      2. the other rows update their cached attention context cheaply,
         c_new = c_old + softmax(q K^T) dV (dV non-zero only on updated rows), and
         become salient when cosine(c_new, context at their last recomputation) < tau;
      3. salient rows (updated ones included) get full attention and the FFN; the rest
         keep their cached layer output.
    Every `prompt_refresh` steps (0: never) prompt rows count as updated at layer 0.
    A row another policy evicts part-way keeps its caches; it is recomputed from scratch
    only if it never reached the last layer. row_layers counts salient rows only: the
    cheap context update of non-salient rows is not counted (one attention row, no
    projections and no FFN).
    """

    def __init__(self, tau: float = 0.99, dense_steps: int = 1, prompt_refresh: int = 0) -> None:
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real) or not tau > 0:
            raise ValueError(f"DyLLM tau must be a number > 0, got {tau!r}")
        self.dense_steps = _positive_int("DyLLM", "dense_steps", dense_steps, 0)
        self.prompt_refresh = _positive_int("DyLLM", "prompt_refresh", prompt_refresh, 0)
        self.tau = float(tau)

    def begin(self, batch: int, positions: int, device: torch.device) -> "_DyLLMRunner":
        return _DyLLMRunner(self)

    def runner(self, state: "_DyLLMRunner") -> LayerRunner:
        return state

    def __repr__(self) -> str:
        return f"DyLLM(tau={self.tau}, dense_steps={self.dense_steps}, prompt_refresh={self.prompt_refresh})"


class _DyLLMRunner(LayerRunner):
    """DyLLM's layer runner and per-call caches (steps 1-3 of the DyLLM docstring)."""

    def __init__(self, policy: DyLLM) -> None:
        self.policy = policy
        self.c: _DyLLMCaches | None = None

    def project(self, x: LayerCall) -> Projection:
        if self.c is None:
            self.c = _DyLLMCaches(x)
        c = self.c
        if x.index == 0:
            c.updated = self._layer0_updated(x, c)
        updated = c.updated.gather(1, x.rows.pos) & x.rows.valid  # [B, L] input changed since cached
        q_all, k_all, dv = c.refresh_qkv(x, updated)
        return Projection(q=q_all, k=k_all, extra=dv)  # dv [B, T+1, G, D] is indexed by position

    def complete(self, x: LayerCall, proj: Projection) -> LayerOutput:
        c = self.c
        assert c is not None
        updated = c.updated.gather(1, x.rows.pos) & x.rows.valid  # rows may have been evicted since project
        salient = updated | self._drifted(x, c, proj.q, proj.extra, x.rows.valid & ~updated)  # [B, L]
        h = c.recompute(x, proj.q, salient)  # [B, L, C]
        c.updated = x.rows.by_position(salient, c.trash, False)
        if x.index == x.layer.cfg.n_layers - 1:
            c.end_step(x.rows, x.step.tokens)
        return LayerOutput(h=h, computed=salient)

    def _layer0_updated(self, x: LayerCall, c: "_DyLLMCaches") -> Tensor:
        """[B, T+1] True = the position's embedding row must be recomputed at layer 0."""
        p, tokens = self.policy, x.step.tokens
        t = tokens.shape[1]
        changed = ~c.filled | (tokens != c.seen)  # [B, T]
        if c.step < p.dense_steps:
            changed = torch.ones_like(changed)
        elif p.prompt_refresh and c.step % p.prompt_refresh == 0:
            changed |= torch.arange(t, device=tokens.device) < x.step.prompt_len[:, None]
        return torch.nn.functional.pad(changed, (0, 1), value=False)

    def _drifted(self, x: LayerCall, c: "_DyLLMCaches", q_all: Tensor, dv: Tensor, rows: Tensor) -> Tensor:
        """[B, L] True = one of `rows` whose context moved: cosine(c_new, c_at_last_recompute) < tau.

        Also stores c_new as the rows' running context (c_old of the next step).
        """
        index, valid = compact_rows(rows)  # [B, N]
        if index.shape[1] == 0:
            return torch.zeros_like(rows)
        pos = torch.where(valid, gather_rows(x.rows.pos, index), c.trash)  # [B, N]
        width = x.mask.shape[-1]  # the keys the rows may reach (at most T+1)
        c_new, cos = dyllm_update_and_cosine(
            gather_rows(q_all, index), x.kv.k[:, :width], dv[:, :width], gather_rows(c.context[x.index], pos),
            gather_rows(c.reference[x.index], pos), gather_rows(x.mask, index))
        c.put(c.context[x.index], pos, c_new)
        l = rows.shape[1]
        out = torch.zeros(rows.shape[0], l + 1, dtype=torch.bool, device=rows.device)
        return out.scatter_(1, torch.where(valid, index, l), cos < self.policy.tau)[:, :l]  # padding -> column L


class _DyLLMCaches:
    """Per-layer caches of DyLLM, indexed by absolute position (column T is a trash column for padding rows).

    q, context, reference: [n_layers] x [B, T+1, H, D]; hidden: [n_layers] x [B, T+1, C]
    (a row's output of each layer = its input + cached attention output + cached FFN output).
    """

    def __init__(self, x: LayerCall) -> None:
        cfg = x.layer.cfg
        b, t = x.step.tokens.shape
        dev, dtype = x.h.device, x.h.dtype
        heads = (b, t + 1, cfg.n_heads, cfg.head_dim)
        self.q = [torch.zeros(heads, dtype=dtype, device=dev) for _ in range(cfg.n_layers)]
        self.context = [torch.zeros(heads, dtype=dtype, device=dev) for _ in range(cfg.n_layers)]
        self.reference = [torch.zeros(heads, dtype=dtype, device=dev) for _ in range(cfg.n_layers)]
        self.hidden = [torch.zeros(b, t + 1, cfg.dim, dtype=dtype, device=dev) for _ in range(cfg.n_layers)]
        self.filled = torch.zeros(b, t, dtype=torch.bool, device=dev)  # True = computed through every layer once
        self.seen = x.step.tokens.clone()  # [B, T] token each position had when it last reached the last layer
        self.updated = torch.zeros(b, t + 1, dtype=torch.bool, device=dev)  # [B, T+1] input changed at this layer
        self.trash, self.step = t, 0

    @staticmethod
    def put(buf: Tensor, pos: Tensor, values: Tensor) -> None:
        """buf[b, pos[b, n]] = values[b, n] (padding rows point at the trash column)."""
        batch = torch.arange(buf.shape[0], device=buf.device)[:, None]
        buf[batch, pos] = values.to(buf.dtype)

    def end_step(self, rows: Rows, tokens: Tensor) -> None:
        """Rows that reached the last layer have every cache filled for their current token."""
        last = rows.as_mask(self.trash)
        self.filled |= last
        self.seen = torch.where(last, tokens, self.seen)
        self.step += 1

    def refresh_qkv(self, x: LayerCall, updated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Q/K/V of updated rows; returns q, k of every row [B, L, ...] and dV [B, T+1, G, D] (0 off updated rows)."""
        sub, index = x.rows.select(updated)  # [B, U]; its packer knows the row count (no sync of its own)
        valid = sub.valid
        pos = torch.where(valid, sub.pos, self.trash)  # [B, U]
        dv = torch.zeros_like(x.kv.v)
        if index.shape[1]:
            rope = packed_rope(x.layer.cfg, sub.pos, sub.packer)
            q, k, v = project_rows(x.layer, gather_rows(x.h, index), rope, sub.packer)
            v_old = gather_rows(x.kv.v, pos)
            x.kv.write(pos, valid, k, v)  # pos is the trash column where valid is False
            self.put(dv, pos, torch.where(valid[:, :, None, None], v.to(dv.dtype) - v_old, 0.0))
            self.put(self.q[x.index], pos, q)
        rows = torch.where(x.rows.valid, x.rows.pos, self.trash)
        return gather_rows(self.q[x.index], rows), gather_rows(x.kv.k, rows), dv

    def recompute(self, x: LayerCall, q_all: Tensor, salient: Tensor) -> Tensor:
        """Full attention + FFN for salient rows; returns every row's layer output [B, L, C]."""
        sub, index = x.rows.select(salient)  # [B, N]
        pos = torch.where(sub.valid, sub.pos, self.trash)
        if index.shape[1]:
            ctx = attend_rows(gather_rows(q_all, index), x.kv, gather_rows(x.mask, index))  # [B, N, H, D]
            h = finish_rows(x.layer, gather_rows(x.h, index), ctx, sub.packer)  # [B, N, C]
            for buf in (self.context[x.index], self.reference[x.index]):
                self.put(buf, pos, ctx)
            self.put(self.hidden[x.index], pos, h)
        return gather_rows(self.hidden[x.index], torch.where(x.rows.valid, x.rows.pos, self.trash))


# ----------------------------------------------------------------------------- stacks


class Stack:
    """Several eviction policies applied in order (what `eviction=[Focus(), DyLLM()]` means).

    Exists so one Hydra config can name a stack:
        _target_: focuslib.policies.eviction.Stack
        policies:
          - {_target_: focuslib.policies.eviction.Focus, layer: 1, window: 3}
          - {_target_: focuslib.policies.eviction.DyLLM, tau: 0.99}
    """

    def __init__(self, policies: Sequence[EvictionPolicy]) -> None:
        self.policies = [p for p in policies if p is not None]

    @property
    def uses_budget(self) -> bool:
        """True when a policy of the stack ranks rows (so tools that see the stack as one policy ask for a budget)."""
        return any(p.uses_budget for p in self.policies)

    def __iter__(self) -> Iterator[EvictionPolicy]:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def __repr__(self) -> str:
        return f"Stack({self.policies!r})"


__all__ = [
    "DyLLM", "Focus", "ImportanceDelta", "LayerImportance", "Leftmost", "Oracle", "RandomScore",
    "RankingEviction", "RowScore", "SCORES", "Stack", "StaleConfidence", "build_score",
]
