"""Evaluation harness: decode every problem of a task in ragged batches and score it.

    >>> from focuslib import DiffusionDecoder, evaluate, load_model
    >>> from focuslib.tasks import load_task
    >>> from focuslib.policies.unmasking import Threshold
    >>> model, tok = load_model("tiny-sdar")
    >>> result = evaluate(DiffusionDecoder(model, Threshold(0.9), tokenizer=tok), load_task("mix", 8), gen_length=16)
    >>> 0.0 <= result.accuracy <= 1.0
    True

Data-parallel evaluation: under an initialised torch.distributed process group (every rank
calling `evaluate` with the same task and arguments, e.g. launched by torchrun), the task is
cut into batches exactly as a single process cuts it (batch i = problems i*b .. (i+1)*b - 1),
rank r decodes batches r, r + N, r + 2N, ... (N = world size), and the per-batch results are
gathered on every rank (all_gather_object) and merged in batch order. Every rank returns the
same EvalResult, which equals the single-process run's in everything but timing: records,
accuracy, per-task numbers, regime metrics and every counter (forward passes, row-layers,
tokens committed, tokens per step), because each batch is decoded exactly as the single
process decodes it (sampling too, with `seed=`). Timing: wall_time_s is the slowest rank's,
tokens_per_s the sum of the ranks' own rates (docs/design.md, "Data-parallel evaluation").
Code where only some ranks evaluate (rank 0 of a training job) passes distributed=False.
"""
from __future__ import annotations

import atexit
import hashlib
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from focuslib.decoder import DecodeStats, DiffusionDecoder
from focuslib.regime import RegimeStats, regime_stats, regime_stats_by_group
from focuslib.tasks import Task


@dataclass
class EvalResult:
    """Accuracy and cost of decoding one task; `records` has one dict per problem."""

    accuracy: float
    per_task: dict[str, float]  # sub-task -> accuracy
    tokens_per_step_by_task: dict[str, float]  # sub-task -> tokens committed per step per sequence
    tokens_per_s: float
    forward_passes: int
    row_layers: int
    tokens_per_step: float
    tokens_committed: int
    wall_time_s: float
    n_examples: int
    records: list[dict[str, Any]] = field(default_factory=list)
    regime: RegimeStats | None = None  # evaluate(..., regime=True): regime metrics over every batch
    regime_by_task: dict[str, RegimeStats] = field(default_factory=dict)  # sub-task -> regime (oracle_saving NaN)
    world_size: int = 1  # processes that decoded the task (torch.distributed), 1 = this process alone
    rank_examples: list[int] = field(default_factory=list)  # problems each rank decoded, by rank
    rank_wall_time_s: list[float] = field(default_factory=list)  # each rank's decoding wall time, by rank

    def metrics(self) -> dict[str, Any]:
        """Everything but the records: what metrics.json and loggers store.

        With regime metrics: flat `regime/<name>` keys (RegimeStats.as_dict) and
        `regime/<sub-task>/<fraction>` for the per-step fractions and forced_share of each sub-task.
        """
        out = asdict(self)
        for key in ("records", "regime", "regime_by_task"):
            out.pop(key)
        if self.regime is not None:
            out.update(self.regime.as_dict())
            for name, stats in self.regime_by_task.items():
                out.update({f"regime/{name}/{k}": getattr(stats, k)
                            for k in ("committed_fraction_first", "committed_fraction_later", "forced_share")})
        return out


