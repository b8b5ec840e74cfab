"""DiffusionDecoder: one decode loop for every family, cache mode and policy stack.

Per step, for every unfinished sequence of the batch:

1. `_view`      -- where each sequence stands: its current block, what is decoded;
2. the cache mode picks the positions to compute and the K/V that may be reused;
3. `_run_layers` -- layers run one by one over those rows; eviction policies may
   drop rows between layers (FOCUS) or reuse cached rows (DyLLM);
4. `_block_logits` -- logits of the surviving rows that predict the current block
   (Dream reads position p at row p - 1);
5. the unmasking policy commits tokens; `_apply` writes them and the bookkeeping.

Sequences of different lengths share a batch: each keeps its own positions,
blocks and step counters, so a batch gives the same tokens as one at a time.

Shapes: B batch, T positions, L rows, S block positions, V vocab, C width.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from focuslib.cache import BlockView, CacheMode, KVCache, cache_mode_class
from focuslib.eviction import EvictionStack, LayerInput, LayerRows
from focuslib.model import Transformer
from focuslib.rows import Rows, block_positions
from focuslib.trace import TraceRecorder
from policies.budget import BudgetPolicy
from policies.unmasking import StepContext, UnmaskingPolicy

NOT_COMMITTED = -1


@dataclass
class DecodeStats:
    """Counters of one `generate` call; row_layers (rows x layers actually run) is the FLOP proxy."""

    forward_passes: int = 0
    steps: int = 0
    row_layers: int = 0
    row_layers_per_layer: list[int] = field(default_factory=list)
    tokens_committed: int = 0
    sequence_steps: int = 0  # sum over steps of sequences still decoding
    committed_per_step: list[int] = field(default_factory=list)
    wall_time_s: float = 0.0

    @property
    def tokens_per_step(self) -> float:
        """Tokens committed per step per sequence."""
        return self.tokens_committed / max(self.sequence_steps, 1)

    @property
    def tokens_per_s(self) -> float:
        """Committed tokens over decoding wall time (setup and output excluded)."""
        return self.tokens_committed / max(self.wall_time_s, 1e-9)

    def add(self, other: "DecodeStats") -> None:
        """Accumulate another call's counters (e.g. over the batches of an evaluation)."""
        for key in ("forward_passes", "steps", "row_layers", "tokens_committed", "sequence_steps", "wall_time_s"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        width = max(len(self.row_layers_per_layer), len(other.row_layers_per_layer))
        mine = self.row_layers_per_layer + [0] * (width - len(self.row_layers_per_layer))
        self.row_layers_per_layer = [a + b for a, b in zip(mine, other.row_layers_per_layer + [0] * width)]
        self.committed_per_step += other.committed_per_step

    def as_dict(self) -> dict:
        """The counters and derived rates as plain values (per-step lists left out), for JSON records."""
        keys = ("forward_passes", "steps", "row_layers", "tokens_committed", "wall_time_s")
        return {**{k: getattr(self, k) for k in keys},
                "tokens_per_step": self.tokens_per_step, "tokens_per_s": self.tokens_per_s,
                "row_layers_per_layer": list(self.row_layers_per_layer)}


@dataclass
class GenerationOutput:
    """Result of `generate`: ids after each prompt (cut at the first EOS), text, stats, trace."""

    sequences: list[list[int]]
    tokens: Tensor  # [B, G] raw generation region (mask id where never decoded)
    stats: DecodeStats
    text: list[str] | None = None
    trace: "object | None" = None  # pandas DataFrame when generate(trace=True)
    steps_per_sequence: list[int] = field(default_factory=list)  # steps until each sequence finished
    committed_per_sequence: list[int] = field(default_factory=list)  # tokens each sequence committed


@dataclass
class DecodeState:
    """Everything that changes during decoding. [B, T] tensors are indexed by absolute position."""

    x: Tensor  # [B, T] long tokens
    in_sequence: Tensor  # [B, T] bool, True = prompt or generation position of this sequence
    block_id: Tensor  # [B, T] long, block of each position (-1 for prompt rows of full-attention families)
    prompt_len: Tensor  # [B]
    committed_step: Tensor  # [B, T] long, step at which the position was committed (-1: not yet / prompt)
    current_block: Tensor  # [B] long, block being decoded (a large value once finished)
    step_in_block: Tensor  # [B] long
    masked_at_block_start: Tensor  # [B] long
    done: Tensor  # [B] bool
    block_changed: Tensor  # [B] bool, True = current block started at this step
    span: int  # positions per block


class DiffusionDecoder:
    """Decode masked diffusion LMs with interchangeable unmasking, eviction and budget policies.

    Example (tiny random model, token ids in and out):
        >>> from focuslib.testing import tiny_model
        >>> from policies.unmasking import Threshold
        >>> model = tiny_model("sdar")
        >>> out = DiffusionDecoder(model, Threshold(0.9)).generate([[3, 4, 5]], gen_length=8)
        >>> len(out.sequences[0]) <= 8
        True
    """

    def __init__(self, model: Transformer, unmasking: UnmaskingPolicy, eviction: Any = None,
                 budget: BudgetPolicy | None = None, *, block_size: int | None = None,
                 cache: str | None = None, tokenizer: Any = None) -> None:
        cfg = model.cfg
        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.unmasking = unmasking
        self.cache_name = cache or ("block" if cfg.block_diffusion else "none")
        self.cache_class = cache_mode_class(cfg.attention, self.cache_name)
        if cfg.block_diffusion and block_size not in (None, cfg.block_size):
            raise ValueError(f"block_size={block_size} differs from the model's block-causal block {cfg.block_size}; "
                             "block-diffusion families decode on their own block grid")
        if block_size is not None and block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = cfg.block_size if cfg.block_diffusion else block_size
        self.eviction = EvictionStack.build(eviction, budget, model)

    # -- public ------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int] | str], *, gen_length: int, steps: int | None = None,
                 stop_at_eos: bool = True, trace: bool = False, seed: int | None = None) -> GenerationOutput:
        """Decode `gen_length` tokens after each prompt.

        steps: total step budget for schedule policies (split evenly over the
        ceil(gen_length / block) blocks); for dynamic policies a cap (the block's remaining
        masks are committed at its last step). On the absolute block grid of block-diffusion
        families a prompt ending mid-block makes its generation touch one block more, which
        gets the same per-block budget. Every step commits at least one token, so
        `steps > gen_length` finishes in gen_length steps. With an eviction policy, rows
        evicted at a block's last budgeted step commit at the next one.
        """
        ids = self._encode(prompts)
        self._check_request(ids, gen_length, steps)
        start = time.perf_counter()
        state = self._init_state(ids, gen_length)
        steps_per_block = self._steps_per_block(gen_length, steps)
        cache = self._new_cache(state)
        mode: CacheMode = self.cache_class(state.x.shape[0], state.x.shape[1], state.x.device)
        stats = DecodeStats(row_layers_per_layer=[0] * self.cfg.n_layers)
        recorder = TraceRecorder() if trace else None
        generator = torch.Generator(device=state.x.device).manual_seed(seed) if seed is not None else None
        self.eviction.reset(state.x.shape[0])
        while not bool(state.done.all()):
            self._step(state, mode, cache, stats, recorder, steps_per_block, generator, stop_at_eos)
        stats.wall_time_s = time.perf_counter() - start
        return self._output(state, ids, gen_length, stats, recorder)

    # -- one step ----------------------------------------------------------------

    def _step(self, state: DecodeState, mode: CacheMode, cache: KVCache, stats: DecodeStats,
              recorder: TraceRecorder | None, steps_per_block: int | None, generator: torch.Generator | None,
              stop_at_eos: bool) -> None:
        view = self._view(state)
        active = ~state.done
        t = state.x.shape[1]
        start = self._block_start(state)
        need = mode.rows(view)
        if self.cfg.logit_shift:  # Dream: position p is read from row p - 1, so that row must be computed
            need = need | torch.nn.functional.pad(view.in_block[:, 1:], (0, 1), value=False)
        need = need & active[:, None]
        rows = Rows.from_mask(need)
        reusable = mode.reusable(view) & ~need  # rows dropped later in this step leave no K/V to attend
        masked_block = view.in_block & ~view.decoded & active[:, None]  # [B, T] True = may be committed
        h, rows, layer_rows = self._run_layers(state, rows, reusable, cache, stats, masked_block, start)
        mode.update(view, rows.as_mask(t))
        block_pos, in_range = block_positions(start, state.span, t)
        masked = masked_block.gather(1, block_pos) & in_range  # [B, S]
        logits, candidates = self._block_logits(state, h, rows, block_pos, masked)
        ctx = StepContext(step=state.step_in_block, steps_per_block=steps_per_block,
                          n_masked_at_block_start=state.masked_at_block_start, generator=generator)
        stuck = masked.any(1) & ~candidates.any(1)
        if bool(stuck.any()):
            raise RuntimeError(f"sequences {stuck.nonzero().flatten().tolist()} have masked positions but no row that "
                               "predicts them survived this step (an eviction policy must keep at least one masked row)")
        commit = self.unmasking(logits, candidates, ctx)
        chosen = commit.commit & candidates
        if steps_per_block is not None:  # the block's last budgeted step commits what is left
            chosen |= candidates & (state.step_in_block >= steps_per_block - 1)[:, None]
        if recorder is not None:
            recorder.record(stats.steps, state, block_pos, masked, candidates, commit.confidence, chosen, layer_rows)
        self._apply(state, block_pos, chosen, commit.tokens, stats, stop_at_eos)

    def _view(self, state: DecodeState) -> BlockView:
        decoded = state.x != self.cfg.mask_id
        cur = state.current_block[:, None]
        nxt = torch.nn.functional.pad(state.block_id[:, 1:], (0, 1), value=-2)
        return BlockView(
            in_sequence=state.in_sequence, decoded=decoded,
            before_block_end=state.block_id <= cur, in_block=(state.block_id == cur) & state.in_sequence,
            block_start_step=state.block_changed, block_last=(nxt != state.block_id) | ~state.in_sequence,
            in_finished_block=state.block_id < cur,
        )

    def _run_layers(self, state: DecodeState, rows: Rows, reusable: Tensor, cache: KVCache, stats: DecodeStats,
                    masked_block: Tensor, block_start: Tensor) -> tuple[Tensor, Rows, list[LayerRows]]:
        """Run every layer over `rows`; eviction may shrink the rows between layers. Returns final hidden rows.

        The eviction stack runs each layer (`dense_layer`, or a policy's own runner such
        as DyLLM's) and may then drop rows (FOCUS). row_layers counts the rows whose
        attention and FFN really ran (`LayerOutput.computed`); the counts stay on the
        device until the last layer, so the loop itself adds no host sync.
        reusable [B, T]: cached positions that are not among `rows`.
        """
        t = state.x.shape[1]
        key_pos = torch.arange(t + 1, device=state.x.device).expand(state.x.shape[0], t + 1)  # [B, T+1]
        h = self.model.embed_rows(state.x.gather(1, rows.pos), rows.pos, state.prompt_len)  # [B, L, C]
        stats.forward_passes += 1
        layer_rows: list[LayerRows] = []
        computed: list[Tensor] = []  # per layer, 0-dim count of rows that really ran
        # rebuilt only when rows change: [B, L, T+1] attention mask and [B, L] masked-row flags
        mask = self._attention_mask(rows, reusable, key_pos)
        masked_rows = masked_block.gather(1, rows.pos) & rows.valid
        for i, layer in enumerate(self.model.layers):
            out = self.eviction.run_layer(LayerInput(index=i, layer=layer, h=h, rows=rows, mask=mask, cache=cache,
                                                     state=state))
            h = out.h
            computed.append(out.computed.sum())
            info = LayerRows(layer=i, rows=rows, q=out.q, k=out.k, masked=masked_rows, block_start=block_start,
                             state=state)
            if i < 2:  # layers 0 and 1 feed traces
                layer_rows.append(info)
            keep = self.eviction.after_layer(info)
            if keep is not None:
                rows, index = rows.select(keep)  # index [B, L'] into the old rows
                h = h.gather(1, index[:, :, None].expand(-1, -1, h.shape[-1]))
                mask = self._attention_mask(rows, reusable, key_pos)
                masked_rows = masked_block.gather(1, rows.pos) & rows.valid
        for i, n in enumerate(torch.stack(computed).tolist()):
            stats.row_layers += n
            stats.row_layers_per_layer[i] += n
        return h, rows, layer_rows

    def _attention_mask(self, rows: Rows, reusable: Tensor, key_pos: Tensor) -> Tensor:
        """[B, L, T+1] bool, True = row may attend the key: the family's rule over computed or reusable positions."""
        t = key_pos.shape[1] - 1
        visible = torch.nn.functional.pad(reusable | rows.as_mask(t), (0, 1), value=False)  # [B, T+1]
        mask = self.model.attention_rule(rows.pos, key_pos) & visible[:, None, :]
        mask[:, :, 0] |= ~rows.valid  # padding rows attend position 0 so softmax stays finite
        return mask

    def _block_logits(self, state: DecodeState, h: Tensor, rows: Rows, block_pos: Tensor,
                      masked: Tensor) -> tuple[Tensor, Tensor]:
        """Logits [B, S, V] for the block positions and candidates [B, S] (True = may be committed now).

        A masked position is a candidate when the row that predicts it (itself, or
        its left neighbour under Dream's shift) survived every layer.
        """
        shift = int(self.cfg.logit_shift)
        row_of = rows.rows_at((block_pos - shift).clamp(min=0), state.x.shape[1])  # [B, S], -1 = no row
        h_block = h.gather(1, row_of.clamp(min=0)[:, :, None].expand(-1, -1, h.shape[-1]))
        logits = self.model.logits(h_block).float()
        logits[..., self.cfg.mask_id] = float("-inf")  # committing the mask token would never finish the block
        return logits, masked & (row_of >= 0)

    def _block_start(self, state: DecodeState) -> Tensor:
        """[B] absolute start of each sequence's current block (for gathering its positions)."""
        blk = state.current_block.clamp(max=state.x.shape[1])  # finished sequences: anything in range
        if self.cfg.block_diffusion:
            return blk * self.block_size
        return state.prompt_len + blk * (self.block_size or 0)

    def _apply(self, state: DecodeState, block_pos: Tensor, chosen: Tensor, tokens: Tensor, stats: DecodeStats,
               stop_at_eos: bool) -> None:
        """Write committed tokens, then advance blocks, step counters and the done flags."""
        active = ~state.done
        seq, slot = chosen.nonzero(as_tuple=True)
        state.x[seq, block_pos[seq, slot]] = tokens[seq, slot]
        state.committed_step[seq, block_pos[seq, slot]] = stats.steps
        n, n_active = torch.stack([chosen.sum(), active.sum()]).tolist()  # one host sync for both
        stats.tokens_committed += n
        stats.committed_per_step.append(n)
        stats.sequence_steps += n_active
        stats.steps += 1
        masked = (state.x == self.cfg.mask_id) & state.in_sequence
        block = torch.where(masked, state.block_id, torch.iinfo(torch.long).max).min(1).values
        state.block_changed = block != state.current_block
        state.step_in_block = torch.where(state.block_changed, 0, state.step_in_block + 1)
        in_new_block = masked & (state.block_id == block[:, None])
        state.masked_at_block_start = torch.where(state.block_changed, in_new_block.sum(1),
                                                  state.masked_at_block_start)
        state.current_block = block
        state.done = ~masked.any(1)
        if stop_at_eos:
            state.done |= self._eos_reached(state, masked)

    def _eos_reached(self, state: DecodeState, masked: Tensor) -> Tensor:
        """[B] True = an EOS was generated with nothing masked before it."""
        if not self.cfg.eos_ids:
            return torch.zeros_like(state.done)
        t = state.x.shape[1]
        gen = state.in_sequence & (torch.arange(t, device=state.x.device) >= state.prompt_len[:, None])
        eos = torch.isin(state.x, torch.tensor(self.cfg.eos_ids, device=state.x.device)) & gen
        first_eos = torch.where(eos.any(1), eos.float().argmax(1), t)
        first_mask = torch.where(masked.any(1), masked.float().argmax(1), t)
        return eos.any(1) & (first_mask > first_eos)

    # -- setup -------------------------------------------------------------------

    def _encode(self, prompts: Sequence[Sequence[int] | str]) -> list[list[int]]:
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
            raise TypeError("prompts must be a list of token-id lists or strings")
        if len(prompts) == 0:
            raise ValueError("prompts is empty: pass at least one prompt")
        out = []
        for p in prompts:
            if isinstance(p, str):
                if self.tokenizer is None:
                    raise ValueError("string prompts need a tokenizer: DiffusionDecoder(..., tokenizer=tok)")
                p = self.tokenizer.encode(p, add_special_tokens=False)
                p = getattr(p, "ids", p)  # a raw tokenizers.Tokenizer returns an Encoding
            out.append([int(t) for t in p])
        return out

    def _check_request(self, ids: list[list[int]], gen_length: int, steps: int | None) -> None:
        cfg = self.cfg
        if gen_length <= 0:
            raise ValueError(f"gen_length must be positive, got {gen_length}")
        for i, p in enumerate(ids):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if cfg.mask_id in p:
                raise ValueError(f"prompt {i} contains the mask token id {cfg.mask_id}")
            if min(p) < 0 or max(p) >= cfg.vocab_size:
                raise ValueError(f"prompt {i} has token ids outside [0, {cfg.vocab_size})")
            if len(p) + gen_length > cfg.max_positions:
                raise ValueError(f"prompt {i} ({len(p)} tokens) + gen_length {gen_length} exceeds the model's "
                                 f"max_positions {cfg.max_positions}")
        if not cfg.block_diffusion and self.block_size and gen_length % self.block_size:
            raise ValueError(f"gen_length {gen_length} is not a multiple of block_size {self.block_size}")
        if self.unmasking.needs_schedule and steps is None:
            raise ValueError(f"{type(self.unmasking).__name__} follows a fixed schedule: pass steps=")
        if steps is not None and steps < self._n_blocks(gen_length):
            raise ValueError(f"steps={steps} is fewer than the {self._n_blocks(gen_length)} blocks to decode")

    def _n_blocks(self, gen_length: int) -> int:
        return -(-gen_length // (self.block_size or gen_length))

    def _steps_per_block(self, gen_length: int, steps: int | None) -> int | None:
        return None if steps is None else steps // self._n_blocks(gen_length)

    def _init_state(self, ids: list[list[int]], gen_length: int) -> DecodeState:
        cfg, dev = self.cfg, self.model.embed.weight.device
        b = len(ids)
        prompt_len = torch.tensor([len(p) for p in ids], device=dev)
        t = int(prompt_len.max()) + gen_length
        pos = torch.arange(t, device=dev).expand(b, t)
        x = torch.full((b, t), cfg.mask_id, dtype=torch.long, device=dev)
        for i, p in enumerate(ids):
            x[i, : len(p)] = torch.tensor(p, device=dev)
        in_sequence = pos < (prompt_len + gen_length)[:, None]
        pad = cfg.pad_id if cfg.pad_id is not None else (cfg.eos_ids[0] if cfg.eos_ids else 0)
        x = torch.where(in_sequence, x, pad)
        if cfg.block_diffusion:
            block_id = pos // self.block_size
        else:
            span = self.block_size or gen_length
            block_id = torch.where(pos >= prompt_len[:, None], (pos - prompt_len[:, None]) // span, -1)
        masked = x == cfg.mask_id
        first = torch.where(masked, block_id, torch.iinfo(torch.long).max).min(1).values
        return DecodeState(
            x=x, in_sequence=in_sequence, block_id=block_id, prompt_len=prompt_len,
            committed_step=torch.full((b, t), NOT_COMMITTED, device=dev), current_block=first,
            step_in_block=torch.zeros(b, dtype=torch.long, device=dev),
            masked_at_block_start=(masked & (block_id == first[:, None])).sum(1),
            done=torch.zeros(b, dtype=torch.bool, device=dev), block_changed=torch.ones(b, dtype=torch.bool, device=dev),
            span=self.block_size or gen_length,
        )

    def _new_cache(self, state: DecodeState) -> KVCache:
        cfg = self.cfg
        w = self.model.embed.weight
        return KVCache(cfg.n_layers, state.x.shape[0], state.x.shape[1], cfg.n_kv_heads, cfg.head_dim, w.dtype, w.device)

    def _output(self, state: DecodeState, ids: list[list[int]], gen_length: int, stats: DecodeStats,
                recorder: TraceRecorder | None) -> GenerationOutput:
        idx = state.prompt_len[:, None] + torch.arange(gen_length, device=state.x.device)
        tokens = state.x.gather(1, idx)
        eos = set(self.cfg.eos_ids)
        sequences = []
        for row in tokens.tolist():
            cut = next((j for j, tok in enumerate(row) if tok in eos), len(row))
            sequences.append(row[:cut])
        text = None
        if self.tokenizer is not None:
            text = [self.tokenizer.decode(s, skip_special_tokens=True) for s in sequences]
        trace = recorder.frame(state.committed_step) if recorder is not None else None
        committed = state.committed_step >= 0
        return GenerationOutput(sequences=sequences, tokens=tokens, stats=stats, text=text, trace=trace,
                                steps_per_sequence=(state.committed_step.max(1).values + 1).tolist(),
                                committed_per_sequence=committed.sum(1).tolist())
