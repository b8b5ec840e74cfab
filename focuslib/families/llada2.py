"""LLaDA2.0 (Ling 2.0 / BailingMoeV2 base, block diffusion): fused QKV, QK-norm, partial rotary, MoE.

Checked against inclusionAI's modeling_llada2_moe.py and Ling's modeling_bailing_moe_v2.py:
`attention.query_key_value` is viewed as [.., H + 2G, D] and split [H, G, G], i.e. q rows,
then k rows, then v rows along dim 0 of the weight; layers below first_k_dense_replace have
a dense MLP; the router is `mlp.gate.weight` plus the buffer `mlp.gate.expert_bias`. The
block size is not in the real config: 32 (LLaDA2.0's), overridable by a `block_size` key.
"""
from __future__ import annotations

from typing import Any

from focuslib.families import Family, Rule, require, standard_fields, standard_hf, swiglu_rules
from focuslib.model import ModelConfig, MoEConfig

_L = "model.layers.{i}"
_A = "layers.{i}.attn"
_NAMES = ("gate_proj", "up_proj", "down_proj")


class LLaDA2Family(Family):
    name = "llada2"
    model_types = ("llada2_moe", "llada2_moe_veomni")
    architectures = ("LLaDA2MoeModelLM",)
    default_mask_id = 156895
    default_eos_id = 156892
    rules = (
        Rule("embed.weight", "model.word_embeddings.weight"),
        Rule("layers.{i}.attn_norm.weight", f"{_L}.input_layernorm.weight"),
        *(
            Rule(tuple(f"{_A}.w{x}.{p}" for x in "qkv"), f"{_L}.attention.query_key_value.{p}")  # q, k, v rows
            for p in ("weight", "bias")
        ),
        Rule(f"{_A}.q_norm.weight", f"{_L}.attention.query_layernorm.weight"),
        Rule(f"{_A}.k_norm.weight", f"{_L}.attention.key_layernorm.weight"),
        Rule(f"{_A}.wo.weight", f"{_L}.attention.dense.weight"),
        Rule("layers.{i}.ffn_norm.weight", f"{_L}.post_attention_layernorm.weight"),
        *swiglu_rules("layers.{i}.mlp", f"{_L}.mlp", _NAMES),
        Rule("layers.{i}.mlp.router.weight", f"{_L}.mlp.gate.weight"),
        Rule("layers.{i}.mlp.expert_bias", f"{_L}.mlp.gate.expert_bias"),
        *swiglu_rules("layers.{i}.mlp.experts.{e}", f"{_L}.mlp.experts.{{e}}", _NAMES),
        *swiglu_rules("layers.{i}.mlp.shared", f"{_L}.mlp.shared_experts", _NAMES),
        Rule("norm.weight", "model.norm.weight"),
        Rule("lm_head.weight", "lm_head.weight"),
    )

    def arch_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        require(hf, use_bias=False, norm_head=False, score_function="sigmoid")
        out = standard_fields(hf, 10000.0)
        head_dim = out["head_dim"]
        rotary = int(hf.get("rotary_dim") or head_dim)
        if hf.get("partial_rotary_factor") is not None:  # what the published modeling code reads
            from_factor = int(head_dim * float(hf["partial_rotary_factor"]))
            if "rotary_dim" in hf and from_factor != rotary:
                raise ValueError(f"rotary_dim={rotary} disagrees with partial_rotary_factor -> {from_factor}")
            rotary = from_factor
        return {
            **out,
            "rotary_dim": None if rotary == head_dim else rotary,
            "qkv_bias": bool(hf.get("use_qkv_bias", False)),
            "qk_norm": bool(hf.get("use_qk_norm", True)),
            "moe": _moe_from_hf(hf),
            "attention": "block_causal",
            "block_size": int(hf.get("block_size", 32)),
        }

    def arch_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        rotary = cfg.rotary_dim or cfg.head_dim
        m = cfg.moe
        moe = {"num_experts": None} if m is None else {
            "num_experts": m.n_experts,
            "num_experts_per_tok": m.top_k,
            "moe_intermediate_size": m.intermediate_size,
            "num_shared_experts": m.n_shared_experts,
            "n_group": m.n_group,
            "topk_group": m.topk_group,
            "routed_scaling_factor": m.routed_scaling,
            "norm_topk_prob": m.norm_topk_prob,
            "first_k_dense_replace": m.first_k_dense,
            "score_function": "sigmoid",
            "moe_router_enable_expert_bias": True,
        }
        return {
            **standard_hf(cfg),
            "rotary_dim": rotary,
            "partial_rotary_factor": rotary / cfg.head_dim,
            "use_qkv_bias": cfg.qkv_bias,
            "use_qk_norm": cfg.qk_norm,
            "use_bias": False,
            "norm_head": False,
            **moe,
            "block_size": cfg.block_size,  # focuslib extension: not in the real config
        }


def _moe_from_hf(hf: dict[str, Any]) -> MoEConfig | None:
    if not hf.get("num_experts"):
        return None
    return MoEConfig(
        n_experts=int(hf["num_experts"]),
        top_k=int(hf["num_experts_per_tok"]),
        intermediate_size=int(hf["moe_intermediate_size"]),
        n_shared_experts=int(hf.get("num_shared_experts") or 0),
        n_group=int(hf.get("n_group") or 1),
        topk_group=int(hf.get("topk_group") or 1),
        routed_scaling=float(hf.get("routed_scaling_factor") or 1.0),
        norm_topk_prob=bool(hf.get("norm_topk_prob", True)),
        first_k_dense=int(hf.get("first_k_dense_replace") or 0),
    )


LLADA2 = LLaDA2Family()
