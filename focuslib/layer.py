"""The one layer body of decoding: Q/K/V of a set of rows, then attention and FFN of the rows left.

A layer runs in two halves so that eviction can happen between them (FOCUS evicts
after layer 1's Q/K/V and RoPE, before its attention): `DenseRunner.project` and
`DenseRunner.complete`. `project_rows`, `attend_rows` and `finish_rows` are the pieces,
which policies that recompute only some rows (DyLLM) call for those rows.

Row-wise parts (projections, norms, RoPE, FFN) run on the valid rows only (`RowPacker`);
attention runs in the [B, L] layout against the layer's K/V buffers.

Shapes: B batch, L rows, T positions (+1 trash column), H heads, G kv heads, D head dim, C width.
"""
from __future__ import annotations

from torch import Tensor

from focuslib.contract import KVSlot, LayerCall, LayerOutput, LayerRunner, Projection
from focuslib.model import Layer, ModelConfig, attend, rope_tables
from focuslib.rows import RowPacker


def project_rows(layer: Layer, h: Tensor, rope: tuple[Tensor, Tensor], packer: RowPacker
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """q [B, L, H, D], k, v [B, L, G, D] of rows h [B, L, C] (valid rows only).

    rope: cos/sin of the packed rows (`packed_rope`), computed once for every layer over the same rows.
    """
    if packer.identity:  # no padding rows: nothing to pack
        return layer.qkv(h, rope)
    q, k, v = layer.qkv(packer.pack(h), rope)
    return packer.unpack(q), packer.unpack(k), packer.unpack(v)


def packed_rope(cfg: ModelConfig, pos: Tensor, packer: RowPacker) -> tuple[Tensor, Tensor]:
    """RoPE tables of the valid rows at positions pos [B, L], packed as `packer` packs rows."""
    return rope_tables(cfg, packer.pack(pos))


def attend_rows(q: Tensor, kv: KVSlot, mask: Tensor) -> Tensor:
    """Attention context [B, L, H, D] of queries q [B, L, H, D] over the layer's K/V under mask [B, L, K].

    The mask covers the first K <= T+1 key positions (those the rows may reach); the rest are not read.
    """
    width = mask.shape[-1]
    return attend(q, kv.k[:, :width], kv.v[:, :width], mask)


def finish_rows(layer: Layer, h: Tensor, ctx: Tensor, packer: RowPacker) -> Tensor:
    """Rows h [B, L, C] after the layer, given their attention context ctx [B, L, H, D]: output projection, FFN."""
    if packer.identity:  # no padding rows: nothing to pack
        return layer.finish(h, ctx)
    return packer.unpack(layer.finish(packer.pack(h), packer.pack(ctx)))


class DenseRunner(LayerRunner):
    """Every row's Q/K/V, attention and FFN (K/V of every row written before the eviction point)."""

    def project(self, x: LayerCall) -> Projection:
        q, k, v = project_rows(x.layer, x.h, x.rope, x.rows.packer)
        if x.kv is None:  # the rows are every key they attend and nothing reuses K/V: keep v for `complete`
            return Projection(q=q, k=k, extra=v)
        x.kv.write(x.rows.pos, x.rows.valid, k, v, x.rows.span)
        return Projection(q=q, k=k)

    def complete(self, x: LayerCall, proj: Projection) -> LayerOutput:
        ctx = attend(proj.q, proj.k, proj.extra, x.mask) if x.kv is None else attend_rows(proj.q, x.kv, x.mask)
        h = finish_rows(x.layer, x.h, ctx, x.rows.packer)
        return LayerOutput(h=h, computed=x.rows.valid)


__all__ = ["DenseRunner", "attend_rows", "finish_rows", "packed_rope", "project_rows"]
