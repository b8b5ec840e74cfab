"""Golden tokens: the bundled models' raw generation regions on fixed held-out prompts.

A refactor guard (issue: decoder/policy seam): dense decoding and DyLLM must give these
tokens exactly. The equivalence tests (ragged = single, cache = recompute, parity with
reference loops) are what make the tokens right; this file only pins them, so that a
change that alters any output of the shipped models is noticed. Regenerate with
`python -m tests.golden` only when an output change is intended, and say why in the commit.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

PATH = Path(__file__).parent / "data" / "golden_tokens.json"
N_PROMPTS = 12
GEN_LENGTH = 16

# (name, model, cache, unmasking config, eviction config)
CASES = [
    ("sdar-block-threshold", "tiny-sdar", "block", ("Threshold", {"threshold": 0.9}), None),
    ("sdar-delayed-threshold", "tiny-sdar", "delayed", ("Threshold", {"threshold": 0.9}), None),
    ("sdar-block-lowconf", "tiny-sdar", "block", ("LowConfidence", {}), None),
    ("sdar-block-dyllm", "tiny-sdar", "block", ("Threshold", {"threshold": 0.9}), ("DyLLM", {})),
    ("llada-none-lowconf", "tiny-llada", "none", ("LowConfidence", {}), None),
    ("llada-dual-threshold", "tiny-llada", "dual", ("Threshold", {"threshold": 0.9}), None),
    ("llada-prefix-threshold", "tiny-llada", "prefix", ("Threshold", {"threshold": 0.9}), None),
]


def decode_case(case: tuple) -> list[list[int]]:
    """Raw generation-region token ids of one golden case (no EOS stop, so every position is pinned)."""
    import focuslib.policies.eviction as eviction
    import focuslib.policies.unmasking as unmasking
    from focuslib import DiffusionDecoder, load_model
    from focuslib.tasks import load_task

    _, name, cache, (u_cls, u_kw), ev = case
    model, tok = load_model(name)
    policy = getattr(unmasking, u_cls)(**u_kw)
    evict = getattr(eviction, ev[0])(**ev[1]) if ev else None
    block = 8 if name == "tiny-llada" else None
    decoder = DiffusionDecoder(model, policy, evict, cache=cache, tokenizer=tok, block_size=block)
    prompts = load_task("mix", N_PROMPTS, seed="test").prompts
    steps = GEN_LENGTH if u_cls == "LowConfidence" else None
    out = decoder.generate(prompts, gen_length=GEN_LENGTH, steps=steps, stop_at_eos=False)
    return out.tokens.tolist()


def main() -> None:
    torch.set_num_threads(1)
    PATH.write_text(json.dumps({case[0]: decode_case(case) for case in CASES}) + "\n")
    print(f"wrote {PATH}")


if __name__ == "__main__":
    main()
