"""Data-parallel evaluation on torch.distributed (gloo, 2 CPU processes) equals the single-process run.

The task is cut into batches as one process cuts it and the batches are dealt to the ranks,
so everything but timing must be identical: records, accuracy, every counter (forward passes
included), regime metrics. Also: the request check across ranks, and the decode app under torchrun
writing one metrics.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from focuslib import DiffusionDecoder, evaluate, load_model
from focuslib.policies.unmasking import Threshold
from focuslib.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"tokens_per_s", "wall_time_s", "world_size", "rank_examples", "rank_wall_time_s"}
N, BATCH = 14, 4  # 4 batches (the last of 2): rank 0 decodes batches 0 and 2, rank 1 batches 1 and 3


def _decoder() -> DiffusionDecoder:
    model, tok = load_model("tiny-sdar")
    return DiffusionDecoder(model, Threshold(0.9), tokenizer=tok)


def _sampling(decoder: DiffusionDecoder) -> DiffusionDecoder:
    return DiffusionDecoder(decoder.model, Threshold(0.9, temperature=1.0), tokenizer=decoder.tokenizer)


def _runs(decoder: DiffusionDecoder) -> dict[str, dict]:
    """Greedy, regime and seeded sampling evaluations as JSON-ready dicts (NaN survives as 'NaN' text)."""
    out = {}
    for name, dec, kwargs in (("plain", decoder, dict(task=load_task("mix", N), batch_size=BATCH)),
                              ("regime", decoder, dict(task=load_task("mix", 5), batch_size=2, regime=True)),
                              ("sampled", _sampling(decoder), dict(task=load_task("mix", N), batch_size=BATCH, seed=7))):
        result = evaluate(dec, gen_length=16, progress=False, **kwargs)
        out[name] = {"metrics": result.metrics(), "records": result.records}
    return out


def _worker(rank: int, world: int, tmp: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{tmp}/rendezvous", rank=rank, world_size=world)
    try:
        decoder = _decoder()
        out = _runs(decoder)
        try:  # a rank with another batch size must be refused on every rank, not merged
            evaluate(decoder, load_task("mix", 4), gen_length=16, batch_size=2 + rank, progress=False)
            out["mismatch"] = "accepted"
        except ValueError as err:
            out["mismatch"] = str(err)
        out["alone"] = evaluate(decoder, load_task("mix", 4), gen_length=16, batch_size=2, progress=False,
                                distributed=False).rank_examples
        Path(tmp, f"rank{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def _without_timing(metrics: dict) -> dict:
    return json.loads(json.dumps({k: v for k, v in metrics.items() if k not in TIMING}))


def test_two_gloo_ranks_equal_the_single_process_run(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single = json.loads(json.dumps(_runs(_decoder())))
    for got in ranks:  # every rank returns the merged result
        for name in ("plain", "regime", "sampled"):
            assert _without_timing(got[name]["metrics"]) == _without_timing(single[name]["metrics"]), name
            assert got[name]["records"] == single[name]["records"], name
        assert "same task and arguments on every rank" in got["mismatch"] and "batch_size" in got["mismatch"]
        assert got["alone"] == [4]  # distributed=False: this rank decodes everything
    m = ranks[0]["plain"]["metrics"]
    assert m["world_size"] == 2 and m["rank_examples"] == [8, 6] and m["n_examples"] == N
    assert m["wall_time_s"] == max(m["rank_wall_time_s"])
    assert single["plain"]["metrics"]["world_size"] == 1 and single["plain"]["metrics"]["rank_examples"] == [N]
    assert m["forward_passes"] == single["plain"]["metrics"]["forward_passes"]  # batches are formed identically


def test_seeded_sampling_does_not_depend_on_the_batch_size():
    """evaluate(seed=) keys each problem's generator by its index in the task, not its place in a batch."""
    decoder = _sampling(_decoder())
    task = load_task("mix", 6)
    runs = [evaluate(decoder, task, gen_length=16, batch_size=b, progress=False, seed=3).records for b in (1, 4, 6)]
    assert runs[0] == runs[1] == runs[2]
    other = evaluate(decoder, task, gen_length=16, batch_size=6, progress=False, seed=4).records
    assert other != runs[0]  # the seed matters (temperature 1 on a 6-problem task)


def test_distributed_true_without_a_process_group_is_refused():
    with pytest.raises(ValueError, match="needs an initialised torch.distributed process group"):
        evaluate(_decoder(), load_task("mix", 2), gen_length=16, progress=False, distributed=True)


def test_decode_app_under_torchrun_writes_one_metrics_json(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "HYDRA_FULL_ERROR": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "focuslib.experiments.decode", "task.n=8", "batch_size=2", "progress=false", "show=0",
         f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count("accuracy ") == 1 and proc.stdout.count("loading ") == 1  # rank 0 alone prints
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["world_size"] == 2 and record["rank_examples"] == [4, 4]
    generations = [json.loads(line) for line in (run_dir / "generations.jsonl").read_text().splitlines()]
    single = evaluate(_decoder(), load_task("mix", 8), gen_length=16, batch_size=2, progress=False)
    assert generations == single.records
    assert _without_timing({k: record[k] for k in single.metrics()}) == _without_timing(single.metrics())


@pytest.mark.parametrize("env,launched", [
    ({}, False),
    ({"RANK": "0", "WORLD_SIZE": "1"}, False),  # torchrun with one process: nothing to shard
    ({"RANK": "1", "WORLD_SIZE": "2"}, True),  # torchrun
    ({"SUBMITIT_EXECUTOR": "slurm", "SLURM_NTASKS": "4"}, True),  # hydra/launcher=slurm, tasks_per_node=4
    ({"SUBMITIT_EXECUTOR": "slurm", "SLURM_NTASKS": "1"}, False),  # one task per sweep point (the default)
])
def test_launch_detection(monkeypatch, env, launched):
    from focuslib.evaluate import init_distributed, launched_distributed

    for key in ("RANK", "WORLD_SIZE", "SUBMITIT_EXECUTOR", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert launched_distributed() is launched
    if not launched:  # nothing to join: the device comes back as given, no group is made
        assert init_distributed("cpu") == "cpu" and not dist.is_initialized()