def evaluate(decoder: DiffusionDecoder, task: Task, *, gen_length: int, steps: int | None = None,
             batch_size: int = 32, progress: bool = True, stop_at_eos: bool = True,
             on_batch: Callable[[dict[str, float]], None] | None = None, regime: bool = False,
             forced_below: float = 0.9, eviction_layer: int = 1, distributed: bool | None = None,
             seed: int | None = None) -> EvalResult:
    """Decode task.prompts with `decoder` (batches of `batch_size`, ragged) and score the texts.

    tokens_per_s counts committed tokens (EOS filler included) over decoding wall time only.
    on_batch: called after each batch with running metrics (examples, accuracy, tokens_per_s,
    tokens_per_step, forward_passes), e.g. to stream them to an experiment logger; under
    data parallelism each rank reports its own batches.
    regime: decode with trace=True and fill `result.regime` (focuslib.regime.RegimeStats, merged
    over the batches: fractions weighted by counts, oracle saving as a ratio of sums) and
    `result.regime_by_task`; forced_below and eviction_layer are passed to `regime_stats`.
    The oracle saving is meaningful only for a decoder without eviction. Tracing adds
    host-side work, so do not time a regime run.
    distributed: None (default) shards the batches over the ranks when a torch.distributed
    process group with more than one rank is initialised (module docstring); True requires
    one; False decodes every problem on this rank alone (use it when only some ranks call
    evaluate: the others would never join the gather). Every rank must call evaluate with
    the same task, gen_length, steps and batch_size (checked: ValueError on every rank);
    batch_size is per rank. Sharding is by batch, so ranks beyond the number of batches idle.
    seed: sampling seed per problem (`generate(seed=, sequence_ids=<index in the task>)`), so at
    temperature > 0 a problem draws the same tokens whatever the batch size, rank or world size;
    None: torch's default generator, shared by a batch (greedy decoding needs no seed).
    """
    if decoder.tokenizer is None:
        raise ValueError("evaluate needs text: build the decoder with tokenizer=...")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if regime and not 0 <= eviction_layer <= decoder.cfg.n_layers:
        raise ValueError(f"eviction_layer must lie in [0, n_layers={decoder.cfg.n_layers}], got {eviction_layer}")
    rows = list(task.dataset)
    rank, world = _rank_and_world(distributed)
    if world > 1:
        _check_same_request(task, rows, gen_length, steps, batch_size, stop_at_eos, regime, seed)
    batches = [rows[start:start + batch_size] for start in range(0, len(rows), batch_size)]
    mine = list(range(rank, len(batches), world))
    running = DecodeStats()
    parts: list[_Batch] = []
    n_layers = decoder.cfg.n_layers
    bar = tqdm(total=sum(len(batches[i]) for i in mine), desc=f"evaluate {task.name}", unit="ex",
               disable=not progress or rank != 0, leave=False)
    for index in mine:
        chunk = batches[index]
        ids = None if seed is None else range(index * batch_size, index * batch_size + len(chunk))  # task indices
        out = decoder.generate([r["prompt"] for r in chunk], gen_length=gen_length, steps=steps, stop_at_eos=stop_at_eos,
                               trace=regime, seed=seed, sequence_ids=ids)
        running.add(out.stats)
        part = _Batch(index=index, stats=out.stats, records=[
            {"task": row.get("task", task.name), "prompt": row["prompt"], "answer": row["answer"],
             "prediction": text, "score": task.score(text, row), "steps": n_steps, "committed": n_tok}
            for row, text, n_steps, n_tok in zip(chunk, out.text, out.steps_per_sequence, out.committed_per_sequence)])
        if regime:
            part.regime = regime_stats(out.trace, n_layers=n_layers, dense_row_layers=out.stats.row_layers,
                                       forced_below=forced_below, eviction_layer=eviction_layer)
            groups = {i: row.get("task", task.name) for i, row in enumerate(chunk)}
            part.regime_by_task = regime_stats_by_group(out.trace, groups, n_layers=n_layers, forced_below=forced_below,
                                                        eviction_layer=eviction_layer)
        parts.append(part)
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{running.tokens_per_s:.0f}")
        if on_batch is not None:
            scores = [r["score"] for p in parts for r in p.records]
            on_batch({"examples": len(scores), "accuracy": _mean(scores),
                      "tokens_per_s": running.tokens_per_s, "tokens_per_step": running.tokens_per_step,
                      "forward_passes": running.forward_passes})
    bar.close()
    shards = [_Shard(rank=rank, batches=parts, wall_time_s=running.wall_time_s,
                     tokens_committed=running.tokens_committed)]
    if world > 1:
        shards = _all_gather(shards[0], world)
    return _merge(shards, task.name)


@dataclass
class _Batch:
    """One decoded batch: its index in the task's batch order, counters, scored records, regime metrics."""

    index: int
    stats: DecodeStats
    records: list[dict[str, Any]]
    regime: RegimeStats | None = None
    regime_by_task: dict[str, RegimeStats] = field(default_factory=dict)


@dataclass
class _Shard:
    """What one rank decoded (what the ranks exchange)."""

    rank: int
    batches: list[_Batch]
    wall_time_s: float
    tokens_committed: int


