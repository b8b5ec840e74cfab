"""Eviction policies: which rows keep being computed through the layers of a step.

* `Focus`  -- FOCUS importance-delta eviction: after layer `layer`, keep the masked rows
  of the block whose attention importance grew since layer 0 (plus the rules of
  `kernels.focus_select`); evicted rows skip every later layer and cannot be committed
  at this step.
* `DyLLM`  -- cosine saliency: each layer recomputes only the rows whose input changed
  or whose attention context drifted; the rest reuse cached results.
* `Stack`  -- several policies in one config (`eviction=[Focus(), DyLLM()]` in Python).

`eviction=None` (conf/eviction/none.yaml) means no eviction. See DESIGN.md section 4.

Shapes: B batch, L rows, S block positions, T positions (+1 trash column), H heads,
G kv heads, D head dim, C width.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Sequence

import torch
from torch import Tensor

from focuslib.eviction import LayerInput, LayerOutput, LayerRows, masked_importance
from focuslib.model import attend
from focuslib.rows import RowPacker, Rows, block_positions
from kernels import compact_rows, dyllm_update_and_cosine, focus_select, gather_rows

if TYPE_CHECKING:
    from focuslib.model import ModelConfig


# ----------------------------------------------------------------------------- FOCUS


def _block_rows(info: LayerRows) -> Tensor:
    """[B, S] row index of each position of the current block (-1: no row, or past the end of the tensor)."""
    t = info.state.x.shape[1]
    pos, in_range = block_positions(info.block_start, info.state.span, t)  # [B, S]
    return torch.where(in_range, info.rows.rows_at(pos, t), -1)


def _first_true(mask: Tensor) -> Tensor:
    """[B] index of the first True of mask [B, S] (S when there is none)."""
    s = mask.shape[1]
    idx = torch.arange(s, device=mask.device)
    return torch.where(mask, idx, s).amin(1)


class Focus:
    """FOCUS: evict block rows whose attention importance does not grow from layer 0 to `layer`.

    After layer 0 the importance of every masked row among the block's masked rows is
    stored; after layer `layer` it is computed again, delta = imp(layer) - imp(0), and
    `kernels.focus_select` keeps the rows to compute further (budget K from the budget
    policy, progress = first still-masked block position). Rows outside the block and
    unmasked rows are always kept. DESIGN.md uses layers 0 and 1 (layer=1).
    """

    needs_budget = True

    def __init__(self, layer: int = 1, window: int = 3) -> None:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
            raise ValueError(f"Focus layer must be an int >= 1 (layer 0 is the reference), got {layer!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1 or window % 2 == 0:
            raise ValueError(f"Focus window must be an odd int >= 1, got {window!r}")
        self.layer, self.window = layer, window
        self._imp0: Tensor | None = None  # [B, T+1] layer-0 importance by position

    @property
    def budget_layer(self) -> int:
        """The only layer where this policy needs K (the stack skips the budget elsewhere)."""
        return self.layer

    def check(self, cfg: "ModelConfig") -> None:
        """Reject a model too shallow for `layer` when the decoder is built, not at the first step."""
        if self.layer >= cfg.n_layers:
            raise ValueError(f"Focus(layer={self.layer}) needs a model with more than {self.layer} layers; "
                             f"this one has {cfg.n_layers}")

    def reset(self, batch: int) -> None:
        self._imp0 = None

    def after_layer(self, info: LayerRows, budget: Tensor | None) -> Tensor | None:
        """Layer 0: store the reference importance; layer `layer`: the keep mask; elsewhere None."""
        if info.layer == 0:
            self._imp0 = info.rows.by_position(masked_importance(info, self.window), info.state.x.shape[1], 0.0)
            return None
        if info.layer != self.layer:
            return None
        assert budget is not None and self._imp0 is not None
        imp = masked_importance(info, self.window)  # [B, L]
        delta = imp - self._imp0.gather(1, info.rows.pos)  # [B, L]
        return self._keep_rows(info, delta, budget)

    @staticmethod
    def _keep_rows(info: LayerRows, delta: Tensor, budget: Tensor) -> Tensor:
        """Run the keep rule over block slots and map it back to rows: [B, L] True = keep computing."""
        row_of = _block_rows(info)  # [B, S]
        has_row = row_of >= 0
        slot_row = row_of.clamp(min=0)
        masked = has_row & info.masked.gather(1, slot_row)  # [B, S] masked block positions with a row
        delta_s = torch.where(masked, delta.gather(1, slot_row), 0.0)  # [B, S]
        keep_s = focus_select(delta_s, masked, budget, _first_true(masked))  # [B, S]
        b, l = info.rows.pos.shape
        keep = torch.ones(b, l + 1, dtype=torch.bool, device=delta.device)  # rows outside the block: kept
        keep.scatter_(1, torch.where(has_row, row_of, l), keep_s)  # slots without a row write column L
        return keep[:, :l]

    def __repr__(self) -> str:
        return f"Focus(layer={self.layer}, window={self.window})"


# ----------------------------------------------------------------------------- DyLLM


class DyLLM:
    """DyLLM: per layer, recompute only salient rows; reuse cached K/V, contexts and outputs for the rest.

    Per layer l, over the rows the cache mode asks for:
      1. rows whose input changed ("updated": at layer 0 the rows whose token changed
         since DyLLM last computed them, rows it never computed, and every row during
         the first `dense_steps` steps; at layer l > 0 the rows salient at layer l-1)
         get fresh Q/K/V, written into the K/V cache;
      2. the other rows update their cached attention context cheaply,
         c_new = c_old + softmax(q K^T) dV (dV non-zero only on updated rows), and
         become salient when cosine(c_new, context at their last recomputation) < tau;
      3. salient rows (updated ones included) get full attention and the FFN; the rest
         keep their cached layer output.
    Every `prompt_refresh` steps (0: never) prompt rows count as updated at layer 0.
    A row that skipped some layers at a step (evicted by another policy) is recomputed
    from scratch at the next step. row_layers counts salient rows only: the cheap
    context update of non-salient rows is not counted (it costs one attention row, no
    projections and no FFN).
    """

    def __init__(self, tau: float = 0.99, dense_steps: int = 1, prompt_refresh: int = 0) -> None:
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not tau > 0:
            raise ValueError(f"DyLLM tau must be a number > 0, got {tau!r}")
        for name, value in (("dense_steps", dense_steps), ("prompt_refresh", prompt_refresh)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"DyLLM {name} must be an int >= 0, got {value!r}")
        self.tau, self.dense_steps, self.prompt_refresh = float(tau), dense_steps, prompt_refresh
        self._caches: _DyLLMCaches | None = None

    def reset(self, batch: int) -> None:
        self._caches = None

    def after_layer(self, info: LayerRows, budget: Tensor | None) -> Tensor | None:
        return None  # DyLLM never drops rows; it decides inside the layer what to recompute

    def run_layer(self, x: LayerInput) -> LayerOutput:
        """Steps 1-3 of the class docstring for one layer; `computed` = the salient rows."""
        c = self._cache_for(x)
        rows = x.rows
        if x.index == 0:
            c.begin_step(x, self._layer0_updated(x, c))
        updated = c.updated.gather(1, rows.pos) & rows.valid  # [B, L] input changed since cached
        q_all, k_all, dv = c.refresh_qkv(x, updated)  # [B, L, H, D], [B, L, G, D], [B, T+1, G, D]
        salient = updated | self._drifted(x, c, q_all, dv, rows.valid & ~updated)  # [B, L]
        h = c.recompute(x, q_all, salient)  # [B, L, C]
        c.updated = rows.by_position(salient, c.trash, False)
        if x.index == len(c.hidden) - 1:
            c.end_step(rows)
        return LayerOutput(h=h, q=q_all, k=k_all, computed=salient)

    def _layer0_updated(self, x: LayerInput, c: "_DyLLMCaches") -> Tensor:
        """[B, T+1] True = the position's embedding row must be recomputed at layer 0."""
        state = x.state
        t = state.x.shape[1]
        changed = ~c.fresh | (state.x != c.seen)  # [B, T]
        if c.step < self.dense_steps:
            changed = torch.ones_like(changed)
        elif self.prompt_refresh and c.step % self.prompt_refresh == 0:
            changed |= torch.arange(t, device=state.x.device) < state.prompt_len[:, None]
        return torch.nn.functional.pad(changed, (0, 1), value=False)

    def _drifted(self, x: LayerInput, c: "_DyLLMCaches", q_all: Tensor, dv: Tensor, rows: Tensor) -> Tensor:
        """[B, L] True = one of `rows` whose context moved: cosine(c_new, c_at_last_recompute) < tau.

        Also stores c_new as the rows' running context (c_old of the next step).
        """
        index, valid = compact_rows(rows)  # [B, N]
        if index.shape[1] == 0:
            return torch.zeros_like(rows)
        pos = torch.where(valid, gather_rows(x.rows.pos, index), c.trash)  # [B, N]
        c_new, cos = dyllm_update_and_cosine(
            gather_rows(q_all, index), x.cache.k[x.index], dv, gather_rows(c.context[x.index], pos),
            gather_rows(c.reference[x.index], pos), gather_rows(x.mask, index))
        c.put(c.context[x.index], pos, c_new)
        l = rows.shape[1]
        out = torch.zeros(rows.shape[0], l + 1, dtype=torch.bool, device=rows.device)
        return out.scatter_(1, torch.where(valid, index, l), cos < self.tau)[:, :l]  # padding -> column L

    def _cache_for(self, x: LayerInput) -> "_DyLLMCaches":
        """The caches for this generate call (made at its first layer, sized by the batch and positions)."""
        if self._caches is None or x.index == 0 and not self._caches.fits(x):
            self._caches = _DyLLMCaches(x)
        return self._caches

    def __repr__(self) -> str:
        return f"DyLLM(tau={self.tau}, dense_steps={self.dense_steps}, prompt_refresh={self.prompt_refresh})"


