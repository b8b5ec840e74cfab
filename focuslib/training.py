"""Masked-diffusion SFT for focuslib's bundled small models (LLaDA layout and SDAR block diffusion).

One example per row: ``prompt + answer + <eos>``, then ``<eos>`` filler up to
exactly ``gen_length`` answer-region tokens (LLaDA's SFT recipe), then ``<pad>``
up to the batch width. The layout is the one `DiffusionDecoder` decodes: prompt at
positions 0..P-1, the generation region at P..P+gen_length-1, nothing visible
beyond. ``<pad>`` keys are invisible; the prompt is never masked; every token of
the answer region (answer, first <eos>, filler) carries loss when masked.

Objective (LLaDA SFT): per example draw t in (eps, 1] -- stratified over the
batch, t_i = eps + (1 - eps)(i + u)/B -- mask each answer-region token with
probability t, and minimise cross-entropy on the masked tokens weighted by 1/t,
divided by the example's answer-region length, averaged over the batch.

Families:

* ``llada`` -- full bidirectional attention over the noisy sequence.
* ``sdar``  -- block diffusion: the input is [clean ; noisy] (2T rows, the noisy
  copy at the same positions); `block_diffusion_mask` lets a noisy token of block
  k see the clean blocks < k and the noisy tokens of its own block, and clean
  tokens see clean tokens block-causally. Loss is read on the noisy copy only.

Both use the answer-offset embedding (`ModelConfig.answer_offset_embeddings`,
docs/design.md, "Model families") with answer_start = prompt length, as the decoder passes it.

Shapes: B batch, T positions, L query rows, K key rows, V vocab.
"""
from __future__ import annotations

import bisect
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from focuslib.model import ModelConfig, Transformer, rope_tables

# --------------------------------------------------------------------------- tokenizer

PAD, EOS, MASK, UNK = "<pad>", "<eos>", "<mask>", "<unk>"
PAD_ID, EOS_ID, MASK_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = (PAD, EOS, MASK, UNK)


