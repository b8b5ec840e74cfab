"""What the decoder's generality costs: DiffusionDecoder (no eviction) against a minimal hand-written loop.

    python -m experiments.overhead                     # bundled tiny-sdar, batch 1 and 32
    python -m experiments.overhead --model tiny-sdar-b32 --task long_mix --gen-length 64

The minimal loop is what a researcher would write for one setting only: block diffusion,
the exact block cache, Threshold(0.9), equal-length prompts, no EOS stop. It does the same
work as the decoder (same rows per step, same forward passes) and must give the same tokens;
the ratio of tokens/s is the decoder's bookkeeping overhead. Timed side by side in one
process, interleaved, best of `--repeats`.

Shapes: B batch, T positions, L rows, G kv heads, D head dim, V vocab.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import Tensor

from focuslib.model import Transformer, attend, rope_tables


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
        pos = torch.arange(final, end).expand(b, -1)  # [B, L]
        h = model.embed_rows(x[:, final:end], pos, answer_start)
        rope = rope_tables(cfg, pos)
        mask = (torch.arange(end)[None, :] // bs <= pos[0][:, None] // bs).expand(b, -1, -1)  # [B, L, end]
        for i, layer in enumerate(model.layers):
            q, k, v = layer.qkv(h, rope)
            k_cache[i, :, final:end], v_cache[i, :, final:end] = k, v
            h = h + layer.attn_out(attend(q, k_cache[i, :, :end], v_cache[i, :, :end], mask))
            h = h + layer.ffn(h)
        final = start  # everything before the current block was computed with final tokens
        masked = x[:, start:end] == cfg.mask_id  # [B, S]
        logits = model.logits(h[:, start - pos[0, 0]:]).float()
        logits[..., cfg.mask_id] = float("-inf")
        conf, tok = logits.softmax(-1).max(-1)  # [B, S]
        conf = torch.where(masked, conf, -1.0)
        commit = masked & ((conf >= threshold) | (conf == conf.max(1, keepdim=True).values))
        x[:, start:end] = torch.where(commit, tok, x[:, start:end])
        if not (x[:, start:end] == cfg.mask_id).any():
            block += 1  # the next step also computes this block once more, with its final tokens
    return x


def measure(model: Transformer, prompts: Tensor, gen_length: int, repeats: int) -> dict[str, float]:
    """tokens/s of DiffusionDecoder and of the minimal loop on the same prompts (interleaved, best of repeats)."""
    from focuslib import DiffusionDecoder
    from focuslib.policies.unmasking import Threshold

    decoder = DiffusionDecoder(model, Threshold(0.9), cache="block")
    ids = prompts.tolist()
    best = {"decoder": float("inf"), "minimal": float("inf")}
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = decoder.generate(ids, gen_length=gen_length, stop_at_eos=False)
        best["decoder"] = min(best["decoder"], time.perf_counter() - t0)
        t0 = time.perf_counter()
        ref = minimal_block_loop(model, prompts, gen_length)
        best["minimal"] = min(best["minimal"], time.perf_counter() - t0)
    if not torch.equal(out.tokens, ref[:, prompts.shape[1]:]):
        raise AssertionError("the minimal loop and the decoder disagree: the comparison is not at equal work")
    n = prompts.shape[0] * gen_length
    return {"decoder_tokens_per_s": n / best["decoder"], "minimal_tokens_per_s": n / best["minimal"],
            "ratio": best["minimal"] / best["decoder"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="tiny-sdar")
    ap.add_argument("--task", default="mix", help="prompts: the most common prompt length of this task's test split")
    ap.add_argument("--gen-length", type=int, default=16)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from focuslib import load_model
    from focuslib.tasks import load_task

    model, tok = load_model(args.model)
    from collections import Counter

    pool = load_task(args.task, 512, seed="test").prompts
    length = Counter(map(len, pool)).most_common(1)[0][0]  # the minimal loop takes equal-length prompts
    prompts = [p for p in pool if len(p) == length][:max(args.batch_sizes)]
    ids = torch.tensor([tok.encode(p, add_special_tokens=False) for p in prompts])
    print("| model | batch | decoder tokens/s | minimal loop tokens/s | decoder / minimal |\n|---|---|---|---|---|")
    for b in args.batch_sizes:
        r = measure(model, ids[:b], args.gen_length, args.repeats)
        print(f"| {args.model} (gen {args.gen_length}) | {b} | {r['decoder_tokens_per_s']:.0f} "
              f"| {r['minimal_tokens_per_s']:.0f} | {r['ratio']:.2f} |")


if __name__ == "__main__":
    main()