def launched_distributed() -> bool:
    """True when this process is one of several ranks started by a launcher.

    torchrun sets RANK and WORLD_SIZE. A SLURM job that submitit runs as several tasks
    (Hydra's `hydra/launcher=slurm` with `hydra.launcher.tasks_per_node` or `nodes` > 1) has
    SLURM's variables instead; `init_distributed` derives torch's from them.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"]) > 1
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def init_distributed(device: str | torch.device = "cpu") -> str:
    """Join the launcher's process group (once) and return the device this rank should load the model on.

    Does nothing and returns `device` unchanged outside a multi-rank launch
    (`launched_distributed`) or when a process group is already initialised (the caller's
    then). Backend: gloo for CPU, NCCL for CUDA. device "cuda" (no index) becomes
    cuda:LOCAL_RANK (modulo the visible GPUs), which is also made the current device, as
    NCCL's object collectives (`evaluate`'s gather) require. Under submitit, MASTER_ADDR,
    MASTER_PORT, RANK, WORLD_SIZE and LOCAL_RANK are exported from SLURM's variables first
    (submitit.helpers.TorchDistributedEnvironment). The group is destroyed at exit.
    """
    device = str(device)
    dist = torch.distributed
    if not dist.is_available() or dist.is_initialized() or not launched_distributed():
        return device
    if "RANK" not in os.environ:  # a submitit SLURM job of several tasks
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)  # keeps MASTER_PORT
    cuda = torch.device(device).type == "cuda"
    if cuda:
        if torch.device(device).index is None:
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0')) % max(torch.cuda.device_count(), 1)}"
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    atexit.register(lambda: dist.destroy_process_group() if dist.is_initialized() else None)
    return device


def leave_distributed() -> None:
    """Wait for every rank, then destroy the process group (explicitly: tearing gloo down from an atexit
    hook while another rank is still exiting aborted ranks under load). A no-op without a group."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def is_main_process() -> bool:
    """False on every rank but 0 of an initialised process group: the one that prints and writes files."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _rank_and_world(distributed: bool | None) -> tuple[int, int]:
    """(rank, world size) to shard over: (0, 1) unless a process group is initialised and wanted."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    if distributed and not initialised:
        raise ValueError("evaluate(distributed=True) needs an initialised torch.distributed process group "
                         "(torch.distributed.init_process_group, e.g. under torchrun)")
    if distributed is False or not initialised:
        return 0, 1
    return torch.distributed.get_rank(), torch.distributed.get_world_size()


def _check_same_request(task: Task, rows: list[dict[str, Any]], gen_length: int, steps: int | None,
                        batch_size: int, stop_at_eos: bool, regime: bool, seed: int | None) -> None:
    """ValueError on every rank unless all ranks evaluate the same prompts with the same arguments.

    Sharding assumes it: a rank with another task or batch size would decode other problems
    and the merged result would silently mix them.
    """
    digest = hashlib.blake2b(repr([r["prompt"] for r in rows]).encode("utf-8"), digest_size=8).hexdigest()
    mine = {"task": task.name, "problems": len(rows), "prompts": digest, "gen_length": gen_length, "steps": steps,
            "batch_size": batch_size, "stop_at_eos": stop_at_eos, "regime": regime, "seed": seed}
    everyone: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(everyone, mine)
    differ = [f"rank {r}: {other}" for r, other in enumerate(everyone) if other != everyone[0]]
    if differ:
        raise ValueError("evaluate under torch.distributed needs the same task and arguments on every rank; rank 0: "
                         f"{everyone[0]}; " + "; ".join(differ))


def _all_gather(shard: _Shard, world: int) -> list[_Shard]:
    everyone: list[Any] = [None] * world
    torch.distributed.all_gather_object(everyone, shard)
    return everyone


def _merge(shards: list[_Shard], task_name: str) -> EvalResult:
    """One EvalResult from the ranks' batches, merged in the task's batch order (= the single-process order)."""
    parts = sorted((b for s in shards for b in s.batches), key=lambda b: b.index)
    total = DecodeStats()
    for part in parts:
        total.add(part.stats)
    records = [r for part in parts for r in part.records]
    regimes = [part.regime for part in parts if part.regime is not None]
    regimes_by_task: dict[str, list[RegimeStats]] = defaultdict(list)
    for part in parts:
        for name, stats in part.regime_by_task.items():
            regimes_by_task[name].append(stats)
    by_task: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_task[r["task"]].append(r)
    shards = sorted(shards, key=lambda s: s.rank)
    if len(shards) > 1:  # the ranks ran side by side: the slowest bounds the run, their rates add up
        wall_time_s = max(s.wall_time_s for s in shards)
        tokens_per_s = sum(s.tokens_committed / max(s.wall_time_s, 1e-9) for s in shards if s.batches)
    else:
        wall_time_s, tokens_per_s = total.wall_time_s, total.tokens_per_s
    return EvalResult(
        accuracy=_mean([r["score"] for r in records]),
        per_task={t: _mean([r["score"] for r in rs]) for t, rs in sorted(by_task.items())},
        tokens_per_step_by_task={t: sum(r["committed"] for r in rs) / max(sum(r["steps"] for r in rs), 1)
                                 for t, rs in sorted(by_task.items())},
        tokens_per_s=tokens_per_s, forward_passes=total.forward_passes, row_layers=total.row_layers,
        tokens_per_step=total.tokens_per_step, tokens_committed=total.tokens_committed,
        wall_time_s=wall_time_s, n_examples=len(records), records=records,
        regime=RegimeStats.merge(regimes) if regimes else None,
        regime_by_task={t: RegimeStats.merge(ps) for t, ps in sorted(regimes_by_task.items())},
        world_size=len(shards), rank_examples=[sum(len(b.records) for b in s.batches) for s in shards],
        rank_wall_time_s=[s.wall_time_s for s in shards],
    )


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