def build_tokenizer(charset: str | None = None) -> Any:
    """Character-level `tokenizers.Tokenizer`: ids 0-3 = <pad> <eos> <mask> <unk>, then one id per character.

    Every character is its own token (regex split on the empty string), decoding
    concatenates them (Fuse). `charset` defaults to `focuslib.tasks.CHARSET`, whose
    order is fixed, so token ids are stable across checkpoints.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if charset is None:
        from focuslib.tasks import CHARSET as charset  # noqa: N811
    if len(set(charset)) != len(charset):
        raise ValueError("charset has repeated characters")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({c: len(SPECIAL_TOKENS) + i for i, c in enumerate(charset)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def padded_vocab_size(tokenizer: Any, multiple: int = 16) -> int:
    """Embedding rows: the tokenizer's vocab rounded up to `multiple` (unused ids are never targets)."""
    n = tokenizer.get_vocab_size()
    return -(-n // multiple) * multiple


# --------------------------------------------------------------------------- model spec


@dataclass
class ModelSpec:
    """Architecture of a bundled model; `build` turns it into a ModelConfig for a tokenizer."""

    family: str = "llada"  # "llada" (full attention) | "sdar" (block diffusion)
    dim: int = 192
    n_layers: int = 10
    n_heads: int = 6
    n_kv_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 512
    block_size: int = 8  # sdar only
    answer_offset_embeddings: int = 16
    max_positions: int = 128
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def build(self, vocab_size: int) -> ModelConfig:
        if self.family not in ("llada", "sdar"):
            raise ValueError(f"training supports families 'llada' and 'sdar', got {self.family!r}")
        sdar = self.family == "sdar"
        return ModelConfig(
            family=self.family, vocab_size=vocab_size, dim=self.dim, n_layers=self.n_layers,
            n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim,
            intermediate_size=self.intermediate_size, mask_id=MASK_ID, eos_ids=(EOS_ID,), pad_id=PAD_ID,
            max_positions=self.max_positions, rope_theta=self.rope_theta, norm_eps=self.norm_eps,
            qk_norm=sdar, attention="block_causal" if sdar else "full", block_size=self.block_size if sdar else 0,
            answer_offset_embeddings=self.answer_offset_embeddings,
        )


# --------------------------------------------------------------------------- batches


@dataclass
class Batch:
    """One example per row.

    ids [B, T] clean tokens; answer [B, T] bool (True = answer region: answer, <eos>,
    filler; these may be masked and carry loss); valid [B, T] bool (True = prompt or
    answer region, False = <pad>); prompt_len [B] (= answer start position).
    """

    ids: Tensor
    answer: Tensor
    valid: Tensor
    prompt_len: Tensor


def encode_pairs(tokenizer: Any, prompts: Sequence[str], answers: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, answer ids) per example; raw `tokenizers.Tokenizer` or transformers tokenizer."""
    def ids(text: str) -> list[int]:
        enc = tokenizer.encode(text, add_special_tokens=False)
        return list(enc.ids if hasattr(enc, "ids") else enc)

    return [(ids(p), ids(a)) for p, a in zip(prompts, answers)]


def make_batch(pairs: Sequence[tuple[list[int], list[int]]], gen_length: int, seq_len: int | None = None) -> Batch:
    """Rows ``prompt + answer + <eos> * (gen_length - len(answer))``, right-padded with <pad> to seq_len.

    seq_len None = the longest row. Raises if an answer does not fit gen_length - 1
    (one <eos> is always kept) or a row does not fit seq_len.
    """
    width = max(len(p) for p, _ in pairs) + gen_length
    seq_len = width if seq_len is None else seq_len
    if width > seq_len:
        raise ValueError(f"rows need {width} positions, seq_len is {seq_len}")
    b = len(pairs)
    ids = torch.full((b, seq_len), PAD_ID, dtype=torch.long)
    answer = torch.zeros(b, seq_len, dtype=torch.bool)
    prompt_len = torch.tensor([len(p) for p, _ in pairs], dtype=torch.long)
    for i, (p, a) in enumerate(pairs):
        if len(a) >= gen_length:
            raise ValueError(f"answer of {len(a)} tokens does not fit gen_length={gen_length} with an <eos>")
        region = a + [EOS_ID] * (gen_length - len(a))
        ids[i, : len(p) + gen_length] = torch.tensor(p + region)
        answer[i, len(p) : len(p) + gen_length] = True
    pos = torch.arange(seq_len)
    valid = pos[None, :] < (prompt_len + gen_length)[:, None]
    return Batch(ids=ids, answer=answer, valid=valid, prompt_len=prompt_len)


# --------------------------------------------------------------------------- noise


def sample_t(batch_size: int, eps: float = 1e-3, stratified: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Mask rates t [B] in (eps, 1]; stratified = one draw per 1/B stratum, t_i = eps + (1-eps)(i+u)/B."""
    if stratified:
        u = torch.rand(1, generator=generator)
        base = (torch.arange(batch_size) + u) / batch_size
    else:
        base = torch.rand(batch_size, generator=generator)
    return eps + (1 - eps) * base


def mask_answer(ids: Tensor, answer: Tensor, t: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Noisy ids [B, T] and masked [B, T] bool (True = replaced by <mask>): each answer token with probability t_b.

    Tokens outside `answer` (prompt, padding) are never masked.
    """
    u = torch.rand(ids.shape, generator=generator)
    masked = answer & (u < t[:, None])
    return torch.where(masked, MASK_ID, ids), masked


def diffusion_loss(logits: Tensor, targets: Tensor, masked: Tensor, t: Tensor, answer: Tensor | None = None) -> Tensor:
    """Masked-diffusion SFT loss (LLaDA): mean over b of sum_j [masked] CE_bj / t_b, divided by n_answer_b.

    logits [B, T, V]; targets [B, T]; masked [B, T] bool (True = input was <mask>, scored);
    t [B] mask rates; answer [B, T] bool, the answer region whose size normalises each row
    (None: the row's masked count is not used; every row is divided by T). Positions outside
    `masked` -- prompt, padding -- get exactly zero weight, whatever their logits.
    """
    scored = masked if answer is None else masked & answer
    ce = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")  # [B, T]
    ce = torch.where(scored, ce, torch.zeros((), dtype=ce.dtype))
    n = answer.sum(1).clamp(min=1) if answer is not None else torch.full_like(t, targets.shape[1])
    return ((ce.sum(1) / t) / n).mean()


# --------------------------------------------------------------------------- attention masks


def block_diffusion_mask(seq_len: int, block_size: int) -> Tensor:
    """[2T, 2T] bool, True = query row may attend key row, for the input [clean (T) ; noisy (T)].

    clean i -> clean j  iff block(j) <= block(i)   (block-causal, the decoder's rule)
    noisy i -> clean j  iff block(j) <  block(i)   (finished blocks, as the KV cache holds them)
    noisy i -> noisy j  iff block(j) == block(i)   (its own partly masked block)
    clean i -> noisy j  never.
    Blocks are on the absolute position grid anchored at 0.
    """
    blk = torch.arange(seq_len) // block_size
    qi, kj = blk[:, None], blk[None, :]
    out = torch.zeros(2 * seq_len, 2 * seq_len, dtype=torch.bool)
    out[:seq_len, :seq_len] = kj <= qi
    out[seq_len:, :seq_len] = kj < qi
    out[seq_len:, seq_len:] = kj == qi
    return out


def full_attention_mask(valid: Tensor) -> Tensor:
    """[B, T, T] bool: every query sees every valid key; padding rows see themselves only."""
    t = valid.shape[1]
    return valid[:, None, :] | torch.eye(t, dtype=torch.bool)


# --------------------------------------------------------------------------- forward


def attend_math(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """`focuslib.model.attend` with an additive mask bias [B, 1, L, K] (0 / -inf), as plain matmuls.

    Same maths as the model's SDPA call; on CPU its backward is about twice as fast
    for short rows (the flash-attention CPU backward dominates training otherwise).
    """
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if group > 1:
        kh, vh = kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1)
    scores = (qh @ kh.transpose(-1, -2)) * (q.shape[-1] ** -0.5) + bias
    ctx = scores.float().softmax(-1).to(vh.dtype) @ vh
    return ctx.transpose(1, 2)


def forward_with_mask(model: Transformer, ids: Tensor, pos: Tensor, mask: Tensor, answer_start: Tensor | None) -> Tensor:
    """Logits [B, L, V] of rows ids [B, L] at positions pos [B, L] under a custom mask [B|1, L, L] (True = may attend).

    Runs the model's own layer body (`Transformer.run_layers`) with our own mask;
    answer_start [B] feeds the answer-offset embedding.
    """
    bias = torch.zeros(mask.shape, dtype=torch.float32).masked_fill(~mask, float("-inf"))[:, None]
    h = model.embed_rows(ids, pos, answer_start)
    h = model.run_layers(h, rope_tables(model.cfg, pos), lambda q, k, v: attend_math(q, k, v, bias.to(q.dtype)))
    return model.logits(h)


def diffusion_logits(model: Transformer, batch: Batch, noisy: Tensor) -> Tensor:
    """Logits [B, T, V] predicting the clean tokens at every position of the noisy sequence."""
    cfg = model.cfg
    b, t = noisy.shape
    pos = torch.arange(t).expand(b, t)
    if not cfg.block_diffusion:
        return forward_with_mask(model, noisy, pos, full_attention_mask(batch.valid), batch.prompt_len)
    ids2 = torch.cat([batch.ids, noisy], 1)
    pos2 = torch.cat([pos, pos], 1)
    valid2 = torch.cat([batch.valid, batch.valid], 1)
    mask = block_diffusion_mask(t, cfg.block_size)[None] & valid2[:, None, :]
    mask = mask | torch.eye(2 * t, dtype=torch.bool)
    return forward_with_mask(model, ids2, pos2, mask, batch.prompt_len)[:, t:]


def batch_loss(model: Transformer, batch: Batch, eps: float = 1e-3, stratified: bool = True,
               generator: torch.Generator | None = None) -> Tensor:
    """Draw t and masks for `batch`, run the model, return `diffusion_loss`."""
    t = sample_t(batch.ids.shape[0], eps, stratified, generator)
    noisy, masked = mask_answer(batch.ids, batch.answer, t, generator)
    logits = diffusion_logits(model, batch, noisy)
    return diffusion_loss(logits, batch.ids, masked, t, batch.answer)


# --------------------------------------------------------------------------- quick validation


@torch.no_grad()
def one_shot_accuracy(model: Transformer, pairs: Sequence[tuple[list[int], list[int]]], gen_length: int,
                      batch_size: int = 256) -> float:
    """Exact match of a greedy decode that fills each block with one forward pass (argmax), NOT the decoder.

    llada: the whole answer region in one pass; sdar: one pass per block on the
    family rule. A cheap learning signal during training; report it as one-shot.
    """
    hits = 0
    for s in range(0, len(pairs), batch_size):
        chunk = pairs[s : s + batch_size]
        batch = make_batch(chunk, gen_length)
        x = torch.where(batch.answer, MASK_ID, batch.ids)
        blocks = _answer_blocks(model.cfg, batch)
        for blk in blocks:
            logits = model(x, answer_start=batch.prompt_len, key_valid=batch.valid)
            fill = blk & (x == MASK_ID)
            x = torch.where(fill, logits.argmax(-1), x)
        for i, (p, a) in enumerate(chunk):
            region = x[i, len(p) : len(p) + gen_length].tolist()
            cut = next((j for j, tok in enumerate(region) if tok == EOS_ID), len(region))
            hits += region[:cut] == a
    return hits / max(len(pairs), 1)


def _answer_blocks(cfg: ModelConfig, batch: Batch) -> list[Tensor]:
    """[B, T] bool masks of the answer positions decoded together: one for llada, one per block for sdar."""
    if not cfg.block_diffusion:
        return [batch.answer]
    blk = torch.arange(batch.ids.shape[1]) // cfg.block_size
    return [batch.answer & (blk == k)[None] for k in range(int(blk.max()) + 1) if (batch.answer & (blk == k)).any()]


# --------------------------------------------------------------------------- training run


@dataclass
class TrainConfig:
    """One training run. Hydra's `experiments/train_conf/train.yaml` mirrors these names (schema `train_schema`)."""

    model: ModelSpec = field(default_factory=ModelSpec)
    task: str = "mix"
    task_options: dict[str, Any] = field(default_factory=dict)  # load_task kwargs, e.g. {weights: {...}}
    val_task_options: dict[str, Any] | None = None  # validation problems' kwargs (None: task_options)
    n_train: int = 50000  # problems drawn once from the train split (seed="train")
    n_val: int = 200  # validation-split problems for periodic accuracy
    gen_length: int = 16  # answer region per row (answer + <eos> filler); decode with the same
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of lr
    warmup_steps: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    eps: float = 1e-3  # smallest mask rate
    stratified_t: bool = True
    init_std: float = 0.02
    time_budget_min: float = 45.0  # wall-clock minutes (validation and checkpoints included); lr follows it
    max_steps: int = 0  # > 0: also stop after this many steps (tests, smoke runs)
    threads: int = 1  # torch.set_num_threads
    bf16: bool = True  # bf16 autocast on CPU
    compile: bool = False  # torch.compile the loss; measured: no gain on CPU, ~100 s warm-up
    seed: int = 0
    run_name: str = "run"  # Hydra puts the run in outputs/train/<run_name>
    run_dir: str = "outputs/train/run"  # checkpoints, logs, snapshots (Hydra sets its output dir)
    resume: bool = False  # continue from run_dir/last.pt, else from resume_snapshot (model, optimizer, clock, RNG)
    # Start from another run's weights (its last.pt or resume snapshot, or an exported checkpoint directory):
    # a fresh optimizer, clock and lr schedule. The source may be shallower: its layers come first, the rest
    # start as identities (`grow_into`).
    init_from: str | None = None
    ckpt_every_min: float = 5.0  # resumable checkpoint run_dir/last.pt
    # A compact resumable snapshot (fp32 weights, bf16 second moments, no first moments: about 6 bytes
    # per parameter) written with every checkpoint, at one path that is overwritten, small enough to
    # commit so that a run can continue in a later session on a fresh machine (None: off).
    resume_snapshot: str | None = None
    snapshot_every_min: float = 5.0  # loadable checkpoint run_dir/snapshots/<minutes>min (0: off)
    val_every_min: float = 5.0
    log_every: int = 20  # steps between metric lines in run_dir/metrics.jsonl
    # Curriculum over answer length: batches draw only problems whose answer has at most
    # L tokens, L growing linearly from curriculum_start_len to the longest answer over
    # the first curriculum_frac of the run (0 = off: every problem from the start).
    curriculum_start_len: int = 0
    curriculum_frac: float = 0.3
    # Validation with the real decoder (Threshold 0.9, exact block cache) on this many
    # validation problems: exact match and correct-prefix rate per task (0 = off).
    val_decode: int = 0
    export_dir: str | None = None  # save_checkpoint of the final model here (e.g. focuslib/checkpoints/tiny-sdar)
    progress: bool = True  # tqdm bar


@dataclass
class RunState:
    """What a resumable checkpoint holds besides model and optimizer."""

    step: int = 0
    elapsed_s: float = 0.0
    next_ckpt_s: float = 0.0
    next_snapshot_s: float = 0.0
    next_val_s: float = 0.0


class Trainer:
    """Owns model, optimizer, data and clock of one run; `run()` trains until the budget is spent."""

    def __init__(self, cfg: TrainConfig) -> None:
        torch.set_num_threads(cfg.threads)
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer = build_tokenizer()
        torch.manual_seed(cfg.seed)
        self.model = Transformer(cfg.model.build(padded_vocab_size(self.tokenizer))).init_weights(cfg.init_std, cfg.seed)
        self.model.train()
        self.optimizer = _adamw(self.model, cfg)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.state = RunState()
        self.train_pairs, self.val_pairs, self.val_task = self._data()
        self.val_tasks = list(self.val_task.dataset["task"])
        self.by_length = sorted(range(len(self.train_pairs)), key=lambda i: len(self.train_pairs[i][1]))
        self.sorted_lengths = [len(self.train_pairs[i][1]) for i in self.by_length]
        self.seq_len = max(len(p) for p, _ in self.train_pairs + self.val_pairs) + cfg.gen_length
        self.loss_fn = torch.compile(batch_loss) if cfg.compile else batch_loss
        last = self.run_dir / "last.pt"
        resume_from = last if last.is_file() or not cfg.resume_snapshot else Path(cfg.resume_snapshot)
        if cfg.resume and (resume_from.is_file() or not cfg.init_from):  # resume=true init_from=X: X only at first
            self._load(resume_from)
        elif cfg.init_from:
            grow_into(self.model, initial_weights(cfg.init_from))
            self._log({"event": "init_from", "path": cfg.init_from})

    def _data(self) -> tuple[list, list, Any]:
        from focuslib.tasks import load_task

        opts = dict(self.cfg.task_options)
        train = load_task(self.cfg.task, self.cfg.n_train, seed="train", **opts)
        val_opts = opts if self.cfg.val_task_options is None else dict(self.cfg.val_task_options)
        val = load_task(self.cfg.task, self.cfg.n_val, seed="validation", **val_opts)
        tr = encode_pairs(self.tokenizer, train.dataset["prompt"], train.dataset["answer"])
        va = encode_pairs(self.tokenizer, val.dataset["prompt"], val.dataset["answer"])
        return tr, va, val

    # -- loop --------------------------------------------------------------------

    def run(self) -> Transformer:
        cfg, st = self.cfg, self.state
        self._log({"event": "start", "params": self.model.num_parameters, "seq_len": self.seq_len, "config": _jsonable(cfg)})
        bar = _progress(cfg, st)
        clock = time.perf_counter() - st.elapsed_s
        window: list[float] = []
        while not self._finished():
            t0 = time.perf_counter()
            loss, lr = self._step()
            st.step += 1
            st.elapsed_s = time.perf_counter() - clock
            window.append(loss)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", s_per_step=f"{time.perf_counter() - t0:.2f}", refresh=False)
            if st.step % cfg.log_every == 0:
                self._log({"step": st.step, "elapsed_min": st.elapsed_s / 60, "loss": sum(window) / len(window), "lr": lr})
                window = []
            self._periodic()
        if bar is not None:
            bar.close()
        self._validate()
        self._save(self.run_dir / "last.pt")
        if cfg.export_dir:
            self.export(cfg.export_dir)
        return self.model

    def _finished(self) -> bool:
        cfg, st = self.cfg, self.state
        return st.elapsed_s >= cfg.time_budget_min * 60 or (cfg.max_steps > 0 and st.step >= cfg.max_steps)

    def _step(self) -> tuple[float, float]:
        cfg = self.cfg
        lr = self._lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        eligible = bisect.bisect_right(self.sorted_lengths, self.curriculum_length())
        idx = torch.randint(max(eligible, 1), (cfg.batch_size,), generator=self.generator).tolist()
        batch = make_batch([self.train_pairs[self.by_length[i]] for i in idx], cfg.gen_length, self.seq_len)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            loss = self.loss_fn(self.model, batch, cfg.eps, cfg.stratified_t, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        return float(loss.detach()), lr

    def progress(self) -> float:
        """Fraction of the run done: elapsed time over the budget (or steps over max_steps, if larger)."""
        cfg, st = self.cfg, self.state
        frac = st.elapsed_s / max(cfg.time_budget_min * 60, 1e-9)
        return max(frac, st.step / cfg.max_steps) if cfg.max_steps > 0 else frac

    def curriculum_length(self) -> int:
        """Longest answer (tokens) a batch may draw now; the longest in the data when the curriculum is off."""
        cfg, longest = self.cfg, self.sorted_lengths[-1]
        if cfg.curriculum_start_len <= 0 or cfg.curriculum_frac <= 0:
            return longest
        grow = min(1.0, self.progress() / cfg.curriculum_frac)
        return int(cfg.curriculum_start_len + grow * max(longest - cfg.curriculum_start_len, 0))

    def _lr(self) -> float:
        """Linear warmup over warmup_steps, then cosine from lr to min_lr_ratio*lr over the time budget."""
        cfg, st = self.cfg, self.state
        warm = min(1.0, (st.step + 1) / max(cfg.warmup_steps, 1))
        frac = min(1.0, self.progress())
        cosine = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        return cfg.lr * warm * cosine

    def _periodic(self) -> None:
        cfg, st = self.cfg, self.state
        if st.elapsed_s >= st.next_val_s:
            self._validate()
            st.next_val_s = st.elapsed_s + cfg.val_every_min * 60
        if cfg.snapshot_every_min > 0 and st.elapsed_s >= st.next_snapshot_s:
            if st.step > 1:
                self.export(self.run_dir / "snapshots" / f"step{st.step:06d}_{st.elapsed_s / 60:05.1f}min")
            st.next_snapshot_s = st.elapsed_s + cfg.snapshot_every_min * 60
        if st.elapsed_s >= st.next_ckpt_s:
            if st.step > 1:
                self._save(self.run_dir / "last.pt")
            st.next_ckpt_s = st.elapsed_s + cfg.ckpt_every_min * 60

    # -- validation, checkpoints, logs ------------------------------------------

    def _validate(self) -> dict[str, float]:
        self.model.eval()
        out: dict[str, float] = {}
        by_task: dict[str, list] = {}
        for pair, task in zip(self.val_pairs, self.val_tasks):
            by_task.setdefault(task, []).append(pair)
        for task, pairs in sorted(by_task.items()):
            out[f"one_shot_accuracy/{task}"] = one_shot_accuracy(self.model, pairs, self.cfg.gen_length)
        out["one_shot_accuracy"] = sum(out.values()) / max(len(out), 1)
        if self.cfg.val_decode > 0:
            out.update(self._validate_decoding())
        out["curriculum_length"] = float(self.curriculum_length())
        self.model.train()
        self._log({"event": "val", "step": self.state.step, "elapsed_min": self.state.elapsed_s / 60, **out})
        return out

    def _validate_decoding(self) -> dict[str, float]:
        """Exact match and correct-prefix rate per task of real Threshold(0.9) decoding (exact cache)."""
        from focuslib.decoder import DiffusionDecoder
        from focuslib.evaluate import evaluate
        from focuslib.tasks import Task, prefix_match
        from focuslib.policies.unmasking import Threshold

        n = min(self.cfg.val_decode, len(self.val_task))
        task = Task(self.val_task.name, self.val_task.dataset.select(range(n)), self.val_task.scorer)
        cache = "block" if self.model.cfg.block_diffusion else "none"
        decoder = DiffusionDecoder(self.model, Threshold(0.9), cache=cache, tokenizer=self.tokenizer)
        with torch.autocast("cpu", enabled=False):
            result = evaluate(decoder, task, gen_length=self.cfg.gen_length, batch_size=64, progress=False)
        out = {"decode_accuracy": result.accuracy, "decode_tokens_per_step": result.tokens_per_step}
        out.update({f"decode_accuracy/{k}": v for k, v in result.per_task.items()})
        prefixes: dict[str, list[float]] = {}
        for rec in result.records:
            prefixes.setdefault(rec["task"], []).append(prefix_match(rec["prediction"], rec["answer"]))
        out.update({f"decode_prefix/{k}": sum(v) / len(v) for k, v in prefixes.items()})
        return out

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Loadable checkpoint (family's real format, bf16, tokenizer) via `focuslib.loading.save_checkpoint`."""
        from focuslib.loading import save_checkpoint

        extra = {"focuslib_training": {"gen_length": self.cfg.gen_length, "step": self.state.step,
                                       "elapsed_min": round(self.state.elapsed_s / 60, 2)}}
        return save_checkpoint(self.model, path, tokenizer=self.tokenizer, dtype=torch.bfloat16, extra_config=extra)

    def _save(self, path: Path) -> None:
        blob = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "state": asdict(self.state), "generator": self.generator.get_state(),
                "torch_rng": torch.get_rng_state(), "config": _jsonable(self.cfg)}
        _atomic_save(blob, path)
        if self.cfg.resume_snapshot:
            _atomic_save(_compact(blob), Path(self.cfg.resume_snapshot))

    def _load(self, path: Path) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"resume=true but there is no checkpoint {path}")
        blob = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(blob["model"])
        self.optimizer.load_state_dict(_expand(blob["optimizer"]))
        self.state = RunState(**blob["state"])
        self.generator.set_state(blob["generator"])
        torch.set_rng_state(blob["torch_rng"])
        self._log({"event": "resume", "step": self.state.step, "elapsed_min": self.state.elapsed_s / 60})

    def _log(self, record: dict[str, Any]) -> None:
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if record.get("event") == "val":
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in record.items()}), flush=True)


def _atomic_save(blob: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _compact(blob: dict[str, Any]) -> dict[str, Any]:
    """The resumable checkpoint at about 6 bytes per parameter: AdamW's second moments in bf16, first moments
    dropped (they rebuild within ~10 steps at beta1 0.9; `_expand` restores them as zeros)."""
    opt = blob["optimizer"]
    state = {k: {"step": v["step"], "exp_avg_sq": v["exp_avg_sq"].to(torch.bfloat16)} for k, v in opt["state"].items()}
    return {**blob, "optimizer": {"state": state, "param_groups": opt["param_groups"]}, "compact": True}


def _expand(opt: dict[str, Any]) -> dict[str, Any]:
    """Optimizer state in AdamW's own layout, from a full or a compact (`_compact`) checkpoint."""
    state = {}
    for k, v in opt["state"].items():
        sq = v["exp_avg_sq"].float()
        state[k] = {**v, "exp_avg_sq": sq, "exp_avg": v.get("exp_avg", torch.zeros_like(sq))}
    return {"state": state, "param_groups": opt["param_groups"]}


def initial_weights(path: str | os.PathLike) -> dict[str, Tensor]:
    """The weights `init_from` names: a checkpoint directory (as `export` writes it) or a run's .pt file."""
    if Path(path).is_dir():
        from focuslib.loading import load_model

        return load_model(path)[0].state_dict()
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def grow_into(model: Transformer, source: dict[str, torch.Tensor]) -> Transformer:
    """Load a state dict of the same width and at most the same depth into `model`, in place.

    The source's layers become layers 0..k-1; each later layer keeps its random init except
    its two output projections (attention `wo`, MLP `w_down`), which are zeroed, so the layer
    adds nothing to the residual stream and the grown model computes exactly what the source
    did (function-preserving depth growth, as in Net2Net). Why: a circuit learned cheaply in
    a shallow model (the walk lookup) carries over to a model deep enough for eviction to save.
    """
    own = model.state_dict()
    depth = 1 + max((int(k.split(".")[1]) for k in source if k.startswith("layers.")), default=-1)
    if depth > model.cfg.n_layers:
        raise ValueError(f"source has {depth} layers, more than the model's {model.cfg.n_layers}")
    missing = [k for k in own if not k.startswith("layers.") or int(k.split(".")[1]) < depth]
    for k in missing:
        if k not in source or source[k].shape != own[k].shape:
            got = "missing" if k not in source else tuple(source[k].shape)
            raise ValueError(f"source weight {k}: {got}, the model needs {tuple(own[k].shape)}")
    with torch.no_grad():
        for k in missing:
            own[k].copy_(source[k])
        for layer in model.layers[depth:]:
            layer.attn.wo.weight.zero_()
            layer.mlp.w_down.weight.zero_()
    return model


def _adamw(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not norms, not embeddings of ids/offsets)."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas))


def _progress(cfg: TrainConfig, st: RunState) -> Any:
    if not cfg.progress:
        return None
    from tqdm import tqdm

    total = cfg.max_steps if cfg.max_steps > 0 else None
    return tqdm(total=total, initial=st.step, desc=f"train {cfg.model.family}", mininterval=10.0, unit="step")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj if isinstance(obj, (int, float, str, bool, type(None))) else str(obj)


def train(cfg: TrainConfig) -> Transformer:
    """Train (or resume) one run described by `cfg`; returns the final model (exported if cfg.export_dir)."""
    return Trainer(cfg).run()


__all__ = [
    "Batch", "EOS_ID", "MASK_ID", "ModelSpec", "PAD_ID", "SPECIAL_TOKENS", "TrainConfig", "Trainer",
    "attend_math", "batch_loss", "block_diffusion_mask", "build_tokenizer", "diffusion_logits", "diffusion_loss",
    "encode_pairs", "forward_with_mask", "full_attention_mask", "grow_into", "make_batch", "mask_answer", "one_shot_accuracy",
    "sample_t", "train",
]
