"""SDAR (Qwen3 base, block diffusion): Qwen3 key names with QK-norm, no biases, block-causal attention.

The block size is in SDAR's config.json (`block_size`, 4 for SDAR-8B-Chat; b16/b32/b64
variants set it); the block grid is anchored at absolute position 0.
"""
from __future__ import annotations

from typing import Any

from focuslib.families import Family, require, standard_fields, standard_hf
from focuslib.families.dream import QWEN_RULES
from focuslib.model import ModelConfig


class SDARFamily(Family):
    name = "sdar"
    model_types = ("sdar",)
    architectures = ("SDARForCausalLM",)
    rules = QWEN_RULES
    default_mask_id = 151669  # <|MASK|>
    default_eos_id = 151643  # <|endoftext|>; generation_config adds <|im_end|> 151645

    def arch_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        require(hf, attention_bias=False)
        out = standard_fields(hf, 10000.0)
        return {**out, "qk_norm": True, "attention": "block_causal", "block_size": int(hf.get("block_size", 4))}

    def arch_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {**standard_hf(cfg), "attention_bias": False, "block_size": cfg.block_size}


SDAR = SDARFamily()
