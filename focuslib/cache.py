"""KV buffers and cache modes.

A cache mode answers two questions at every step, per sequence and position:
which positions must be computed now (`rows`), and which positions' cached K/V
may be attended without recomputing them (`reusable`). Everything else (running
layers, writing K/V, attending) is shared by all modes.

| mode      | families        | rows computed at a step                          | exact? |
|-----------|-----------------|--------------------------------------------------|--------|
| `none`    | all             | every position (block families: up to block end) | yes    |
| `prefix`  | full attention  | all at block start, else block + suffix          | no     |
| `dual`    | full attention  | all at block start, else the block only          | no     |
| `block`   | block diffusion | positions whose K/V is not final, up to block end | yes    |
| `delayed` | block diffusion | like `block`, but a position freezes once it and its right neighbour are decoded | no |

Shapes: B batch, T positions (+1 trash column where rows of padding write), G kv heads, D head dim.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from focuslib.contract import KVSlot

CACHE_MODES = {"full": ("none", "prefix", "dual"), "block_causal": ("none", "block", "delayed")}


class KVCache:
    """Preallocated K/V of every layer at every position, plus one trash column for padded rows."""

    def __init__(self, n_layers: int, batch: int, positions: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (n_layers, batch, positions + 1, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.trash = positions
        self._slots = [KVSlot(k, v) for k, v in zip(self.k.unbind(0), self.v.unbind(0))]  # views, built once per call

    def layer(self, index: int) -> KVSlot:
        """The K/V buffers of one layer, as the narrow handle layer runners write through."""
        return self._slots[index]

    def write(self, layer: int, pos: Tensor, valid: Tensor, k: Tensor, v: Tensor) -> None:
        """Store k, v [B, L, G, D] of rows at positions pos [B, L]; rows with valid False go to the trash column."""
        self.layer(layer).write(pos, valid, k, v)

    def clone(self) -> "KVCache":
        """An independent copy (for a dense preview of a step that must not disturb the real cache)."""
        copy = KVCache.__new__(KVCache)
        copy.k, copy.v, copy.trash = self.k.clone(), self.v.clone(), self.trash
        copy._slots = [KVSlot(k, v) for k, v in zip(copy.k.unbind(0), copy.v.unbind(0))]
        return copy


@dataclass
class BlockView:
    """What a cache mode needs to know about the decoding state ([B, T] bool masks, True = property holds)."""

    in_sequence: Tensor  # position exists for this sequence (prompt or generation region)
    masked: Tensor  # token is the mask id (padding never is)
    before_block_end: Tensor  # position < end of the sequence's current block
    in_block: Tensor  # position inside the current block
    block_start_step: Tensor  # [B] True = this step is the first of the current block
    block_last: Tensor  # position is the last one of its block (block families)
    in_finished_block: Tensor  # position belongs to a block with no mask left (block families)

    @property
    def decoded(self) -> Tensor:
        """Token is not a mask."""
        return ~self.masked


class CacheMode:
    """Base: decides rows to compute and K/V that may be reused; `update` sees what was computed."""

    reuses_kv: bool = True  # False: no step ever reads K/V of an earlier step (nothing needs storing)
    # True: rows, reusable and update follow the block structure, not the tokens: from a block's second step
    # on, every step computes the same rows and reuses the same K/V, and update changes nothing, until a block
    # moves (the decoder plans such rows once per block). False: they change as tokens are decoded.
    steady: bool = True

    def __init__(self, batch: int, positions: int, device: torch.device | str) -> None:
        self.final = torch.zeros(batch, positions, dtype=torch.bool, device=device)  # True = cached K/V is final

    def rows(self, v: BlockView) -> Tensor:
        return v.in_sequence

    def reusable(self, v: BlockView) -> Tensor:
        return torch.zeros_like(v.in_sequence)

    def update(self, v: BlockView, computed: Tensor) -> None:
        """computed [B, T] bool: True = K/V of this position was written at every layer this step."""


class NoCache(CacheMode):
    """Recompute everything that can matter: the exact reference."""

    reuses_kv = False


class BlockCausalNoCache(CacheMode):
    """Block families without reuse: recompute every position up to the current block's end."""

    reuses_kv = False

    def rows(self, v: BlockView) -> Tensor:
        return v.in_sequence & v.before_block_end


