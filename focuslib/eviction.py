"""What eviction policies see between layers, and how a stack of them is applied.

Two extension points, both optional for a policy:

* `after_layer(info, budget)` -- handed `LayerRows` after each layer, a policy may
  answer with a keep mask over the rows; the decoder then compacts the rows (gather),
  so later layers really process fewer tokens (FOCUS).
* `run_layer(x)` -- a policy may run a layer itself over the rows (`LayerInput` ->
  `LayerOutput`), e.g. to recompute only some rows and reuse cached results for the
  rest (DyLLM). At most one policy of a stack may do this; without one the stack
  runs `dense_layer`.

Budget policies tell ranking policies how many rows to keep. Policies see tensors
(and the layer's `qkv` / `attn_out` / `ffn` parts), never the decoder's internals.

Shapes: B batch, L rows, T positions (+1 trash column in caches), H heads, G kv heads,
D head dim, C width.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Sequence

import torch
from torch import Tensor

from focuslib.model import attend
from focuslib.rows import Rows
from kernels.compaction import compact_rows, gather_rows
from kernels.importance import focus_importance

if TYPE_CHECKING:
    from focuslib.cache import KVCache
    from focuslib.decoder import DecodeState
    from focuslib.model import Layer, Transformer


@dataclass
class LayerInput:
    """One layer to run over the current rows."""

    index: int  # layer number
    layer: "Layer"
    h: Tensor  # [B, L, C] hidden rows entering the layer
    rows: Rows  # positions of the rows
    mask: Tensor  # [B, L, T+1] bool, True = query row may attend key position (cache column T: never)
    cache: "KVCache"  # K/V of every layer at every position; the runner writes the rows it computes
    state: "DecodeState"


@dataclass
class LayerOutput:
    """What a layer runner returns."""

    h: Tensor  # [B, L, C] hidden rows after the layer
    q: Tensor  # [B, L, H, D] post-RoPE queries of the rows (recomputed or cached)
    k: Tensor  # [B, L, G, D] keys of the rows (recomputed or cached)
    computed: Tensor  # [B, L] bool, True = the row's attention and FFN really ran (counted as a row-layer)


def dense_layer(x: LayerInput) -> LayerOutput:
    """The plain layer: every row's Q/K/V, attention and FFN are computed (row-wise parts on valid rows only)."""
    rows = x.rows.packer  # built once per row set, not per layer (its nonzero is a host sync)
    h = rows.pack(x.h)  # [1, N, C] (or [B, L, C] without padding)
    q, k, v = (rows.unpack(t) for t in x.layer.qkv(h, rows.pack(x.rows.pos)))  # [B, L, H|G, D]
    x.cache.write(x.index, x.rows.pos, x.rows.valid, k, v)
    ctx = attend(q, x.cache.k[x.index], x.cache.v[x.index], x.mask)  # [B, L, H, D]
    h = h + x.layer.attn_out(rows.pack(ctx))
    h = h + x.layer.ffn(h)
    return LayerOutput(h=rows.unpack(h), q=q, k=k, computed=x.rows.valid)


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
    """After a layer, return a keep mask [B, L] over info.rows (True = keep computing), or None for no change.

    Optional members: `needs_budget` (bool: the stack passes K [B] from the budget
    policy; with `budget_layer` only after that layer), `check(cfg)` (raise ValueError
    for a model it cannot serve), `run_layer(x: LayerInput) -> LayerOutput` (run the
    layer itself).
    """

    def reset(self, batch: int) -> None: ...

    def after_layer(self, info: LayerRows, budget: Tensor | None) -> Tensor | None: ...


def as_policy_list(eviction: Any) -> list[Any]:
    """The policies `eviction` names, in order: None -> []; one policy -> [policy]; lists, tuples,
    Stacks and mappings (their values, as Hydra builds a dict of policies) -> their policies, flattened.

    The one normaliser for the decoder and the config checks, so a config that validates also decodes.
    """
    if eviction is None:
        return []
    if hasattr(eviction, "after_layer") or hasattr(eviction, "run_layer") or isinstance(eviction, (str, bytes)):
        return [eviction]
    if isinstance(eviction, Mapping):
        eviction = list(eviction.values())
    if isinstance(eviction, Iterable):
        return [p for item in eviction for p in as_policy_list(item)]
    return [eviction]


class EvictionStack:
    """Applies eviction policies after each layer: all see the same rows and their keep masks are ANDed.

    Rows dropped after layer l are gone for every policy from layer l + 1 on.
    """

    def __init__(self, policies: Sequence[Any], budget: Any | None) -> None:
        self.policies = list(policies)
        self.budget = budget
        runners = [p for p in self.policies if getattr(p, "run_layer", None) is not None]
        if len(runners) > 1:
            names = [type(p).__name__ for p in runners]
            raise ValueError(f"eviction policies {names} each run the layers themselves; a stack may hold one")
        self._runner = runners[0].run_layer if runners else dense_layer

    @classmethod
    def build(cls, eviction: Any, budget: Any, model: "Transformer") -> "EvictionStack":
        """Check the policies against the model and each other; errors here fail before any decoding."""
        stack = cls(as_policy_list(eviction), budget)
        for p in stack.policies:
            if getattr(p, "after_layer", None) is None:
                raise TypeError(f"{p!r} is not an eviction policy: it has no after_layer(info, budget)")
            check = getattr(p, "check", None)
            if check is not None:
                check(model.cfg)
        ranking = [type(p).__name__ for p in stack.policies if getattr(p, "needs_budget", False)]
        if ranking and budget is None:
            raise ValueError(f"eviction policy {ranking} ranks rows and needs a budget policy (e.g. FocusBudget)")
        return stack

    def reset(self, batch: int) -> None:
        """Forget every policy's per-call state before a new `generate` of `batch` sequences."""
        for p in self.policies:
            p.reset(batch)

    def run_layer(self, x: LayerInput) -> LayerOutput:
        """Run one layer with the stack's runner (a policy's `run_layer`, else `dense_layer`)."""
        return self._runner(x)

    def after_layer(self, info: LayerRows) -> Tensor | None:
        """AND of the policies' keep masks [B, L] (None: nobody drops a row); K is computed only for who wants it."""
        keep = None
        for p in self.policies:
            budget = self.budget(info) if self._wants_budget(p, info.layer) else None
            mask = p.after_layer(info, budget)
            if mask is not None:
                keep = mask if keep is None else keep & mask
        return keep

    @staticmethod
    def _wants_budget(policy: Any, layer: int) -> bool:
        """A ranking policy gets K at every layer, or only at its `budget_layer` when it names one."""
        if not getattr(policy, "needs_budget", False):
            return False
        wanted = getattr(policy, "budget_layer", None)
        return wanted is None or wanted == layer

    def __bool__(self) -> bool:
        return bool(self.policies)
