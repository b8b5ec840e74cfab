"""experiments.overhead: the minimal block loop decodes what the decoder decodes, so its ratio is at equal work."""
import subprocess
import sys

import torch

from focuslib import DiffusionDecoder, load_model
from focuslib.experiments.overhead import minimal_block_loop
from focuslib.policies.unmasking import Threshold
from focuslib.tasks import load_task


def test_minimal_loop_gives_the_decoders_tokens():
    model, tok = load_model("tiny-sdar")
    pool = [p for p in load_task("mix", 64, seed="test").prompts]
    length = len(pool[0])
    ids = torch.tensor([tok.encode(p, add_special_tokens=False) for p in pool if len(p) == length][:4])
    for threshold in (0.9, 0.5):
        out = DiffusionDecoder(model, Threshold(threshold), cache="block").generate(
            ids.tolist(), gen_length=16, stop_at_eos=False)
        ref = minimal_block_loop(model, ids, 16, threshold)
        assert torch.equal(out.tokens, ref[:, ids.shape[1]:])
        assert torch.equal(ref[:, :ids.shape[1]], ids)


def test_overhead_app_prints_one_row_per_batch_size():
    cmd = [sys.executable, "-m", "experiments.overhead", "--batch-sizes", "1", "2", "--repeats", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "| model | batch | decoder tokens/s | minimal loop tokens/s | decoder / minimal |"
    assert [line.split(" | ")[:2] for line in lines[2:]] == [["| tiny-sdar (gen 16)", "1"], ["| tiny-sdar (gen 16)", "2"]]
    assert all(float(line.split(" | ")[-1].rstrip(" |")) > 0 for line in lines[2:])
