"""LLaDA-8B (GSAI-ML): OLMo-style key names, full bidirectional attention, no logit shift.

The published modeling file builds the embedding and LM head with `embedding_size`
rows (padded vocab), so that is our vocab_size. head_dim is d_model // n_heads.
"""
from __future__ import annotations

from typing import Any

from focuslib.families import Family, Rule, require, rope_theta, swiglu_rules
from focuslib.model import ModelConfig

_B = "model.transformer.blocks.{i}"


class LLaDAFamily(Family):
    name = "llada"
    model_types = ("llada",)
    architectures = ("LLaDAModelLM",)
    default_mask_id = 126336
    default_eos_id = 126081  # <|endoftext|>, also the pad id
    turn_end_ids = (126348,)  # <|eot_id|>, ends an assistant turn in the chat template
    rules = (
        Rule("embed.weight", "model.transformer.wte.weight"),
        Rule("layers.{i}.attn_norm.weight", f"{_B}.attn_norm.weight"),
        *(Rule(f"layers.{{i}}.attn.w{x}.{p}", f"{_B}.{x}_proj.{p}") for x in "qkv" for p in ("weight", "bias")),
        Rule("layers.{i}.attn.wo.weight", f"{_B}.attn_out.weight"),
        Rule("layers.{i}.ffn_norm.weight", f"{_B}.ff_norm.weight"),
        *swiglu_rules("layers.{i}.mlp", _B, ("ff_proj", "up_proj", "ff_out")),
        Rule("norm.weight", "model.transformer.ln_f.weight"),
        Rule("lm_head.weight", "model.transformer.ff_out.weight"),
    )

    def arch_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        require(
            hf, block_type="llama", rope=True, alibi=False, include_bias=False, block_group_size=1,
            layer_norm_type="rms", activation_type="silu", attention_layer_norm=False,
            input_emb_norm=False, scale_logits=False,
        )
        dim, heads = int(hf["d_model"]), int(hf["n_heads"])
        return dict(
            vocab_size=int(hf.get("embedding_size") or hf["vocab_size"]),
            dim=dim,
            n_layers=int(hf["n_layers"]),
            n_heads=heads,
            n_kv_heads=1 if hf.get("multi_query_attention") else int(hf.get("n_kv_heads") or heads),
            head_dim=dim // heads,
            intermediate_size=int(hf.get("mlp_hidden_size") or hf.get("mlp_ratio", 4) * dim),
            max_positions=int(hf.get("max_sequence_length", 4096)),
            rope_theta=rope_theta(hf, 10000.0),
            norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
            qkv_bias=bool(hf.get("include_qkv_bias", False)),
            tie_embeddings=bool(hf.get("weight_tying", False)),
        )

    def arch_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        return {
            "block_type": "llama",
            "d_model": cfg.dim,
            "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads,
            "n_kv_heads": cfg.n_kv_heads,
            "mlp_hidden_size": cfg.intermediate_size,
            "vocab_size": cfg.vocab_size,
            "embedding_size": cfg.vocab_size,
            "max_sequence_length": cfg.max_positions,
            "rope": True,
            "rope_theta": cfg.rope_theta,
            "alibi": False,
            "layer_norm_type": "rms",
            "rms_norm_eps": cfg.norm_eps,
            "activation_type": "silu",
            "include_bias": False,
            "include_qkv_bias": cfg.qkv_bias,
            "weight_tying": cfg.tie_embeddings,
            "block_group_size": 1,
        }


LLADA = LLaDAFamily()
