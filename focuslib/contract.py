"""The contract between the decoder and its eviction and budget policies.

Policies are handed frozen views of tensors, never the decoder's state or caches:

* `StepView`   -- where every sequence stands at this step (block, step in block, tokens);
* `LayerView`  -- the rows at one layer, with their post-RoPE queries and keys;
* `CommitView` -- what the unmasking policy decided at the end of the step.

An eviction policy acts at two points of every layer (`EvictionPolicy`): right after
the layer's Q/K/V and RoPE (`at_qkv`, before attention: FOCUS's published eviction
point, so evicted rows skip the rest of the layer) and after the layer (`after_layer`).
At either point it may return a keep mask over the rows; the decoder compacts the rows,
so later work really runs on fewer rows. A policy that changes how a layer runs (DyLLM:
recompute some rows, reuse cached outputs for the rest) provides a `LayerRunner`.
Everything a policy remembers during one `generate` call lives in the object its
`begin` returns, so one decoder can serve several threads.

This module imports nothing of the decoder; the decoder and the policies both import it.

Shapes: B batch, T positions, L rows, S block slots, H heads, G kv heads, D head dim, C width.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from focuslib.rows import Rows, block_positions

if TYPE_CHECKING:
    from focuslib.model import Layer, ModelConfig


@dataclass(frozen=True)
class StepView:
    """Where every sequence stands at one decoding step ([B] tensors unless noted)."""

    step: int  # step index within this generate call
    tokens: Tensor  # [B, T] long, current tokens (mask_id where still masked)
    mask_id: int
    prompt_len: Tensor  # [B] long
    block_start: Tensor  # [B] long, absolute first position of the current block
    span: int  # positions per block
    step_in_block: Tensor  # [B] long, 0 at a block's first step
    masked_at_block_start: Tensor  # [B] long, masked positions of the block when it started
    n_masked: Tensor  # [B] long, masked positions of the current block now
    active: Tensor  # [B] bool, False = sequence finished
    logit_shift: int = 0  # 1 for Dream: position p is predicted by the row at p - 1
    last_budgeted: Tensor | None = None  # [B] bool, this is the block's last scheduled step (None: no schedule)
    slots: tuple[Tensor, Tensor] | None = None  # `block_slots()` when the decoder already holds them

    @property
    def positions(self) -> int:
        return self.tokens.shape[1]

    def block_slots(self) -> tuple[Tensor, Tensor]:
        """Absolute positions [B, S] of the current block's slots, and [B, S] True = slot is inside the sequence tensor."""
        if self.slots is not None:
            return self.slots
        return block_positions(self.block_start, self.span, self.positions)

    def in_block(self, pos: Tensor) -> Tensor:
        """[B, L] True = absolute positions pos [B, L] lie in their sequence's current block."""
        offset = pos - self.block_start[:, None]
        return (offset >= 0) & (offset < self.span)


@dataclass(frozen=True)
class LayerView:
    """The rows at one layer: at its eviction point (`at_qkv`) or after it (`after_layer`)."""

    layer: int
    rows: Rows  # pos [B, L] absolute positions, valid [B, L] False = padding row
    q: Tensor  # [B, L, H, D] post-norm, post-RoPE queries of the rows at this layer
    k: Tensor  # [B, L, G, D] keys of the rows at this layer
    masked: Tensor  # [B, L] bool, True = row is a still-masked position of its current block
    step: StepView
    # masked.sum(1).max() when known on the host (counted from the step's sync; None once rows were
    # evicted): kernels that pack the masked rows take it as their width instead of syncing for it
    masked_width: int | None = None

    def block_rows(self) -> Tensor:
        """[B, S] row index of every slot of the current block (-1: no row there, or past the tensor)."""
        pos, in_range = self.step.block_slots()
        return torch.where(in_range, self.rows.rows_at(pos, self.step.positions), -1)


@dataclass(frozen=True)
class CommitView:
    """The end of a step: what the unmasking policy saw and committed ([B, S] over block slots)."""

    step: StepView
    slots: Tensor  # [B, S] long, absolute positions of the block slots
    masked: Tensor  # [B, S] bool, slot was masked at this step
    has_logits: Tensor  # [B, S] bool, slot's row survived every layer (a commit candidate)
    confidence: Tensor  # [B, S] float32, probability of the proposed token (0 without logits)
    committed: Tensor  # [B, S] bool, slot was committed at this step


@dataclass
class Projection:
    """What a layer runner's first half hands to its second half: the rows' queries and keys, plus its own data."""

    q: Tensor  # [B, L, H, D]
    k: Tensor  # [B, L, G, D]
    extra: Any = None  # runner-specific, indexed by position (never by row) so eviction cannot misalign it


@dataclass
class LayerOutput:
    h: Tensor  # [B, L, C] hidden rows after the layer
    computed: Tensor  # [B, L] bool, True = the row's attention and FFN ran (counted as a row-layer)


