"""DiffusionDecoder: one decode loop for every family, cache mode and policy stack.

Per step, for every unfinished sequence of the batch:

1. `DecodeState.view` -- where each sequence stands: its current block, what is decoded
   (`focuslib.schedule`, the tensor-only block scheduler);
2. the cache mode picks the positions to compute and the K/V that may be reused;
3. `_run_layers` -- layers run one by one over those rows; eviction policies may
   drop rows between layers (FOCUS) or reuse cached rows (DyLLM);
4. `_block_logits` -- logits of the surviving rows that predict the current block
   (Dream reads position p at row p - 1);
5. the unmasking policy commits tokens; `_apply` writes them (`DecodeState.write`), reads the
   commits per sequence in the step's host sync, and moves the blocks on (`advance`) or, when
   none finished, keeps them (`hold`) and repeats the step's rows once they have settled
   (docs/design.md, "Steady rows and the step's host syncs").

Sequences of different lengths share a batch: each keeps its own positions,
blocks and step counters, so a batch gives the same tokens as one at a time.

Shapes: B batch, T positions, L rows, S block positions, V vocab, C width.
"""
from __future__ import annotations

import gc
import hashlib
import math
import numbers
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Sequence

import torch
from torch import Tensor

from focuslib.cache import CACHE_OPTIONS, BlockView, CacheMode, KVCache, cache_mode_class
from focuslib.contract import BudgetPolicy, CommitView, LayerCall, LayerView, Projection, StepView
from focuslib.eviction import EvictionStack, StackState
from focuslib.families import get_family
from focuslib.layer import DenseRunner, packed_rope
from focuslib.model import Transformer
from focuslib.requests import encode_prompts, n_blocks, request_problems
from focuslib.rows import Rows, block_positions
from focuslib.schedule import DecodeState
from focuslib.trace import TraceRecorder
from focuslib.kernels import gather_rows
from focuslib.policies.unmasking import POLICIES, StepContext, UnmaskingPolicy


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


@dataclass(frozen=True)
class _Keys:
    """Which key positions [B, T] a step's rows may attend before and after rows are evicted."""

    cached: Tensor  # cached K/V the cache mode lets this step reuse (some may be recomputed at this step)
    computed: Tensor  # every row computed at this step
    at_start: Tensor  # cached | computed
    stale: bool  # evicted rows stay visible as stale keys (FOCUS) instead of vanishing

    @cached_property
    def reusable(self) -> Tensor:
        """Cached K/V of positions not computed at this step (what stays visible of the cache after eviction)."""
        return self.cached & ~self.computed


@dataclass(frozen=True)
class _Slots:
    """The current blocks' slots, kept while no block start moves (the starts are read in each step's sync)."""

    starts: tuple[int, ...]  # first position of every sequence's current block, on the host
    pos: Tensor  # [B, S] long, absolute positions of the slots (clamped to T - 1)
    in_range: Tensor  # [B, S] bool, True = slot < T
    fits: bool  # every slot < T (in_range is all True)

    @classmethod
    def of(cls, block_start: Tensor, starts: tuple[int, ...], span: int, positions: int) -> "_Slots":
        pos, in_range = block_positions(block_start, span, positions)
        return cls(starts, pos, in_range, max(starts) + span <= positions)

    @property
    def common_start(self) -> int | None:
        """The block start every sequence shares (always at batch 1), else None."""
        return self.starts[0] if min(self.starts) == max(self.starts) else None


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
class _Call:
    """Everything one generate call carries from step to step besides the decoding state."""

    mode: CacheMode
    cache: KVCache
    stats: DecodeStats
    policies: StackState
    recorder: TraceRecorder | None
    steps_per_block: int | None
    generators: tuple[torch.Generator, ...] | None  # one per sequence (seed=), else None
    stop_at_eos: bool
    dense_labels: bool = False
    plan: "_Plan | None" = None  # the next step's rows, planned when the last step committed
    # the last planned rows, their RoPE tables and their attention rule (`_attention_rule`)
    row_tables: tuple[Rows, tuple[Tensor, Tensor], Tensor] | None = None
    slots: _Slots | None = None  # the current blocks' slots, rebuilt when a block start moves
    n_active: int = 0  # sequences not done at the start of the step (read in the last step's sync)
    replan: bool = True  # a block moved at the last commit (or none was decoded yet): its rows may still change
    # per sequence, on the host: tokens committed, and 1 + the last step that committed one (0: none yet)
    committed_per_sequence: list[int] = field(default_factory=list)
    steps_per_sequence: list[int] = field(default_factory=list)


@dataclass
class _KeyTables:
    """What a plan's rows may attend at the start of a step: built at its first step, kept by its repeats."""

    cached: Tensor | None = None  # [B, T] bool, `CacheMode.reusable`
    keys: _Keys | None = None
    mask: Tensor | None = None  # [B, L, K] bool, `_attention_mask` of the keys at the step's start


