"""Tiny models and checkpoints for tests: every family's switches, dims small enough for CPU.

Shared by all test suites, so a tiny checkpoint is written by the same `save_checkpoint`
and read by the same `load_model` as a real one. The tiny vocabulary is 64 ids:
1 = end of text (also pad), 63 = mask, and `tiny_char_tokenizer` gives them text.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from focuslib.loading import save_checkpoint
from focuslib.model import ModelConfig, MoEConfig, Transformer

TINY_VOCAB = 64
TINY_EOS, TINY_MASK = 1, TINY_VOCAB - 1

_BASE: dict[str, Any] = dict(
    vocab_size=TINY_VOCAB, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64,
    mask_id=TINY_MASK, eos_ids=(TINY_EOS,), pad_id=TINY_EOS, max_positions=256, norm_eps=1e-5,
)
_FAMILY: dict[str, dict[str, Any]] = {
    "llada": dict(rope_theta=500000.0),
    "dream": dict(rope_theta=1e6, qkv_bias=True, logit_shift=True),
    "sdar": dict(rope_theta=1e6, qk_norm=True, attention="block_causal", block_size=4),
    "llada2": dict(
        rope_theta=600000.0, qk_norm=True, rotary_dim=4, attention="block_causal", block_size=4,
        moe=MoEConfig(n_experts=8, top_k=2, intermediate_size=16, n_shared_experts=1, n_group=4,
                      topk_group=2, routed_scaling=2.5, first_k_dense=1),
    ),
}
FAMILY_NAMES = tuple(_FAMILY)


def tiny_config(family: str, **overrides: Any) -> ModelConfig:
    """A ModelConfig with the family's switches (bias, QK-norm, rotary, MoE, attention rule) at tiny dims."""
    if family not in _FAMILY:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(_FAMILY)}")
    return ModelConfig(family=family, **{**_BASE, **_FAMILY[family], **overrides})


def tiny_model(family: str, seed: int = 0, **overrides: Any) -> Transformer:
    """Randomly initialised (Transformer.init_weights) float32 tiny model in eval mode."""
    return Transformer(tiny_config(family, **overrides)).init_weights(seed=seed).eval()


@torch.no_grad()
def sharpen(model: Transformer, seed: int = 1, head_scale: float = 4.0) -> Transformer:
    """Scramble the parameters, then scale the LM head: peaked but not degenerate confidences, so that
    threshold and ranking policies make varied decisions on a random model. In place; returns the model."""
    scramble_parameters(model, seed=seed)
    model.lm_head.weight.mul_(head_scale)
    return model


@torch.no_grad()
def scramble_parameters(model: Transformer, seed: int = 0) -> Transformer:
    """Give every parameter distinct random values, norms, biases and expert_bias included.

    init_weights leaves norms at 1 and biases at 0, so a swapped or dropped norm or bias
    would go unnoticed; parity and round-trip tests scramble first. Matrices get std
    1/sqrt(fan_in) so activations stay O(1) through the layers.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=gen)
        if p.ndim >= 2:
            p.copy_(noise * (1.0 if name.endswith("embed.weight") else p.shape[-1] ** -0.5))
        elif name.endswith("norm.weight"):
            p.copy_(1.0 + 0.2 * noise)
        else:
            p.copy_(0.2 * noise)
    return model


def write_tiny_checkpoint(
    path: str | os.PathLike[str], family: str, seed: int = 0, tokenizer: Any = None, **overrides: Any
) -> Path:
    """Save `tiny_model(family, seed, **overrides)` in the family's real format (float32)."""
    return save_checkpoint(tiny_model(family, seed, **overrides), path, tokenizer=tokenizer, dtype=torch.float32)


def tiny_char_tokenizer(vocab_size: int = TINY_VOCAB) -> Any:
    """A character-level `tokenizers.Tokenizer` for the tiny vocab: 0 <unk>, 1 <|endoftext|>, last <|mask|>.

    Ids 2.. are single characters (digits, lowercase letters, space, punctuation).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    chars = "0123456789abcdefghijklmnopqrstuvwxyz +-*=()[],.:;?!'\"/<>_#%&@^~|{}\\`$"
    n_chars = vocab_size - 3
    if n_chars > len(chars):
        raise ValueError(f"vocab_size {vocab_size} exceeds the {len(chars) + 3} ids this tokenizer can name")
    vocab = {"<unk>": 0, "<|endoftext|>": 1, **{c: i + 2 for i, c in enumerate(chars[:n_chars])}}
    vocab["<|mask|>"] = vocab_size - 1
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<unk>", "<|endoftext|>", "<|mask|>"])
    return tok


__all__ = [
    "FAMILY_NAMES",
    "TINY_EOS",
    "TINY_MASK",
    "TINY_VOCAB",
    "scramble_parameters",
    "tiny_char_tokenizer",
    "tiny_config",
    "tiny_model",
    "write_tiny_checkpoint",
]