class PrefixCache(CacheMode):
    """Fast-dLLM prefix cache: K/V before the block is reused between block refreshes."""

    def rows(self, v: BlockView) -> Tensor:
        refresh = v.block_start_step[:, None]
        suffix = v.in_sequence & ~v.before_block_end
        return v.in_sequence & (refresh | v.in_block | suffix)

    def reusable(self, v: BlockView) -> Tensor:
        return v.in_sequence & ~v.block_start_step[:, None]


class DualCache(CacheMode):
    """Fast-dLLM dual cache: prefix and suffix K/V reused, only the block recomputed."""

    def rows(self, v: BlockView) -> Tensor:
        return v.in_sequence & (v.block_start_step[:, None] | v.in_block)

    def reusable(self, v: BlockView) -> Tensor:
        return v.in_sequence & ~v.block_start_step[:, None]


class BlockCache(CacheMode):
    """Block diffusion: K/V of finished blocks, written once with their final tokens, is reused."""

    def rows(self, v: BlockView) -> Tensor:
        return v.in_sequence & v.before_block_end & ~self.final

    def reusable(self, v: BlockView) -> Tensor:
        return self.final

    def update(self, v: BlockView, computed: Tensor) -> None:
        self.final |= computed & self.freezes(v)

    def freezes(self, v: BlockView) -> Tensor:
        return v.in_finished_block


class DelayedCache(BlockCache):
    """FOCUS's base: position p freezes once p and p+1 are decoded (or p ends its block and is decoded).

    attend_beyond_last_row: False (the FOCUS/LMDeploy engine) -- a step's attention ends at
    its last computed row, so frozen positions right of it are not attended; True -- they are.
    """

    steady = False  # a position freezes as soon as it and its right neighbour are decoded

    def __init__(self, batch: int, positions: int, device: torch.device | str,
                 attend_beyond_last_row: bool = False) -> None:
        super().__init__(batch, positions, device)
        self.attend_beyond_last_row = attend_beyond_last_row

    def reusable(self, v: BlockView) -> Tensor:
        if self.attend_beyond_last_row:
            return self.final
        rows = self.rows(v)
        pos = torch.arange(rows.shape[1], device=rows.device)
        last = torch.where(rows, pos, -1).amax(1, keepdim=True)  # [B, 1]
        return self.final & (pos <= last)

    def freezes(self, v: BlockView) -> Tensor:
        decoded = v.decoded
        right_decoded = torch.nn.functional.pad(decoded[:, 1:], (0, 1), value=True)
        return decoded & (right_decoded | v.block_last)


_MODES = {
    ("full", "none"): NoCache,
    ("full", "prefix"): PrefixCache,
    ("full", "dual"): DualCache,
    ("block_causal", "none"): BlockCausalNoCache,
    ("block_causal", "block"): BlockCache,
    ("block_causal", "delayed"): DelayedCache,
}


CACHE_OPTIONS: dict[str, tuple[str, ...]] = {"delayed": ("attend_beyond_last_row",)}


def cache_mode_class(attention: str, name: str) -> type[CacheMode]:
    """The cache mode class for a family's attention rule; a clear error for unknown or unsupported names."""
    if (attention, name) in _MODES:
        return _MODES[attention, name]
    known = sorted({n for modes in CACHE_MODES.values() for n in modes})
    if name not in known:
        raise ValueError(f"unknown cache mode {name!r}; known: {known}")
    raise ValueError(f"cache mode {name!r} is not supported for {attention!r} attention; use one of {CACHE_MODES[attention]}")
