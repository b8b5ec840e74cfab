"""Dream-v0 (Qwen2.5 base): Qwen2 key names with q/k/v biases, full attention, logits shifted by one.

`QWEN_RULES` is the Qwen2/Qwen3 key layout; SDAR (Qwen3) shares it. Rules for
parameters a config lacks (biases, QK-norm) simply never match.
"""
from __future__ import annotations

from typing import Any

from focuslib.families import Family, Rule, require, standard_fields, standard_hf, swiglu_rules
from focuslib.model import ModelConfig

_L = "model.layers.{i}"

QWEN_RULES = (
    Rule("embed.weight", "model.embed_tokens.weight"),
    Rule("layers.{i}.attn_norm.weight", f"{_L}.input_layernorm.weight"),
    *(Rule(f"layers.{{i}}.attn.w{x}.{p}", f"{_L}.self_attn.{x}_proj.{p}") for x in "qkv" for p in ("weight", "bias")),
    Rule("layers.{i}.attn.wo.weight", f"{_L}.self_attn.o_proj.weight"),
    Rule("layers.{i}.attn.q_norm.weight", f"{_L}.self_attn.q_norm.weight"),
    Rule("layers.{i}.attn.k_norm.weight", f"{_L}.self_attn.k_norm.weight"),
    Rule("layers.{i}.ffn_norm.weight", f"{_L}.post_attention_layernorm.weight"),
    *swiglu_rules("layers.{i}.mlp", f"{_L}.mlp", ("gate_proj", "up_proj", "down_proj")),
    Rule("norm.weight", "model.norm.weight"),
    Rule("lm_head.weight", "lm_head.weight"),
)


class DreamFamily(Family):
    name = "dream"
    model_types = ("Dream",)
    architectures = ("DreamModel",)
    rules = QWEN_RULES
    default_mask_id = 151666  # <|mask|>
    default_eos_id = 151643  # <|endoftext|>, also the pad id
    # <|im_end|> ends an assistant turn in the instruct model's chat template; its
    # generation_config lists only 151643, but nothing after <|im_end|> is answer.
    turn_end_ids = (151645,)

    def arch_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        require(hf, use_mrope=False)
        out = standard_fields(hf, 10000.0)
        out["head_dim"] = out["dim"] // out["n_heads"]  # Dream's modeling file ignores any head_dim field
        return {**out, "qkv_bias": True, "logit_shift": True}

    def arch_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        out = standard_hf(cfg)
        del out["head_dim"]
        return out


DREAM = DreamFamily()
