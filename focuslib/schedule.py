"""The block scheduler: where every sequence of a batch stands, and how a step's commits move it on.

Tensor-only: no model, no tokenizer, no host sync. The decoder (`focuslib.decoder`)
runs the model and the policies, then hands each step's commits to `DecodeState.write` and
moves the blocks on (`advance`) or, when it knows that none finished, keeps them (`hold`);
`commit` does write and advance in one. Sequences of different lengths keep their own
positions, blocks and step counters.

Shapes: B batch, T positions, S block slots.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from focuslib.cache import BlockView
from focuslib.rows import Rows

NOT_COMMITTED = -1
_NO_BLOCK = torch.iinfo(torch.long).max  # current_block of a sequence with nothing masked


@dataclass
class DecodeState:
    """Everything that changes during decoding. [B, T] tensors are indexed by absolute position."""

    x: Tensor  # [B, T] long tokens
    masked: Tensor  # [B, T] bool, x == mask_id (padding never holds the mask id)
    in_sequence: Tensor  # [B, T] bool, True = prompt or generation position of this sequence
    block_id: Tensor  # [B, T] long, block of each position (-1 for prompt rows of full-attention families)
    prompt_len: Tensor  # [B]
    current_block: Tensor  # [B] long, block being decoded (a large value once finished)
    active: Tensor  # [B] bool, False = the sequence is done (`done`)
    block_changed: Tensor  # [B] bool, True = current block started at this step
    span: int  # positions per block
    mask_id: int
    block_diffusion: bool  # blocks on the absolute grid (SDAR-like) rather than from each prompt's end
    # set by the decoder at each step: [B] float64, the sum of each sequence's block logits (finite unless one is not)
    logit_sums: Tensor | None = None
    # the step counters (`step_in_block`, `masked_at_block_start`), moved on by `settle` after each commit
    _step_in_block: Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    _masked_at_block_start: Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    _unsettled: bool = field(default=False, repr=False)
    # the slots [B, S] each step wrote (T where nothing was committed), with its step: `committed_step`
    _commits: list[tuple[int, Tensor]] = field(default_factory=list, repr=False)
    _committed_step: Tensor | None = field(default=None, repr=False)

    @classmethod
    def start(cls, ids: list[list[int]], gen_length: int, *, mask_id: int, pad_id: int, block_size: int | None,
              block_diffusion: bool, device: torch.device | str = "cpu") -> "DecodeState":
        """Prompts `ids` followed by gen_length masks each, right-padded with pad_id to the longest.

        block_size: positions per block (block-diffusion families: their own, on the absolute grid;
        others: a semi-autoregressive block from each prompt's end, None = the whole generation).
        """
        if pad_id == mask_id:
            raise ValueError(f"pad_id must differ from mask_id ({mask_id}): padding would read as masked positions")
        b, lengths = len(ids), [len(p) for p in ids]
        t = max(lengths) + gen_length
        prompt_len = torch.tensor(lengths, device=device)
        pos = torch.arange(t, device=device).expand(b, t)
        x = torch.tensor([p + [mask_id] * gen_length + [pad_id] * (t - n - gen_length) for p, n in zip(ids, lengths)],
                         dtype=torch.long, device=device)
        in_sequence = pos < (prompt_len + gen_length)[:, None]
        span = block_size or gen_length
        if block_diffusion:
            block_id = pos // span
        else:
            block_id = torch.where(pos >= prompt_len[:, None], (pos - prompt_len[:, None]) // span, -1)
        masked = x == mask_id
        first = torch.where(masked, block_id, _NO_BLOCK).min(1).values
        return cls(
            x=x, masked=masked, in_sequence=in_sequence, block_id=block_id, prompt_len=prompt_len, current_block=first,
            active=first != _NO_BLOCK, block_changed=torch.ones(b, dtype=torch.bool, device=device),
            span=span, mask_id=mask_id, block_diffusion=block_diffusion,
            _step_in_block=torch.zeros(b, dtype=torch.long, device=device),
            _masked_at_block_start=(masked & (block_id == first[:, None])).sum(1),
        )

    @property
    def step_in_block(self) -> Tensor:
        """[B] long, steps taken in the current block (0 at its first step)."""
        self.settle()
        return self._step_in_block

    @property
    def masked_at_block_start(self) -> Tensor:
        """[B] long, masked positions of the current block when it started."""
        self.settle()
        return self._masked_at_block_start

    @property
    def committed_step(self) -> Tensor:
        """[B, T] long, step at which each position was committed (-1: not yet, or a prompt position).

        Built from the commits' slots when read (the decoder reads it once, at the end)."""
        if self._committed_step is None:
            b, t = self.x.shape
            out = torch.full((b, t + 1), NOT_COMMITTED, device=self.x.device)
            if self._commits:  # a position is committed once; the trash column T takes the rest
                slots = torch.cat([slot for _, slot in self._commits], 1)  # [B, steps x S]
                steps = torch.tensor([step for step, slot in self._commits for _ in range(slot.shape[1])],
                                     device=out.device)
                out.scatter_(1, slots, steps.expand_as(slots))
            self._committed_step = out[:, :t]
        return self._committed_step

    @cached_property
    def in_block(self) -> Tensor:
        """[B, T] bool, True = a position of the sequence's current block (kept by `commit`)."""
        return self._block_in_sequence == self.current_block[:, None]

    @property
    def done(self) -> Tensor:
        """[B] bool, True = nothing left to decode (or, with EOS stopping, an EOS was generated)."""
        return ~self.active

    def view(self) -> BlockView:
        """What a cache mode needs to know about the blocks (`focuslib.cache.BlockView`)."""
        cur = self.current_block[:, None]
        return BlockView(
            in_sequence=self.in_sequence, masked=self.masked,
            before_block_end=self.block_id <= cur, in_block=self.in_block,
            block_start_step=self.block_changed, block_last=self.block_last,
            in_finished_block=self.block_id < cur,
        )

    @cached_property
    def _block_in_sequence(self) -> Tensor:
        """[B, T] block of each position of the sequence, -2 (no block) outside it (fixed for a call)."""
        return self.block_id.masked_fill(~self.in_sequence, -2)

    @cached_property
    def _padded(self) -> Tensor:
        """x with a trash column T appended ([B, T+1]): commits of unchosen slots land there.

        `x` is a view of it (column T left out) once a step has committed."""
        return torch.nn.functional.pad(self.x, (0, 1))

    @cached_property
    def positions(self) -> Tensor:
        """[T] long: 0..T-1, the positions (built once per call)."""
        return torch.arange(self.x.shape[1], device=self.x.device)

    @cached_property
    def ends_table(self) -> tuple[Tensor, Tensor]:
        """`Rows.ends_table` of the T positions (built once per call): what `Rows.stats` of [B, T] masks needs."""
        return Rows.ends_table(self.x.shape[1], self.x.device)

    @cached_property
    def _generation(self) -> Tensor:
        """[B, T] True = a generation position of the sequence (fixed for a call)."""
        return self.in_sequence & (self.positions >= self.prompt_len[:, None])

    @cached_property
    def block_last(self) -> Tensor:
        """[B, T] True = the position is the last one of its block, or not in the sequence (fixed for a call)."""
        nxt = torch.nn.functional.pad(self.block_id[:, 1:], (0, 1), value=-2)
        return (nxt != self.block_id) | ~self.in_sequence

    def block_start(self) -> Tensor:
        """[B] absolute start of each sequence's current block (for gathering its positions)."""
        blk = self.current_block.clamp(max=self.x.shape[1])  # finished sequences: anything in range
        if self.block_diffusion:
            return blk * self.span
        return self.prompt_len + blk * self.span

    def commit(self, block_pos: Tensor, chosen: Tensor, tokens: Tensor, step: int, eos_ids: tuple[int, ...] = ()
               ) -> None:
        """Write tokens [B, S] at block slots block_pos [B, S] where chosen [B, S], then move blocks, step
        counters and done flags on (`write`, then `advance`). eos_ids non-empty: a sequence is also done once
        an EOS is generated with nothing masked before it."""
        self.write(block_pos, chosen, tokens, step)
        self.advance(self.eos_reached(eos_ids) if eos_ids else None)

    def write(self, block_pos: Tensor, chosen: Tensor, tokens: Tensor, step: int) -> None:
        """Write tokens [B, S] at block slots block_pos [B, S] where chosen [B, S]; the blocks move on at
        `advance`, or stay at `hold` when the caller knows that no block finished."""
        self.settle()
        t = self.x.shape[1]
        slot = torch.where(chosen, block_pos, t)  # [B, S]: slots not committed write to the trash column
        self._padded = self._padded.scatter(1, slot, tokens)  # a new tensor: views of the old x stay valid
        self.x = self._padded[:, :t]
        self._commits.append((step, slot))
        self._committed_step = None
        self.masked = self.x == self.mask_id  # [B, T]; padding is never the mask id

    def advance(self, eos_hit: Tensor | None = None) -> None:
        """After `write`: each sequence's current block becomes its first block with a mask left, and a
        sequence with none left is done; so is one with eos_hit [B] True (`eos_reached`). The step
        counters move on at `settle` (or when next read)."""
        block = torch.where(self.masked, self.block_id, _NO_BLOCK).amin(1)
        self.block_changed = block != self.current_block
        self.in_block = self._block_in_sequence == block[:, None]
        self.current_block = block
        self._unsettled = True
        self.active = block != _NO_BLOCK  # something masked is left
        if eos_hit is not None:
            self.active &= ~eos_hit

    def hold(self) -> None:
        """After a `write` that finished no sequence's block and ended no sequence (the caller knows it on
        the host, e.g. from the commit counts): the blocks stay, and each step counter moves on by one."""
        self.settle()
        self.block_changed = self._unchanged
        self._step_in_block = self._step_in_block + 1

    def settle(self, blocks_moved: bool = True) -> None:
        """Move the step counters on after `advance` (reading them does it too; a no-op when they are settled).

        blocks_moved=False: the caller knows on the host that no sequence's block moved at the commit
        (the decoder counts the masked positions left); the counters then take one call instead of five."""
        if not self._unsettled:
            return
        self._unsettled = False
        if not blocks_moved:
            self._step_in_block = self._step_in_block + 1
            return
        changed = self.block_changed
        self._step_in_block = torch.where(changed, 0, self._step_in_block + 1)
        self._masked_at_block_start = torch.where(changed, (self.in_block & self.masked).sum(1),
                                                  self._masked_at_block_start)

    @cached_property
    def _unchanged(self) -> Tensor:
        """[B] bool, all False: `block_changed` after `hold`."""
        return torch.zeros_like(self.active)

    def eos_reached(self, eos_ids: tuple[int, ...]) -> Tensor:
        """[B] True = an EOS of eos_ids was generated with nothing masked before it."""
        masked = self.masked
        t = self.x.shape[1]
        eos = torch.isin(self.x, torch.tensor(eos_ids, device=self.x.device)) & self._generation
        first_eos = torch.where(eos.any(1), eos.float().argmax(1), t)
        first_mask = torch.where(masked.any(1), masked.float().argmax(1), t)
        return eos.any(1) & (first_mask > first_eos)


__all__ = ["NOT_COMMITTED", "DecodeState"]