@dataclass(frozen=True)
class _Plan:
    """What the next step computes, decided right after the previous step's commits."""

    view: BlockView
    masked_block: Tensor  # [B, T] bool, masked positions of the current blocks (what may be committed)
    n_masked: Tensor  # [B] long, masked positions of each current block (`StepView.n_masked`)
    block_start: Tensor  # [B] long, first position of each sequence's current block
    starts: tuple[int, ...]  # block_start on the host
    masked_left: tuple[int, ...]  # n_masked on the host
    active: tuple[bool, ...]  # the sequences not done, on the host
    rows: Rows  # the positions the cache mode needs computed (`_next_rows`'s need)
    repeated: bool = False  # the last step's plan again (`repeat`): the cache mode has nothing to update
    tables: _KeyTables = field(default_factory=_KeyTables)

    @property
    def masked_width(self) -> int:
        """The most masked rows of any sequence (`LayerView.masked_width`): every masked row of a block is computed."""
        return max(self.masked_left)

    @classmethod
    def read(cls, view: BlockView, need: Tensor, masked_block: Tensor, n_masked: Tensor, block_start: Tensor,
             sizes: list[int], last: "_Plan | None" = None) -> "_Plan":
        """The plan from `_next_rows`'s tensors and their sizes as read on the host ([row stats (5), n_masked (B),
        active (B), block starts (B)]); the last plan's rows are reused when they are the same span (with their
        masks, packer and RoPE tables)."""
        b = n_masked.shape[0]
        stats, left = sizes[:5], tuple(sizes[5:5 + b])
        active, starts = tuple(bool(a) for a in sizes[5 + b:5 + 2 * b]), tuple(sizes[5 + 2 * b:])
        rows = Rows.from_stats(need, stats, last.rows if last else None)
        return cls(view, masked_block, n_masked, block_start, starts, left, active, rows)

    def repeat(self, masked: Tensor, committed: Tensor, left: list[int]) -> "_Plan":
        """This plan again for the next step, after commits that moved no block under a steady cache mode
        (`CacheMode.steady`): the same rows and keys; masked [B, T] is the state's, committed [B] the
        commits per sequence (left: the same subtracted on the host)."""
        v = self.view  # (built field by field: dataclasses.replace costs about 10 us a call)
        view = BlockView(in_sequence=v.in_sequence, masked=masked, before_block_end=v.before_block_end,
                         in_block=v.in_block, block_start_step=v.block_start_step, block_last=v.block_last,
                         in_finished_block=v.in_finished_block)
        return _Plan(view=view, masked_block=self.masked_block & masked,
                     n_masked=self.n_masked - committed, block_start=self.block_start, starts=self.starts,
                     masked_left=tuple(left), active=self.active, rows=self.rows, repeated=True, tables=self.tables)