class LayerRunner(abc.ABC):
    """How one layer runs over a set of rows, in two halves with the eviction point between them.

    `project` computes the rows' Q/K/V (writing K/V into the cache it is given) and
    `complete` runs attention and the FFN for the rows that are left. The plain runner
    is `focuslib.layer.DenseRunner`; DyLLM supplies one that recomputes only salient rows.
    """

    @abc.abstractmethod
    def project(self, x: "LayerCall") -> Projection:
        """Q/K/V of the rows (K/V written through x.kv)."""

    @abc.abstractmethod
    def complete(self, x: "LayerCall", proj: Projection) -> LayerOutput:
        """Attention and FFN of the rows left after the eviction point."""


@dataclass(frozen=True)
class LayerCall:
    """One layer to run: its module, the hidden rows, the attention mask and the K/V store of this layer."""

    index: int
    layer: "Layer"
    h: Tensor  # [B, L, C] hidden rows entering the layer
    rows: Rows
    mask: Tensor  # [B, L, K] bool, True = row may attend the key position; K <= T+1 keys the rows can reach
    kv: "KVSlot | None"  # None: nothing is stored, the rows are every key they may reach (`direct_kv`)
    step: StepView
    rope: tuple[Tensor, Tensor]  # cos, sin of the valid rows, packed as rows.packer packs them


class KVSlot:
    """The K/V buffers of one layer ([B, T+1, G, D], column T is trash) and the one way to write them."""

    def __init__(self, k: Tensor, v: Tensor) -> None:
        self.k, self.v = k, v
        self.trash = k.shape[1] - 1

    def write(self, pos: Tensor, valid: Tensor, k: Tensor, v: Tensor, span: tuple[int, int] | None = None) -> None:
        """Store k, v [B, L, G, D] of rows at positions pos [B, L]; invalid rows go to the trash column.

        span: (lo, hi) when the rows are exactly positions lo..hi-1 of every sequence (`Rows.span`): a slice copy.
        """
        if span is not None:
            self.k[:, span[0]:span[1]] = k
            self.v[:, span[0]:span[1]] = v
            return
        # index_put_ on (sequence, position) pairs: a few times faster than scatter_ with an index
        # expanded over heads and head dims; duplicates only hit the trash column
        at = (torch.arange(pos.shape[0], device=pos.device)[:, None], torch.where(valid, pos, self.trash))
        self.k.index_put_(at, k.to(self.k.dtype))
        self.v.index_put_(at, v.to(self.v.dtype))


class EvictionPolicy:
    """Which rows keep being computed through the layers of a step.

    Override what you need; every hook has a do-nothing default:

    * `begin(batch, positions, device)` -> per-call state handed to every other hook;
    * `at_qkv(view, state, budget)` / `after_layer(view, state, budget)` -> keep mask [B, L]
      bool over view.rows (True = keep computing) or None. Rows you drop cannot be
      committed at this step. Rows outside the current block and padding rows are
      never dropped, whatever the mask says, and nothing is dropped at a block's last
      scheduled step (`StepView.last_budgeted`: a schedule must finish its block);
    * `after_step(commit, state)` -> see what was committed (e.g. remember confidences);
    * `runner(state)` -> a LayerRunner that replaces the plain layer (at most one per stack);
    * `check(cfg)` -> raise ValueError for a model the policy cannot serve.

    Class attributes: `uses_budget` (the decoder then requires a budget policy and
    passes it), `evicted_keys` ("hidden": rows dropped at this step vanish as keys;
    "stale": their K/V of earlier steps stay visible up to the right-most kept row of
    the block, keys right of it are hidden -- FOCUS's rule), `needs_dense_commits` (the
    decoder first runs the step densely and hands its commits to the policy: analysis only).
    """

    uses_budget: ClassVar[bool] = False
    needs_dense_commits: ClassVar[bool] = False
    evicted_keys: str = "hidden"

    def check(self, cfg: "ModelConfig") -> None:
        """Raise ValueError if this policy cannot serve a model with config `cfg`."""

    def begin(self, batch: int, positions: int, device: torch.device) -> Any:
        """Fresh per-call state (None if the policy keeps none)."""
        return None

    def at_qkv(self, view: LayerView, state: Any, budget: "BudgetPolicy | None") -> Tensor | None:
        return None

    def after_layer(self, view: LayerView, state: Any, budget: "BudgetPolicy | None") -> Tensor | None:
        return None

    def after_step(self, commit: CommitView, state: Any) -> None:
        """Called once per step with the unmasking decision."""

    def runner(self, state: Any) -> LayerRunner | None:
        return None

    def trace_columns(self, state: Any) -> dict[str, Tensor]:
        """Per-position values [B, T] of this step to add to a decode trace (e.g. the ranking score)."""
        return {}

    def see_dense_commits(self, state: Any, committed: Tensor) -> None:
        """With needs_dense_commits: committed [B, T] bool, positions dense decoding commits at this step."""

    def trace_importance(self) -> tuple[tuple[int, int], int] | None:
        """((reference layer, layer), window) of the attention importance a decode trace should record, or None."""
        return None


class BudgetPolicy(abc.ABC):
    """How many masked rows of the current block a ranking eviction policy keeps: K [B] long, >= 1."""

    @abc.abstractmethod
    def __call__(self, step: StepView) -> Tensor:
        """K [B] long for this step."""


__all__ = [
    "BudgetPolicy", "CommitView", "EvictionPolicy", "KVSlot", "LayerCall", "LayerOutput", "LayerRunner",
    "LayerView", "Projection", "StepView",
]
