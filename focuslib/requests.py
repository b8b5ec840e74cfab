"""What a `generate` request must be: prompts encoded to token ids, and every rule on the request.

Both need only the model config and a tokenizer, never weights: the decoder runs them
before decoding, and the experiments' config checks (`experiments/config_checks.py`)
run the same code before any model loads, so a config that validates also decodes.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def encode_prompts(prompts: Any, tokenizer: Any = None, *, allow_unk: bool = False) -> list[list[int]]:
    """Token-id lists of `prompts` (strings through `tokenizer`, integer lists as they are).

    Raises TypeError naming the prompt index for anything else, and ValueError naming the
    characters of a string prompt that the tokenizer can only encode as its unknown token
    (unless allow_unk; tokenizers without an unknown token, e.g. byte-level BPE, never do).
    Shared with the experiments' config checks, which encode a task's prompts before loading.
    """
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise TypeError("prompts must be a list of token-id lists or strings")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: pass at least one prompt")
    unk = None if allow_unk or tokenizer is None else _unk_id(tokenizer)
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, str):
            if tokenizer is None:
                raise ValueError("string prompts need a tokenizer: DiffusionDecoder(..., tokenizer=tok)")
            enc = tokenizer.encode(p, add_special_tokens=False)
            ids = [int(t) for t in getattr(enc, "ids", enc)]  # a raw tokenizers.Tokenizer returns an Encoding
            if unk is not None and unk in ids:
                raise ValueError(_unknown_characters(i, p, ids, tokenizer, unk))
            out.append(ids)
        else:
            out.append(_token_ids(i, p))
    return out


def n_blocks(gen_length: int, block_size: int | None) -> int:
    """Blocks a generation of gen_length tokens takes (block_size None: one)."""
    return -(-gen_length // (block_size or gen_length))


def request_problems(cfg: Any, gen_length: Any, steps: Any, *, block_size: int | None, unmasking: Any,
                     prompts: list[list[int]] | None = None) -> list[Exception]:
    """Every rule a `generate` request must satisfy, as the exceptions it would raise (first = raised).

    Needs only the ModelConfig: the experiments' config checks call it before any weights
    load. block_size: the decoder's block (the model's for block-diffusion families, else
    the user's or None); unmasking: the policy (its `needs_schedule`); prompts: token ids,
    or None to check the rules that do not depend on them.
    """
    if isinstance(gen_length, bool) or not isinstance(gen_length, numbers.Integral):
        return [TypeError(f"gen_length must be an int, got {gen_length!r} ({type(gen_length).__name__})")]
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, numbers.Integral)):
        return [TypeError(f"steps must be an int or None, got {steps!r} ({type(steps).__name__})")]
    if gen_length <= 0:
        return [ValueError(f"gen_length must be positive, got {gen_length}")]
    out: list[Exception] = []
    for i, p in enumerate(prompts or ()):
        if not p:
            out.append(ValueError(f"prompt {i} is empty"))
        elif cfg.mask_id in p:
            out.append(ValueError(f"prompt {i} contains the mask token id {cfg.mask_id}"))
        elif min(p) < 0 or max(p) >= cfg.vocab_size:
            out.append(ValueError(f"prompt {i} has token ids outside [0, {cfg.vocab_size})"))
        elif len(p) + gen_length > cfg.max_positions:
            out.append(ValueError(f"prompt {i} ({len(p)} tokens) + gen_length {gen_length} exceeds the model's "
                                  f"max_positions {cfg.max_positions}"))
    if not cfg.block_diffusion and block_size and gen_length % block_size:
        out.append(ValueError(f"gen_length {gen_length} is not a multiple of block_size {block_size}"))
    if (getattr(unmasking, "logits_eos_inf", False) or getattr(unmasking, "confidence_eos_eot_inf", False)) \
            and not cfg.eos_ids:
        out.append(ValueError(f"{type(unmasking).__name__}: logits_eos_inf / confidence_eos_eot_inf need an "
                              "EOS id, and this model's config has none (eos_token_id)"))
    if getattr(unmasking, "needs_schedule", False) and steps is None:
        out.append(ValueError(f"{type(unmasking).__name__} follows a fixed schedule: pass steps="))
    blocks = n_blocks(gen_length, block_size)
    if steps is not None and steps < blocks:
        out.append(ValueError(f"steps={steps} is fewer than the {blocks} blocks to decode"))
    return out


_PROMPT_TYPES = "expected a string or a list of integer token ids"


def _token_ids(i: int, prompt: Any) -> list[int]:
    """A prompt given as token ids, as a list of ints; TypeError naming prompt i otherwise."""
    if isinstance(prompt, Tensor) or (hasattr(prompt, "dtype") and hasattr(prompt, "ndim")):  # torch / numpy
        dtype = prompt.dtype
        integral = (not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)
                    if isinstance(prompt, Tensor) else getattr(dtype, "kind", "") in "iu")
        if prompt.ndim != 1 or not integral:
            raise TypeError(f"prompt {i} is a {type(prompt).__name__} of shape {tuple(prompt.shape)} and dtype "
                            f"{dtype}; {_PROMPT_TYPES}")
        return [int(t) for t in prompt.tolist()]
    if type(prompt) is list and all(type(t) is int for t in prompt):  # the common case, checked fast
        return list(prompt)
    if isinstance(prompt, (bytes, bytearray, dict)) or not isinstance(prompt, Sequence):
        raise TypeError(f"prompt {i} is {type(prompt).__name__} {prompt!r:.60}; {_PROMPT_TYPES}")
    for j, t in enumerate(prompt):
        if isinstance(t, bool) or not isinstance(t, numbers.Integral):
            raise TypeError(f"prompt {i} has {t!r:.40} ({type(t).__name__}) at position {j}; {_PROMPT_TYPES}")
    return [int(t) for t in prompt]


def _unk_id(tokenizer: Any) -> int | None:
    """Id of the tokenizer's unknown token, or None (byte-level tokenizers have none)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        return int(unk)
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)  # transformers fast tokenizer, or a raw one
    token = getattr(getattr(backend, "model", None), "unk_token", None)
    if token and hasattr(backend, "token_to_id"):
        found = backend.token_to_id(token)
        return None if found is None else int(found)
    return None


def _unknown_characters(i: int, prompt: str, ids: list[int], tokenizer: Any, unk: int) -> str:
    """The error message for prompt i, which the tokenizer encodes with its unknown token."""
    def encode(text: str) -> list[int]:
        enc = tokenizer.encode(text, add_special_tokens=False)
        return list(getattr(enc, "ids", enc))

    chars = [c for c in dict.fromkeys(prompt) if unk in encode(c)]
    shown = ", ".join(map(repr, chars[:12])) + (f" ... ({len(chars)} in all)" if len(chars) > 12 else "")
    what = (f"characters the tokenizer cannot encode: {shown}" if chars
            else f"text the tokenizer encodes as its unknown token (token positions "
                 f"{[j for j, t in enumerate(ids) if t == unk]})")
    text = prompt if len(prompt) <= 40 else prompt[:40] + "..."
    return (f"prompt {i} ({text!r}) has {what}; they would become the unknown token (id {unk}) and decode "
            "silently wrong. Rewrite the prompt, or pass DiffusionDecoder(..., allow_unk=True) to decode it anyway")


__all__ = ["encode_prompts", "n_blocks", "request_problems"]
