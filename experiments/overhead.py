"""What the decoder's generality costs: DiffusionDecoder (no eviction) against a minimal hand-written loop.

    python -m experiments.overhead                     # bundled tiny-sdar, batch 1 and 32
    python -m experiments.overhead --model tiny-sdar-b32 --task long_mix --gen-length 32
    python -m experiments.overhead --model tiny-llada --peer llada   # against LLaDA's own generate.py loop
    python -m experiments.overhead --model tiny-llada --peer fast_dllm   # against Fast-dLLM's dual-cache loop

The minimal loop is what a researcher would write for one setting only: block diffusion,
the exact block cache, Threshold(0.9), equal-length prompts, no EOS stop. It does the same
work as the decoder (same rows per step, same forward passes) and must give the same tokens;
the ratio of tokens/s is the decoder's bookkeeping overhead. `--peer llada` compares
instead with LLaDA's own `generate.py` loop (one full forward per step, no cache) against the
decoder doing the same (LowConfidence, cache="none"), and `--peer fast_dllm` with Fast-dLLM's
dual-cache threshold loop (Threshold(0.9), cache="dual"). Timed side by side in one process,
call by call interleaved (`measure`); the tokens must agree.

Shapes: B batch, T positions, L rows, G kv heads, D head dim, V vocab.
"""
from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Callable

import torch
from torch import Tensor

from focuslib.model import Transformer, attend, rope_tables


def cached_rows(model: Transformer, x: Tensor, first: int, last: int, answer_start: Tensor, k_cache: Tensor,
                v_cache: Tensor, mask: Tensor) -> Tensor:
    """Hidden rows [B, L, C] of positions first..last-1 of x [B, T]; their K/V overwrite the caches
    [n_layers, B, T, G, D], and attention reads the first K keys under mask [B, L, K]."""
    width = mask.shape[-1]
    pos = torch.arange(first, last).expand(x.shape[0], -1)  # [B, L]
    h = model.embed_rows(x[:, first:last], pos, answer_start)
    rope = rope_tables(model.cfg, pos)
    for i, layer in enumerate(model.layers):
        q, k, v = layer.qkv(h, rope)
        k_cache[i, :, first:last], v_cache[i, :, first:last] = k, v
        h = layer.finish(h, attend(q, k_cache[i, :, :width], v_cache[i, :, :width], mask))
    return h


def threshold_commit(model: Transformer, x: Tensor, h: Tensor, lo: int, hi: int, threshold: float) -> None:
    """Commit into x [B, T] (in place) every masked position of lo..hi-1 whose confidence is >= threshold, at
    least the most confident one per sequence; h [B, hi - lo, C] are the hidden rows of those positions."""
    mask_id = model.cfg.mask_id
    logits = model.logits(h).float()  # [B, S, V]
    logits[..., mask_id] = float("-inf")
    masked = x[:, lo:hi] == mask_id  # [B, S]
    conf, tok = logits.softmax(-1).max(-1)
    conf = torch.where(masked, conf, -1.0)
    commit = masked & ((conf >= threshold) | (conf == conf.max(1, keepdim=True).values))
    x[:, lo:hi] = torch.where(commit, tok, x[:, lo:hi])