class DiffusionDecoder:
    """Decode masked diffusion LMs with interchangeable unmasking, eviction and budget policies.

    Example (tiny random model, token ids in and out):
        >>> from focuslib.testing import tiny_model
        >>> from focuslib.policies.unmasking import Threshold
        >>> model = tiny_model("sdar")
        >>> out = DiffusionDecoder(model, Threshold(0.9)).generate([[3, 4, 5]], gen_length=8)
        >>> len(out.sequences[0]) <= 8
        True
    """

    def __init__(self, model: Transformer, unmasking: UnmaskingPolicy | str, eviction: Any = None,
                 budget: BudgetPolicy | None = None, *, block_size: int | None = None,
                 cache: str | None = None, cache_options: dict[str, Any] | None = None, tokenizer: Any = None,
                 allow_unk: bool = False, cfg_scale: float = 0.0) -> None:
        cfg = model.cfg
        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.unmasking = self._unmasking_policy(unmasking)  # a policy object, or a name of focuslib.policies.unmasking.POLICIES
        self.allow_unk = allow_unk  # True: string prompts may hold characters the tokenizer maps to its unknown token
        self.cache_name = cache or ("block" if cfg.block_diffusion else "none")
        self.cache_class = cache_mode_class(cfg.attention, self.cache_name)
        self.cache_options = dict(cache_options or {})
        unknown = sorted(set(self.cache_options) - set(CACHE_OPTIONS.get(self.cache_name, ())))
        if unknown:
            raise ValueError(f"cache mode {self.cache_name!r} has no option(s) {unknown}; "
                             f"its options: {list(CACHE_OPTIONS.get(self.cache_name, ()))}")
        if cfg.block_diffusion and block_size not in (None, cfg.block_size):
            raise ValueError(f"block_size={block_size} differs from the model's block-causal block {cfg.block_size}; "
                             "block-diffusion families decode on their own block grid")
        if block_size is not None and block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = cfg.block_size if cfg.block_diffusion else block_size
        self.eviction = EvictionStack.build(eviction, budget, model)
        # classifier-free guidance (LLaDA's cfg_scale): each step also runs an unconditional copy of the batch
        # (prompt replaced by the mask id) and the policy sees un + (cfg_scale + 1) * (cond - un); 0 = off
        if isinstance(cfg_scale, bool) or not isinstance(cfg_scale, numbers.Real) or not math.isfinite(cfg_scale) \
                or cfg_scale < 0:
            raise ValueError(f"cfg_scale must be a finite number >= 0 (0 = no guidance), got {cfg_scale!r}")
        if cfg_scale > 0 and self.eviction:
            raise ValueError("cfg_scale > 0 cannot be combined with eviction policies: the unconditional copy would "
                             "need its own eviction decisions; decode with guidance without eviction")
        self.cfg_scale = float(cfg_scale)
        self.eos_ids, self.eot_ids = special_ids(cfg)

    # -- public ------------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int] | str], *, gen_length: int, steps: int | None = None,
                 stop_at_eos: bool = True, trace: bool = False, seed: int | None = None,
                 dense_labels: bool = False, sequence_ids: Sequence[int] | None = None) -> GenerationOutput:
        """Decode `gen_length` tokens after each prompt.

        steps: total step budget for schedule policies (split evenly over the
        ceil(gen_length / block) blocks); for dynamic policies a cap (the block's remaining
        masks are committed at its last step). On the absolute block grid of block-diffusion
        families a prompt ending mid-block makes its generation touch one block more, which
        gets the same per-block budget. Every step commits at least one token, so
        `steps > gen_length` finishes in gen_length steps. Eviction never drops a row at a
        block's last budgeted step, so schedules keep their step budget with eviction too.
        dense_labels (with trace=True): every step is first run without eviction (untimed
        in the statistics, on a copy of the caches) and the trace gains `dense_commit`: the
        row would have been committed at this step without eviction. Eviction's misses
        are the evicted rows with dense_commit True. Doubles the work: analysis only.
        seed: every random draw of the unmasking policy (sampling, random remasking, Dream's
        origin and alg_temp) comes from one generator per sequence, keyed by (seed, its
        index in `prompts`), so a sequence gets the same tokens in any batch; sequence_ids
        (ints >= 0, one per prompt) replace the indices in the key, e.g. a prompt's index in
        a whole dataset decoded in chunks. Without seed, torch's default generator.
        """
        if dense_labels and not trace:
            raise ValueError("dense_labels=True labels trace rows: pass trace=True as well")
        ids = self._encode(prompts)
        self._check_request(ids, gen_length, steps)
        start = time.perf_counter()
        cfg = self.cfg
        # padding after short sequences: never the mask id, so that "masked" needs no sequence check
        pad = next(i for i in (cfg.pad_id, *cfg.eos_ids, 0, 1) if i is not None and i != cfg.mask_id)
        state = DecodeState.start(ids, gen_length, mask_id=cfg.mask_id, pad_id=pad, block_size=self.block_size,
                                  block_diffusion=cfg.block_diffusion, device=self.model.embed.weight.device)
        b, t = state.x.shape
        dev = state.x.device
        call = _Call(
            mode=self.cache_class(b, t, dev, **self.cache_options), cache=self._new_cache(state),
            stats=DecodeStats(row_layers_per_layer=[0] * self.cfg.n_layers),
            policies=self.eviction.begin(b, t, dev), recorder=TraceRecorder(*self._trace_layers()) if trace else None,
            steps_per_block=self._steps_per_block(gen_length, steps),
            generators=sequence_generators(seed, sequence_ids, b, dev),
            stop_at_eos=stop_at_eos, dense_labels=dense_labels, committed_per_sequence=[0] * b,
            steps_per_sequence=[0] * b)
        with collector_paused():
            # every sequence starts with gen_length >= 1 masked positions (`request_problems`): none is done
            planned, sizes = self._next_rows(state, call)
            call.plan = _Plan.read(*planned, torch.cat(sizes).tolist())
            call.n_active, finished = b, False
            while not finished:
                finished = self._step(state, call)
        call.stats.wall_time_s = time.perf_counter() - start
        return self._output(state, ids, gen_length, call)

    # -- one step ----------------------------------------------------------------

    def _step(self, state: DecodeState, call: _Call) -> bool:
        """One forward pass and its commits; True when every sequence is done."""
        plan = call.plan
        view, rows, masked_block = plan.view, plan.rows, plan.masked_block
        t = state.x.shape[1]
        if plan.tables.cached is None:
            plan.tables.cached = call.mode.reusable(view)  # K/V the mode lets this step reuse
        cached = plan.tables.cached
        if call.slots is None or call.slots.starts != plan.starts:
            call.slots = _Slots.of(plan.block_start, plan.starts, state.span, t)
        slots = call.slots
        step = self._step_view(state, plan, call.stats.steps, call.steps_per_block, slots)
        block_pos, start = slots.pos, slots.common_start
        if start is not None and slots.fits:  # one block start: the block's masked flags are a slice
            masked = masked_block[:, start:start + state.span]  # [B, S]
        else:
            masked = masked_block.gather(1, block_pos)
            if not slots.fits:
                masked &= slots.in_range
        ctx = StepContext(step=state.step_in_block, steps_per_block=call.steps_per_block,
                          n_masked_at_block_start=state.masked_at_block_start, generators=call.generators,
                          eos_ids=self.eos_ids, eot_ids=self.eot_ids)
        dense = None
        if self.eviction.needs_dense_commits or call.dense_labels:  # analysis only: the dense step first
            dense = self._dense_commits(state, call, step, rows, cached, masked, ctx)
            self.eviction.see_dense_commits(dense, call.policies)
        h, rows, views, computed = self._run_layers(state, call, step, rows, cached)
        if not plan.repeated:  # a repeated plan's rows change nothing in a steady mode
            call.mode.update(view, rows.as_mask(t))
        commit, candidates, chosen, stuck = self._decide(state, h, rows, block_pos, masked, ctx, step.last_budgeted,
                                                         start)
        if self.eviction:
            self.eviction.after_step(CommitView(step=step, slots=block_pos, masked=masked, has_logits=candidates,
                                                confidence=commit.confidence, committed=chosen), call.policies)
        if call.recorder is not None:
            call.recorder.record(call.stats.steps, state, block_pos, masked, candidates, commit.confidence, chosen,
                                 views, {**self.eviction.trace_columns(call.policies),
                                         **({"dense_commit": dense} if call.dense_labels else {})})
        return self._apply(state, call, block_pos, chosen, commit.tokens, stuck, computed)

    def _next_rows(self, state: DecodeState, call: _Call
                   ) -> tuple[tuple[BlockView, Tensor, Tensor, Tensor, Tensor], list[Tensor]]:
        """What the next step computes: ((block view, need [B, T], masked_block [B, T], n_masked [B], block_start
        [B]), sizes); sizes, 1-D on the device, are `Rows.stats` of need, n_masked, the active flags and
        block_start, to be read in one host sync (`_Plan.read`)."""
        view = state.view()
        need = call.mode.rows(view)
        if self.cfg.logit_shift:  # Dream: position p is read from row p - 1, so that row must be computed
            need = need | torch.nn.functional.pad(view.in_block[:, 1:], (0, 1), value=False)
        masked_block = view.in_block & state.masked
        if state.x.shape[0] > 1:  # done sequences compute nothing (one alone ends the call: its plan is not used)
            active = state.active[:, None]
            need, masked_block = need & active, masked_block & active
        n_masked = masked_block.sum(1)
        block_start = state.block_start()
        sizes = [*Rows.stats(need, state.ends_table), n_masked, state.active, block_start]
        return (view, need, masked_block, n_masked, block_start), sizes

    def _decide(self, state: DecodeState, h: Tensor, rows: Rows, block_pos: Tensor, masked: Tensor,
                ctx: StepContext, last_budgeted: Tensor | None, start: int | None = None
                ) -> tuple[Any, Tensor, Tensor, Tensor | None]:
        """The unmasking decision: (policy's Commit, candidates [B, S], chosen [B, S] = slots committed now,
        stuck [B] = masked positions left but no row predicting them: `_apply` raises, after its one host sync;
        None without eviction, where every masked position's row is computed). last_budgeted: [B] True at a
        block's last budgeted step (`StepView.last_budgeted`; None without steps=). start: `_Slots.common_start`."""
        logits, candidates = self._block_logits(state, h, rows, block_pos, masked, start)
        stuck = masked.any(1) & ~candidates.any(1) if self.eviction else None
        commit = self.unmasking(logits, candidates, ctx)
        chosen = commit.commit & candidates
        if last_budgeted is not None:  # the block's last budgeted step commits what is left
            chosen |= candidates & last_budgeted[:, None]
        return commit, candidates, chosen, stuck

    def _dense_commits(self, state: DecodeState, call: _Call, step: StepView, rows: Rows, cached: Tensor,
                       masked: Tensor, ctx: StepContext) -> Tensor:
        """[B, T] bool: positions that dense decoding (no eviction) would commit at this step.

        Runs on a copy of the K/V cache and of the sampling generator, so the real step is
        unaffected; its forward pass and row-layers are not counted in the statistics.
        """
        preview = replace(call, cache=call.cache.clone(), recorder=None,
                          stats=DecodeStats(row_layers_per_layer=[0] * self.cfg.n_layers))
        h, rows, _, _ = self._run_layers(state, preview, step, rows, cached, evict=False)
        if ctx.generators is not None:
            ctx = replace(ctx, generators=tuple(torch.Generator(device=g.device).set_state(g.get_state())
                                                for g in ctx.generators))
        block_pos, _ = step.block_slots()
        _, _, chosen, _ = self._decide(state, h, rows, block_pos, masked, ctx, step.last_budgeted)
        out = torch.zeros(state.x.shape[0], state.x.shape[1] + 1, dtype=torch.bool, device=state.x.device)
        return out.scatter_(1, torch.where(chosen, block_pos, state.x.shape[1]), chosen)[:, :-1]

    def _step_view(self, state: DecodeState, plan: _Plan, index: int, steps_per_block: int | None,
                   slots: _Slots) -> StepView:
        """The frozen view of this step that policies receive."""
        last = None if steps_per_block is None else state.step_in_block >= steps_per_block - 1
        return StepView(step=index, tokens=state.x, mask_id=self.cfg.mask_id, prompt_len=state.prompt_len,
                        block_start=plan.block_start, span=state.span, step_in_block=state.step_in_block,
                        masked_at_block_start=state.masked_at_block_start, n_masked=plan.n_masked,
                        active=state.active, logit_shift=int(self.cfg.logit_shift), last_budgeted=last,
                        slots=(slots.pos, slots.in_range))

    def _run_layers(self, state: DecodeState, call: _Call, step: StepView, rows: Rows, cached: Tensor,
                    evict: bool = True) -> tuple[Tensor, Rows, dict[int, LayerView], list[int | Tensor]]:
        """Run every layer over `rows`; eviction may shrink the rows at each layer's two eviction points.

        Each layer runs in two halves (`LayerRunner.project`: Q/K/V, written to the cache;
        `complete`: attention and FFN); the stack's policies may drop rows between them
        (`at_qkv`) and after the layer (`after_layer`). row_layers counts the rows whose
        attention and FFN really ran (`LayerOutput.computed`); the counts stay on the
        device (`_apply` reads them in the step's sync), so the loop adds no host sync.
        Returns the final hidden rows, the rows that reached the end, the LayerView
        at the Q/K/V point of every layer a trace wants, and the row count of every layer.
        """
        t = state.x.shape[1]
        tokens, answer_start, b = state.x, state.prompt_len, state.x.shape[0]
        masked_block, masked_width = call.plan.masked_block, call.plan.masked_width  # None once rows are evicted
        planned = rows  # the plan's rows (a plan reuses the last one's when they are the same)
        if self.cfg_scale:  # guidance: the unconditional copy (prompt masked) runs as the second half of the batch
            tokens, answer_start = torch.cat([tokens, self._unconditional(state)]), answer_start.repeat(2)
            rows = Rows(rows.pos.repeat(2, 1), rows.valid.repeat(2, 1),
                        None if rows.n_valid is None else 2 * rows.n_valid, rows.last_pos, rows.span)
            cached, masked_block = cached.repeat(2, 1), masked_block.repeat(2, 1)
        h = self.model.embed_rows(rows.take(tokens), rows.pos, answer_start)  # [B, L, C] ([2B, ...] guided)
        call.stats.forward_passes += 1
        runner = call.policies.runner if evict else DenseRunner()
        if call.row_tables is None or call.row_tables[0] is not planned:  # rebuilt when the rows change
            call.row_tables = (planned, packed_rope(self.cfg, rows.pos, rows.packer), self._attention_rule(rows, t))
        _, rope, rule = call.row_tables
        tables = call.plan.tables  # the keys at the step's start, kept while the plan repeats
        if tables.keys is None:
            computed_rows = rows.as_mask(t)
            tables.keys = _Keys(cached=cached, computed=computed_rows, at_start=cached | computed_rows,
                                stale=self.eviction.evicted_keys == "stale")
            tables.mask = self._attention_mask(rows, tables.keys.at_start, rule)  # [B, L, K]
        keys, mask = tables.keys, tables.mask
        hooks = evict and bool(self.eviction)
        traced = call.recorder.layers if call.recorder is not None else ()
        masked_rows = rows.take(masked_block) & rows.valid if hooks or traced else None  # what policies see
        views: dict[int, LayerView] = {}
        computed: list[int | Tensor] = []  # per layer, count of rows that really ran (host int, or 0-dim on the device)
        counted: tuple[Tensor | None, Tensor | None] = (None, None)  # (computed mask, its count): rows often repeat
        # no cache, no eviction, and the rows are positions 0..K-1, every key they may reach: attention reads
        # the rows' own K/V and nothing is stored (LLaDA's and Fast-dLLM's uncached loops do the same)
        direct_kv = not hooks and not call.mode.reuses_kv and rows.span == (0, mask.shape[-1])
        for i, layer in enumerate(self.model.layers):
            x = LayerCall(index=i, layer=layer, h=h, rows=rows, mask=mask, step=step, rope=rope,
                          kv=None if direct_kv else call.cache.layer(i))
            proj = runner.project(x)
            if hooks or i in traced:
                lv = LayerView(layer=i, rows=rows, q=proj.q, k=proj.k, masked=masked_rows, step=step,
                               masked_width=masked_width)
            if i in traced:
                views[i] = lv if not self.cfg_scale else replace(  # the conditional half
                    lv, rows=Rows(rows.pos[:b], rows.valid[:b]), q=proj.q[:b], k=proj.k[:b], masked=masked_rows[:b],
                    masked_width=None)
            keep = self.eviction.at_qkv(lv, call.policies) if hooks else None
            if keep is not None:
                rows, h, proj, mask, masked_rows, rope = self._evict(keep, rows, h, proj, keys, masked_block, step)
                x, masked_width = replace(x, h=h, rows=rows, mask=mask, rope=rope), None
            out = runner.complete(x, proj)
            h = out.h
            if out.computed is rows.valid and rows.n_valid is not None:
                computed.append(rows.n_valid)  # every row ran, and their count is known on the host
            else:
                if out.computed is not counted[0]:
                    counted = (out.computed, out.computed.sum())
                computed.append(counted[1])
            keep = self.eviction.after_layer(replace(lv, rows=rows, q=proj.q, k=proj.k, masked=masked_rows,
                                                     masked_width=masked_width), call.policies) if hooks else None
            if keep is not None:
                rows, h, proj, mask, masked_rows, rope = self._evict(keep, rows, h, proj, keys, masked_block, step)
                masked_width = None
        if self.cfg_scale:  # both halves computed the same rows; h keeps both halves for _block_logits
            rows = Rows(rows.pos[:b], rows.valid[:b], span=rows.span)
        return h, rows, views, computed

    def _unconditional(self, state: DecodeState) -> Tensor:
        """[B, T] tokens of the unconditional copy: the prompt positions hold the mask id (LLaDA's CFG)."""
        prompt = torch.arange(state.x.shape[1], device=state.x.device) < state.prompt_len[:, None]
        return state.x.masked_fill(prompt, self.cfg.mask_id)

    def _evict(self, keep: Tensor, rows: Rows, h: Tensor, proj: Projection, keys: "_Keys", masked_block: Tensor,
               step: StepView) -> tuple[Rows, Tensor, Projection, Tensor, Tensor, tuple[Tensor, Tensor]]:
        """Compact rows (and their hidden states, queries, keys) to the kept ones; rebuild the attention mask
        and the rows' RoPE tables.

        Visible keys afterwards: "hidden" -- the cache mode's reusable positions and the kept
        rows; "stale" (FOCUS) -- every position visible at the step's start, except this
        step's rows of the current block right of its right-most kept row. (Cached K/V the
        mode lets the step reuse stays visible; under FOCUS's own delayed cache none lies
        right of the step's last row.)
        """
        t = masked_block.shape[1]
        rows, index = rows.select(keep)  # index [B, L'] into the old rows
        h = gather_rows(h, index)
        proj = Projection(q=gather_rows(proj.q, index), k=gather_rows(proj.k, index), extra=proj.extra)
        if keys.stale:
            in_block = step.in_block(rows.pos) & rows.valid
            rightmost = torch.where(in_block, rows.pos, -1).amax(1, keepdim=True)  # [B, 1]
            pos = torch.arange(t, device=rows.pos.device)[None, :]
            # hide this step's rows right of the right-most kept one; cached K/V the mode reuses stays visible
            hidden = step.in_block(pos.expand(rows.pos.shape[0], t)) & (pos > rightmost) & ~keys.reusable
            visible = keys.at_start & ~hidden
        else:
            visible = keys.reusable | rows.as_mask(t)
        mask = self._attention_mask(rows, visible)
        rope = packed_rope(self.cfg, rows.pos, rows.packer)
        return rows, h, proj, mask, masked_block.gather(1, rows.pos) & rows.valid, rope

    def _attention_rule(self, rows: Rows, positions: int) -> Tensor:
        """[B, L, K] bool, True = the family's rule lets the row attend the key (`_attention_mask` adds visibility).

        K = the keys the rows' rule can reach (`Transformer.key_extent`: up to the last row's block
        end under block diffusion), when the rows' last position is known; else T+1 (the trash
        column, never visible). Attention reads only the first K keys of the cache.
        """
        width = positions + 1 if rows.last_pos is None else self.model.key_extent(max(rows.last_pos, 0), positions)
        return self.model.attention_rule(rows.pos, torch.arange(width, device=rows.pos.device)[None, :])

    def _attention_mask(self, rows: Rows, visible: Tensor, rule: Tensor | None = None) -> Tensor:
        """[B, L, K] bool, True = row may attend the key: the family's rule (`_attention_rule`, built here unless
        given) over visible positions [B, T]."""
        t = visible.shape[1]
        rule = self._attention_rule(rows, t) if rule is None else rule
        width = rule.shape[-1]
        # the trash column T is never visible: pad only when the keys reach it
        padded = (visible if width <= t else torch.nn.functional.pad(visible, (0, 1), value=False))[:, None, :width]
        mask = rule & padded
        if rows.span is None:  # padding rows attend position 0 so softmax stays finite (a span has none)
            mask[:, :, 0] |= ~rows.valid
        return mask

    def _trace_layers(self) -> tuple[tuple[int, int], int]:
        """(reference layer, eviction layer) and window whose importance a trace records: the policy's, else (0, 1), 3."""
        for p in self.eviction.policies:
            spec = p.trace_importance()
            if spec is not None:
                return spec
        return (0, 1), 3

    def _block_logits(self, state: DecodeState, h: Tensor, rows: Rows, block_pos: Tensor, masked: Tensor,
                      start: int | None = None) -> tuple[Tensor, Tensor]:
        """Logits [B, S, V] for the block positions and candidates [B, S] (True = may be committed now).

        A masked position is a candidate when the row that predicts it (itself, or
        its left neighbour under Dream's shift) survived every layer. start: the block start
        every sequence shares, when known on the host (`_Slots.common_start`).
        """
        shift, width = int(self.cfg.logit_shift), block_pos.shape[1]
        index: Tensor | slice
        if rows.span is not None and not self.eviction:
            # every masked position's row was computed (no eviction), so its row is its offset in the span
            candidates, first = masked, rows.span[0] + shift
            if start is not None and first <= start <= first + rows.pos.shape[1] - width:
                index = slice(start - first, start - first + width)  # one block start: the rows are a slice
            else:
                index = (block_pos - first).clamp(0, rows.pos.shape[1] - 1)  # [B, S]
        else:
            row_of = rows.rows_at((block_pos - shift).clamp(min=0), state.x.shape[1])  # [B, S], -1 = no row
            index, candidates = row_of.clamp(min=0), masked & (row_of >= 0)
        if self.cfg_scale:  # h [2B, L, C]: conditional half, then unconditional half
            cond, un = (self.model.logits(_take_rows(half, index)).float() for half in h.chunk(2))
            raw = un + (self.cfg_scale + 1.0) * (cond - un)
        else:
            raw = self.model.logits(_take_rows(h, index))
            raw = raw if raw.dtype == torch.float32 else raw.float()  # a new tensor either way: written below
        # NaN or Inf in a sequence's block logits makes their sum non-finite; _apply reads the sums in its one
        # host sync per step. float64: the integer counters read with them stay exact.
        state.logit_sums = raw.sum((1, 2), dtype=torch.float64)  # [B]
        raw[..., self.cfg.mask_id] = float("-inf")  # committing the mask token would never finish the block
        return raw, candidates

    def _apply(self, state: DecodeState, call: _Call, block_pos: Tensor, chosen: Tensor, tokens: Tensor,
               stuck: Tensor | None, computed: list[int | Tensor]) -> bool:
        """Commit the chosen tokens (`DecodeState.write`), move the blocks on, plan the next step's rows, then
        check the step and count it; returns True when every sequence is done.

        The step's one host sync reads the commits per sequence, so the host knows whether a block
        finished (its masked count reached 0) or a sequence ended (EOS). While a block's rows may still
        change (its first step, or a cache mode that is not steady: `CacheMode.steady`), the blocks move
        on (`DecodeState.advance`) and the next rows are planned before the sync, which reads their sizes
        too. Once they have settled, a step that moves no block (most steps) leaves the blocks as they
        are (`DecodeState.hold`) and repeats its rows (`_Plan.repeat`); one that does moves them after
        the sync, plans, and reads the new rows' sizes in a second sync. stuck [B] (or None): from
        `_decide`; computed: row counts per layer from `_run_layers`, read in the same sync (a failed check
        raises after the writes: the call's state is dropped with it, so nothing reaches the caller).
        """
        stats, plan = call.stats, call.plan
        b = chosen.shape[0]
        state.write(block_pos, chosen, tokens, stats.steps)
        eos = state.eos_reached(self.cfg.eos_ids) if call.stop_at_eos and self.cfg.eos_ids else None
        ahead = call.replan or not call.mode.steady  # the next rows may change though no block moves
        if ahead:
            state.advance(eos)
            planned, sizes = self._next_rows(state, call)
        on_device = [c for c in computed if isinstance(c, Tensor)]
        commits = chosen.sum(1)  # [B]
        # per sequence: logit sums, commits (and EOS, stuck flags); then the layers' row counts and the next
        # rows' sizes. The one sync; the float64 sums promote the rest, exactly.
        flags = [f for f in (eos, stuck) if f is not None]
        read = torch.cat([state.logit_sums, commits, *flags, *([torch.stack(on_device)] if on_device else []),
                          *(sizes if ahead else [])]).tolist()
        logit_sums, committed = read[:b], [int(c) for c in read[b:2 * b]]
        eos_at = read[2 * b:3 * b] if eos is not None else [0.0] * b
        at = (2 + len(flags)) * b
        stuck_at = [i for i, s in enumerate(read[at - b:at]) if s] if stuck is not None else []
        counts, next_sizes = iter(read[at:at + len(on_device)]), [int(v) for v in read[at + len(on_device):]]
        if stuck_at:
            raise RuntimeError(f"sequences {stuck_at} have masked positions but no row that predicts them survived "
                               "this step (an eviction policy must keep at least one masked row)")
        bad = [i for i, s in enumerate(logit_sums) if not math.isfinite(s)]
        if bad:
            raise FloatingPointError(
                f"step {stats.steps}: the model's logits are not finite (NaN or Inf) for sequences {bad} of the "
                "batch; nothing was committed. The weights or the activations overflowed: check the checkpoint "
                "(load_model checks it unless check_finite=False) and the dtype")
        n = sum(committed)
        for i, c in enumerate(computed):
            rows = int(next(counts)) if isinstance(c, Tensor) else c
            stats.row_layers += rows
            stats.row_layers_per_layer[i] += rows
        stats.tokens_committed += n
        stats.committed_per_step.append(n)
        stats.sequence_steps += call.n_active
        stats.steps += 1
        for i, c in enumerate(committed):
            if c:
                call.committed_per_sequence[i] += c
                call.steps_per_sequence[i] = stats.steps
        left = [m - c for m, c in zip(plan.masked_left, committed)]
        # a block finished (nothing masked is left in it) or a sequence generated its EOS
        call.replan = moved = any(a and (m == 0 or e) for a, m, e in zip(plan.active, left, eos_at))
        if ahead:
            call.plan = _Plan.read(*planned, next_sizes, plan)
            state.settle(blocks_moved=moved)
        elif moved:
            state.advance(eos)
            planned, sizes = self._next_rows(state, call)
            call.plan = _Plan.read(*planned, torch.cat(sizes).tolist(), plan)  # the step's second sync
        else:
            state.hold()
            call.plan = plan.repeat(state.masked, commits, left)
        call.n_active = sum(call.plan.active)
        return not call.n_active

    # -- setup -------------------------------------------------------------------

    @staticmethod
    def _unmasking_policy(unmasking: Any) -> UnmaskingPolicy:
        """The policy object: `unmasking` itself, or a registered name of focuslib.policies.unmasking.POLICIES built with
        its defaults ("threshold" -> Threshold())."""
        names = ", ".join(POLICIES)
        if isinstance(unmasking, str):
            if unmasking not in POLICIES:
                raise ValueError(f"unknown unmasking policy {unmasking!r}; registered names: {names} "
                                 "(or pass a policy object, e.g. focuslib.policies.unmasking.Threshold(0.9))")
            return POLICIES[unmasking]()
        if isinstance(unmasking, type) and issubclass(unmasking, UnmaskingPolicy):
            raise TypeError(f"unmasking: pass an instance, {unmasking.__name__}(), not the class")
        if not isinstance(unmasking, UnmaskingPolicy):
            classes = ", ".join(c.__name__ for c in dict.fromkeys(POLICIES.values()))
            raise TypeError(f"unmasking must be an unmasking policy object (focuslib.policies.unmasking: {classes}) or a "
                            f"registered name ({names}); got {unmasking!r} ({type(unmasking).__name__})")
        return unmasking

    def _encode(self, prompts: Sequence[Sequence[int] | str]) -> list[list[int]]:
        return encode_prompts(prompts, self.tokenizer, allow_unk=self.allow_unk)

    def _check_request(self, ids: list[list[int]], gen_length: int, steps: int | None) -> None:
        problems = request_problems(self.cfg, gen_length, steps, block_size=self.block_size,
                                    unmasking=self.unmasking, prompts=ids)
        if problems:
            raise problems[0]

    def _steps_per_block(self, gen_length: int, steps: int | None) -> int | None:
        return None if steps is None else steps // n_blocks(gen_length, self.block_size)

    def _new_cache(self, state: DecodeState) -> KVCache:
        cfg = self.cfg
        w = self.model.embed.weight
        batch = state.x.shape[0] * (2 if self.cfg_scale else 1)  # guidance: the unconditional copy's K/V too
        return KVCache(cfg.n_layers, batch, state.x.shape[1], cfg.n_kv_heads, cfg.head_dim, w.dtype, w.device)

    def _output(self, state: DecodeState, ids: list[list[int]], gen_length: int, call: _Call) -> GenerationOutput:
        lengths = {len(p) for p in ids}
        if len(lengths) == 1:  # equal prompts: the generation region is a slice
            tokens = state.x[:, lengths.pop():]  # T = prompt + gen_length
        else:
            tokens = state.x.gather(1, state.prompt_len[:, None] + torch.arange(gen_length, device=state.x.device))
        eos = set(self.cfg.eos_ids)
        sequences = []
        for row in tokens.tolist():
            cut = next((j for j, tok in enumerate(row) if tok in eos), len(row))
            sequences.append(row[:cut])
        text = None
        if self.tokenizer is not None:
            text = [self.tokenizer.decode(s, skip_special_tokens=True) for s in sequences]
        trace = call.recorder.frame(state.committed_step) if call.recorder is not None else None
        return GenerationOutput(sequences=sequences, tokens=tokens, stats=call.stats, text=text, trace=trace,
                                steps_per_sequence=call.steps_per_sequence,
                                committed_per_sequence=call.committed_per_sequence)