class _DyLLMCaches:
    """Per-layer caches of DyLLM, indexed by absolute position (column T is a trash column for padding rows).

    q, context, reference: [n_layers] x [B, T+1, H, D]; hidden: [n_layers] x [B, T+1, C]
    (a row's output of each layer = its input + cached attention output + cached FFN output).
    """

    def __init__(self, x: LayerInput) -> None:
        state, cfg = x.state, x.layer.cfg
        b, t = state.x.shape
        dev, dtype = x.h.device, x.h.dtype
        heads = (b, t + 1, cfg.n_heads, cfg.head_dim)
        self.q = [torch.zeros(heads, dtype=dtype, device=dev) for _ in range(cfg.n_layers)]
        self.context = [torch.zeros(heads, dtype=dtype, device=dev) for _ in range(cfg.n_layers)]
        self.reference = [torch.zeros(heads, dtype=dtype, device=dev) for _ in range(cfg.n_layers)]
        self.hidden = [torch.zeros(b, t + 1, cfg.dim, dtype=dtype, device=dev) for _ in range(cfg.n_layers)]
        self.fresh = torch.zeros(b, t, dtype=torch.bool, device=dev)  # True = every cache holds this position
        self.seen = state.x.clone()  # [B, T] token each position had when last recomputed
        self.updated = torch.zeros(b, t + 1, dtype=torch.bool, device=dev)  # [B, T+1] input changed at this layer
        self.at_layer0 = torch.zeros(b, t, dtype=torch.bool, device=dev)  # [B, T] rows that entered layer 0 this step
        self.trash, self.step, self.state = t, 0, state

    def fits(self, x: LayerInput) -> bool:
        return x.state is self.state

    @staticmethod
    def put(buf: Tensor, pos: Tensor, values: Tensor) -> None:
        """buf[b, pos[b, n]] = values[b, n] (padding rows point at the trash column)."""
        batch = torch.arange(buf.shape[0], device=buf.device)[:, None]
        buf[batch, pos] = values.to(buf.dtype)

    def begin_step(self, x: LayerInput, updated: Tensor) -> None:
        """At layer 0: the rows whose input changed, and which rows started the step (for `end_step`)."""
        self.updated = updated
        self.at_layer0 = x.rows.as_mask(self.trash)

    def end_step(self, rows: Rows) -> None:
        """Rows that reached the last layer are fresh; rows dropped on the way must be recomputed next step."""
        last = rows.as_mask(self.trash)
        self.fresh = (self.fresh & ~self.at_layer0) | last
        self.seen = torch.where(last, self.state.x, self.seen)
        self.step += 1

    def refresh_qkv(self, x: LayerInput, updated: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Q/K/V of updated rows; returns q, k of every row [B, L, ...] and dV [B, T+1, G, D] (0 off updated rows)."""
        index, valid = compact_rows(updated)  # [B, U]
        pos = torch.where(valid, gather_rows(x.rows.pos, index), self.trash)  # [B, U]
        k_cache, v_cache = x.cache.k[x.index], x.cache.v[x.index]  # [B, T+1, G, D]
        dv = torch.zeros_like(v_cache)
        if index.shape[1]:
            packer = RowPacker(valid)  # projections only on real rows
            q, k, v = (packer.unpack(t) for t in x.layer.qkv(packer.pack(gather_rows(x.h, index)),
                                                                packer.pack(gather_rows(x.rows.pos, index))))
            v_old = gather_rows(v_cache, pos)
            x.cache.write(x.index, pos, valid, k, v)  # pos is the trash column where valid is False
            self.put(dv, pos, torch.where(valid[:, :, None, None], v.to(dv.dtype) - v_old, 0.0))
            self.put(self.q[x.index], pos, q)
        rows = torch.where(x.rows.valid, x.rows.pos, self.trash)
        return gather_rows(self.q[x.index], rows), gather_rows(k_cache, rows), dv

    def recompute(self, x: LayerInput, q_all: Tensor, salient: Tensor) -> Tensor:
        """Full attention + FFN for salient rows; returns every row's layer output [B, L, C]."""
        index, valid = compact_rows(salient)  # [B, N]
        pos = torch.where(valid, gather_rows(x.rows.pos, index), self.trash)
        if index.shape[1]:
            packer = RowPacker(valid)  # projections and FFN only on real rows
            ctx = attend(gather_rows(q_all, index), x.cache.k[x.index], x.cache.v[x.index], gather_rows(x.mask, index))
            h = packer.pack(gather_rows(x.h, index))  # [1, N', C]
            h = h + x.layer.attn_out(packer.pack(ctx))
            h = packer.unpack(h + x.layer.ffn(h))  # [B, N, C]
            for buf in (self.context[x.index], self.reference[x.index]):
                self.put(buf, pos, ctx)
            self.put(self.hidden[x.index], pos, h)
        return gather_rows(self.hidden[x.index], torch.where(x.rows.valid, x.rows.pos, self.trash))


# ----------------------------------------------------------------------------- stacks


class Stack:
    """Several eviction policies applied in order (what `eviction=[Focus(), DyLLM()]` means).

    Exists so one Hydra config can name a stack:
        _target_: policies.eviction.Stack
        policies:
          - {_target_: policies.eviction.Focus, layer: 1, window: 3}
          - {_target_: policies.eviction.DyLLM, tau: 0.99}
    """

    def __init__(self, policies: Sequence[Any]) -> None:
        self.policies = [p for p in policies if p is not None]

    @property
    def needs_budget(self) -> bool:
        """True when a policy of the stack ranks rows (so tools that see the stack as one policy ask for a budget)."""
        return any(getattr(p, "needs_budget", False) for p in self.policies)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.policies)

    def __len__(self) -> int:
        return len(self.policies)

    def __repr__(self) -> str:
        return f"Stack({self.policies!r})"


__all__ = ["DyLLM", "Focus", "Stack"]