@torch.inference_mode()
def minimal_block_loop(model: Transformer, prompts: Tensor, gen_length: int, threshold: float = 0.9) -> Tensor:
    """Threshold decoding of a block-diffusion model with a K/V cache of finished blocks; returns tokens [B, T].

    prompts [B, P]: equal-length prompts. Each step runs the positions whose K/V is not final,
    from the first such position to the end of the current block; a block's K/V becomes final
    at the step after its last commit (when it is computed with its final tokens).
    """
    cfg = model.cfg
    b, p = prompts.shape
    t, bs = p + gen_length, cfg.block_size
    x = torch.cat([prompts, torch.full((b, gen_length), cfg.mask_id, dtype=torch.long)], 1)  # [B, T]
    k_cache = torch.zeros(cfg.n_layers, b, t, cfg.n_kv_heads, cfg.head_dim)
    v_cache = torch.zeros_like(k_cache)
    final, block = 0, p // bs  # positions < final have final K/V; current block index
    answer_start = torch.full((b,), p)
    while block * bs < t:
        start, end = block * bs, min((block + 1) * bs, t)
        rows = torch.arange(final, end)
        mask = (torch.arange(end)[None, :] // bs <= rows[:, None] // bs).expand(b, -1, -1)  # [B, L, end]
        h = cached_rows(model, x, final, end, answer_start, k_cache, v_cache, mask)
        threshold_commit(model, x, h[:, start - final:], start, end, threshold)
        final = start  # everything before the current block was computed with final tokens
        if not (x[:, start:end] == cfg.mask_id).any():
            block += 1  # the next step also computes this block once more, with its final tokens
    return x


@torch.inference_mode()
def llada_generate_loop(model: Transformer, prompts: Tensor, gen_length: int, block_length: int, steps: int) -> Tensor:
    """LLaDA's own `generate.py` as its authors run it, batched: returns tokens [B, T].

    Greedy (temperature 0), `low_confidence` remasking, semi-autoregressive blocks of
    `block_length`, `steps // n_blocks` steps per block committing the scheduled number of
    tokens per row (`get_num_transfer_tokens`), and one full forward of the whole sequence
    per step (no cache). focuslib's one convention: the mask token is never committed.
    """
    cfg = model.cfg
    b, p = prompts.shape
    x = torch.cat([prompts, torch.full((b, gen_length), cfg.mask_id, dtype=torch.long)], 1)  # [B, T]
    answer_start = torch.full((b,), p)
    n_blocks = gen_length // block_length
    per_block = steps // n_blocks
    for blk in range(n_blocks):
        lo, hi = p + blk * block_length, p + (blk + 1) * block_length
        n_masked = (x[:, lo:hi] == cfg.mask_id).sum(1, keepdim=True)  # [B, 1]
        quota = n_masked // per_block + (torch.arange(per_block) < n_masked % per_block)  # [B, steps]
        for i in range(per_block):
            mask_index = x == cfg.mask_id  # [B, T]
            logits = model(x, answer_start=answer_start).float()  # [B, T, V]
            logits[..., cfg.mask_id] = float("-inf")
            x0 = logits.argmax(-1)
            x0_p = logits.softmax(-1).gather(-1, x0[..., None])[..., 0]  # [B, T]
            x0_p[:, hi:] = float("-inf")
            confidence = torch.where(mask_index, x0_p, float("-inf"))
            order = confidence.argsort(dim=1, descending=True, stable=True)  # ties: left-most first
            rank = torch.empty_like(order).scatter_(1, order, torch.arange(x.shape[1]).expand_as(order))
            transfer = (rank < quota[:, i:i + 1]) & mask_index
            x = torch.where(transfer, x0, x)
    return x


@torch.inference_mode()
def fast_dllm_dual_loop(model: Transformer, prompts: Tensor, gen_length: int, block_length: int,
                        threshold: float = 0.9) -> Tensor:
    """Fast-dLLM's `generate_with_dual_cache` with its confidence threshold, batched: returns tokens [B, T].

    Per block: a step that runs every position and stores every position's K/V (the refresh,
    which also commits), then steps that run only the block's positions against the stored K/V
    of all others (prefix and suffix, stale until the next block), until the block is decoded.
    Each step commits every masked block position with confidence >= threshold, at least the best.
    The batch moves block by block together, as Fast-dLLM's loop does.
    """
    cfg = model.cfg
    b, p = prompts.shape
    t = p + gen_length
    x = torch.cat([prompts, torch.full((b, gen_length), cfg.mask_id, dtype=torch.long)], 1)  # [B, T]
    k_cache = torch.zeros(cfg.n_layers, b, t, cfg.n_kv_heads, cfg.head_dim)
    v_cache = torch.zeros_like(k_cache)
    answer_start = torch.full((b,), p)
    for lo in range(p, t, block_length):
        hi, refresh = lo + block_length, True
        while (x[:, lo:hi] == cfg.mask_id).any():
            first, last = (0, t) if refresh else (lo, hi)  # rows run at this step
            mask = torch.ones(b, last - first, t, dtype=torch.bool)  # [B, L, T]: every key, stored or fresh
            h = cached_rows(model, x, first, last, answer_start, k_cache, v_cache, mask)
            threshold_commit(model, x, h[:, lo - first:hi - first], lo, hi, threshold)
            refresh = False
    return x


PEERS = {"minimal": "minimal loop", "llada": "LLaDA generate.py", "fast_dllm": "Fast-dLLM dual cache"}


def equal_work_pair(model: Transformer, prompts: Tensor, gen_length: int, peer: str, block_length: int
                    ) -> tuple[Callable[[], Tensor], Callable[[], Tensor]]:
    """(decoder, peer) callables returning the generated tokens [B, gen_length] of the same work.

    minimal: DiffusionDecoder(Threshold(0.9), cache="block") against `minimal_block_loop`;
    llada: DiffusionDecoder(LowConfidence(), cache="none", one token per step) against `llada_generate_loop`;
    fast_dllm: DiffusionDecoder(Threshold(0.9), cache="dual") against `fast_dllm_dual_loop`. Batched, the
    decoder moves each sequence to its next block as soon as it is done, Fast-dLLM's loop waits for the
    batch (the tokens are the same, the forward passes may differ; at batch 1 the work is identical).
    """
    from focuslib import DiffusionDecoder
    from focuslib.policies.unmasking import LowConfidence, Threshold

    ids, p = prompts.tolist(), prompts.shape[1]
    if peer == "minimal":
        decoder = DiffusionDecoder(model, Threshold(0.9), cache="block")
        return (lambda: decoder.generate(ids, gen_length=gen_length, stop_at_eos=False).tokens,
                lambda: minimal_block_loop(model, prompts, gen_length)[:, p:])
    if peer == "llada":
        decoder = DiffusionDecoder(model, LowConfidence(), block_size=block_length, cache="none")
        return (lambda: decoder.generate(ids, gen_length=gen_length, steps=gen_length, stop_at_eos=False).tokens,
                lambda: llada_generate_loop(model, prompts, gen_length, block_length, gen_length)[:, p:])
    if peer == "fast_dllm":
        decoder = DiffusionDecoder(model, Threshold(0.9), block_size=block_length, cache="dual")
        return (lambda: decoder.generate(ids, gen_length=gen_length, stop_at_eos=False).tokens,
                lambda: fast_dllm_dual_loop(model, prompts, gen_length, block_length)[:, p:])
    raise ValueError(f"peer must be one of {sorted(PEERS)}, got {peer!r}")


def measure(run_decoder: Callable[[], Tensor], run_peer: Callable[[], Tensor], n_tokens: int, repeats: int,
            sample_s: float = 0.25) -> dict[str, float]:
    """tokens/s of the decoder and of its peer loop, their calls interleaved; their tokens must agree.

    The two alternate call by call (decoder then peer, then peer then decoder, ...) for `repeats`
    samples of about `sample_s` seconds of each loop, and each rate is its total tokens over its
    total time (garbage collection included, as a user runs them). A drift in the machine's speed
    (a shared 2-core machine drifts) then slows both loops alike; best-of-n samples of one loop
    at a time swung the ratio by 5-10% from run to run.
    """
    if not torch.equal(run_decoder(), run_peer()):  # also the warm-up
        raise AssertionError("the peer loop and the decoder disagree: the comparison is not at equal work")
    t0 = time.perf_counter()
    run_decoder()
    calls = repeats * max(1, round(sample_s / max(time.perf_counter() - t0, 1e-6)))
    total = {"decoder": 0.0, "peer": 0.0}
    pair = (("decoder", run_decoder), ("peer", run_peer))
    for i in range(calls):
        for name, run in pair if i % 2 == 0 else pair[::-1]:
            t0 = time.perf_counter()
            run()
            total[name] += time.perf_counter() - t0
    return {"decoder_tokens_per_s": n_tokens * calls / total["decoder"],
            "peer_tokens_per_s": n_tokens * calls / total["peer"], "ratio": total["peer"] / total["decoder"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-sdar")
    ap.add_argument("--task", default="mix", help="prompts: the most common prompt length of this task's test split")
    ap.add_argument("--gen-length", type=int, default=16)
    ap.add_argument("--peer", choices=sorted(PEERS), default="minimal",
                    help="minimal: hand-written block loop (block-diffusion models); llada: LLaDA's generate.py; "
                         "fast_dllm: Fast-dLLM's dual-cache threshold loop (full-attention models)")
    ap.add_argument("--block-length", type=int, default=8, help="block_length of --peer llada / fast_dllm")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=5, help="samples of about 0.25 s of each loop, interleaved call by call")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from focuslib import load_model
    from focuslib.tasks import load_task

    model, tok = load_model(args.model)
    pool = load_task(args.task, 512, seed="test").prompts
    length = Counter(map(len, pool)).most_common(1)[0][0]  # the peer loops take equal-length prompts
    prompts = [p for p in pool if len(p) == length][:max(args.batch_sizes)]
    ids = torch.tensor([tok.encode(p, add_special_tokens=False) for p in prompts])
    peer = PEERS[args.peer]
    short = peer.split()[0]
    print(f"| model | batch | decoder tokens/s | {peer} tokens/s | decoder / {short} |\n|---|---|---|---|---|")
    for b in args.batch_sizes:
        pair = equal_work_pair(model, ids[:b], args.gen_length, args.peer, args.block_length)
        r = measure(*pair, n_tokens=b * args.gen_length, repeats=args.repeats)
        print(f"| {args.model} (gen {args.gen_length}) | {b} | {r['decoder_tokens_per_s']:.0f} "
              f"| {r['peer_tokens_per_s']:.0f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