def _take_rows(h: Tensor, index: Tensor | slice) -> Tensor:
    """Rows [B, S, C] of h [B, L, C] at row indices index [B, S], or the slice of rows they all share."""
    if isinstance(index, slice):
        return h[:, index]
    return h.gather(1, index[:, :, None].expand(-1, -1, h.shape[-1]))


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector for the decode loop, and restore it after.

    The loop makes no reference cycles, but its per-step objects (and torch's tensors, which the
    collector counts) trigger collections, and a full one walks every object the process holds
    (150k+ with torch and transformers loaded): on tiny-sdar-b32 at batch 1 about 4% of the
    decoding time, mostly in stalls of ~100 ms (docs/design.md, "The collector and the decode loop").
    Process-wide, as `gc.disable` is: nested or concurrent calls leave it to the outermost.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# -- sampling helpers ---------------------------------------------------------------


def special_ids(cfg: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(end-of-text ids, end-of-turn ids) among cfg.eos_ids: the family's chat end-of-turn ids
    (LLaDA's <|eot_id|> 126348, Dream's <|im_end|>) are end-of-turn, the rest end-of-text."""
    try:
        turn_end = set(get_family(cfg.family).turn_end_ids)
    except ValueError:
        turn_end = set()
    eos = tuple(int(i) for i in cfg.eos_ids)
    return tuple(i for i in eos if i not in turn_end), tuple(i for i in eos if i in turn_end)


def sequence_generators(seed: int | None, sequence_ids: Sequence[int] | None, batch: int,
                        device: torch.device) -> tuple[torch.Generator, ...] | None:
    """One generator per sequence, seeded by a hash of (seed, its id) (ids default to 0..batch-1); None without seed.

    blake2b of the pair gives well-mixed, independent seeds for neighbouring pairs ((0, 1) and (1, 0) differ).
    """
    if seed is None:
        if sequence_ids is not None:
            raise ValueError("sequence_ids keys the per-sequence generators of seed=; pass seed= as well")
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {seed!r} ({type(seed).__name__})")
    ids = range(batch) if sequence_ids is None else list(sequence_ids)
    if len(ids) != batch or any(isinstance(i, bool) or not isinstance(i, numbers.Integral) or i < 0 for i in ids):
        raise ValueError(f"sequence_ids must hold one int >= 0 per prompt ({batch}), got {sequence_ids!r}")
    out = []
    for i in ids:
        digest = hashlib.blake2b(f"{int(seed)},{int(i)}".encode(), digest_size=8).digest()
        out.append(torch.Generator(device=device).manual_seed(int.from_bytes(digest, "little") >> 1))
    return tuple(out)
