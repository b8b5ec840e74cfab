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


def test_llada_generate_loop_matches_the_scalar_reference_and_the_decoder():
    """The batched LLaDA loop of the benchmark gives what tests/test_llada_options.py's one-prompt copy of
    LLaDA's generate.py gives, and what the decoder gives with LowConfidence and no cache."""
    from test_llada_options import BLOCK, GEN, PROMPTS, llada_loop, sharp_model

    from focuslib.experiments.overhead import equal_work_pair, llada_generate_loop

    model = sharp_model("llada")
    for steps in (GEN, GEN // 2):
        for prompt in PROMPTS:
            batched = llada_generate_loop(model, torch.tensor([prompt]), GEN, BLOCK, steps)
            assert batched[0, len(prompt):].tolist() == llada_loop(model, prompt, steps)
    same_length = torch.tensor([[2, 3, 4, 5], [6, 7, 8, 9], [16, 17, 18, 19]])
    ours, peer = equal_work_pair(model, same_length, GEN, "llada", BLOCK)
    assert torch.equal(ours(), peer())


def test_measure_refuses_unequal_work():
    import pytest

    from focuslib.experiments.overhead import measure

    with pytest.raises(AssertionError, match="not at equal work"):
        measure(lambda: torch.zeros(1, 4), lambda: torch.ones(1, 4), n_tokens=4, repeats=1)


def test_fast_dllm_dual_loop_gives_the_decoders_dual_cache_tokens():
    """Fast-dLLM's batched dual-cache threshold loop decodes what the decoder decodes with cache="dual"
    (the decoder is tied to a one-prompt hand-written Fast-dLLM loop in tests/test_decoder.py)."""
    from test_llada_options import BLOCK, GEN, sharp_model

    from focuslib.experiments.overhead import equal_work_pair, fast_dllm_dual_loop

    model = sharp_model("llada")
    same_length = torch.tensor([[2, 3, 4, 5], [6, 7, 8, 9], [16, 17, 18, 19]])
    for threshold in (0.9, 0.3):
        ours = DiffusionDecoder(model, Threshold(threshold), block_size=BLOCK, cache="dual").generate(
            same_length.tolist(), gen_length=GEN, stop_at_eos=False)
        ref = fast_dllm_dual_loop(model, same_length, GEN, BLOCK, threshold)
        assert torch.equal(ours.tokens, ref[:, 4:]) and model.cfg.mask_id not in ref.tolist()
    ours, peer = equal_work_pair(model, same_length[:1], GEN, "fast_dllm", BLOCK)
    assert torch.equal(ours(), peer())


def test_measure_interleaves_the_two_loops_call_by_call():
    """After the equal-work check and one sizing call, the loops alternate, each going first in turn."""
    from focuslib.experiments.overhead import measure

    order: list[str] = []

    def loop(name):
        def run():
            order.append(name)
            return torch.zeros(1, 4)
        return run

    rates = measure(loop("d"), loop("p"), n_tokens=4, repeats=3, sample_s=0.0)  # one call per sample
    assert order[:3] == ["d", "p", "d"]
    assert order[3:] == ["d", "p", "p", "d", "d", "p"]
    assert rates["decoder_tokens_per_s"] > 0 and rates["peer_tokens_per_s"] > 0
    assert abs(rates["ratio"] - rates["decoder_tokens_per_s"] / rates["peer_tokens_per_s"]) < 1e-9
