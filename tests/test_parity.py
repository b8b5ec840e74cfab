"""Our forward pass against transformers' reference models, and LLaDA2.0 routing on hand-computed cases.

LLaDA is a Llama with other key names, Dream a Qwen2 and SDAR a Qwen3; transformers
runs them with any 4-D boolean mask (True = attend) under SDPA, which gives a reference
for bidirectional and block-causal attention on the same random weights.
"""
from __future__ import annotations

import math
import re

import pytest
import torch

from focuslib.loading import checkpoint_state_dict
from focuslib.model import MoE, MoEConfig, attend, rope_tables
from focuslib.testing import scramble_parameters, tiny_model

transformers = pytest.importorskip("transformers")

# LLaDA's published names -> Llama's, written from the two modeling files, not from focuslib.
LLADA_TO_LLAMA = [
    (r"model\.transformer\.wte\.", "model.embed_tokens."),
    (r"model\.transformer\.ln_f\.", "model.norm."),
    (r"model\.transformer\.ff_out\.", "lm_head."),
    (r"\.attn_norm\.", ".input_layernorm."),
    (r"\.(q|k|v)_proj\.", r".self_attn.\1_proj."),
    (r"\.attn_out\.", ".self_attn.o_proj."),
    (r"\.ff_norm\.", ".post_attention_layernorm."),
    (r"\.ff_proj\.", ".mlp.gate_proj."),
    (r"\.up_proj\.", ".mlp.up_proj."),
    (r"\.ff_out\.", ".mlp.down_proj."),
    (r"model\.transformer\.blocks\.", "model.layers."),
]


def llada_to_llama(key: str) -> str:
    for pattern, repl in LLADA_TO_LLAMA:
        key = re.sub(pattern, repl, key)
    return key


def reference_model(family: str, cfg):
    common = dict(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        rms_norm_eps=cfg.norm_eps, rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=False, attn_implementation="sdpa",
    )
    if family == "llada":
        hf_cfg = transformers.LlamaConfig(head_dim=cfg.head_dim, attention_bias=False, mlp_bias=False, **common)
        return transformers.LlamaForCausalLM(hf_cfg)
    if family == "dream":
        return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    hf_cfg = transformers.Qwen3Config(head_dim=cfg.head_dim, attention_bias=False, **common)
    return transformers.Qwen3ForCausalLM(hf_cfg)


def block_causal_mask(t: int, block: int) -> torch.Tensor:
    """[T, T] bool, True = query i may see key j: j's block is not after i's (grid from position 0)."""
    blocks = torch.arange(t) // block
    return blocks[None, :] <= blocks[:, None]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("family", ["llada", "dream", "sdar"])
@torch.no_grad()
def test_forward_matches_transformers(family):
    ours = scramble_parameters(tiny_model(family, n_layers=2), seed=1)
    cfg = ours.cfg
    state = checkpoint_state_dict(ours)
    if family == "llada":
        state = {llada_to_llama(k): v for k, v in state.items()}
    ref = reference_model(family, cfg).eval()
    ref.load_state_dict(state, strict=True)

    b, t = 2, 11  # 11: the last block of size 4 is partial
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(0))
    allowed = block_causal_mask(t, cfg.block_size) if family == "sdar" else torch.ones(t, t, dtype=torch.bool)
    want = ref(
        input_ids=ids, attention_mask=allowed.expand(b, 1, t, t), position_ids=torch.arange(t).expand(b, t)
    ).logits
    assert rel_err(ours(ids), want) < 1e-4


@torch.no_grad()
def test_rows_in_any_order_with_explicit_positions_match_transformers():
    """The layer-by-layer path with shuffled rows and their absolute positions equals SDAR's reference."""
    ours = scramble_parameters(tiny_model("sdar"), seed=2)
    ref = reference_model("sdar", ours.cfg).eval()
    ref.load_state_dict(checkpoint_state_dict(ours), strict=True)
    t = 10
    ids = torch.randint(0, ours.cfg.vocab_size, (1, t), generator=torch.Generator().manual_seed(3))
    mask = block_causal_mask(t, 4)[None, None]
    want = ref(input_ids=ids, attention_mask=mask, position_ids=torch.arange(t)[None]).logits

    perm = torch.randperm(t, generator=torch.Generator().manual_seed(4))[None]
    pos = perm  # row r holds position perm[r]
    h = ours.embed_rows(ids.gather(1, perm), pos)
    allowed = ours.attention_rule(pos, pos)
    for layer in ours.layers:
        q, k, v = layer.qkv(h, rope_tables(ours.cfg, pos))
        h = h + layer.attn_out(attend(q, k, v, allowed))
        h = h + layer.ffn(h)
    assert rel_err(ours.logits(h), want[:, perm[0]]) < 1e-4


GLM_RENAMES = [
    ("attention.query_layernorm", "self_attn.q_norm"),
    ("attention.key_layernorm", "self_attn.k_norm"),
    ("attention.dense", "self_attn.o_proj"),
    ("mlp.gate.expert_bias", "mlp.gate.e_score_correction_bias"),
]


def llada2_to_glm4_moe(state: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """LLaDA2.0 checkpoint tensors -> transformers' Glm4Moe names, written from both modeling files.

    GLM-4.5's MoE decoder has LLaDA2.0's structure (QK-norm before partial rotate-half RoPE,
    DeepSeek-V3 group-limited sigmoid router with a selection-only bias, shared experts,
    dense first layers). The published LLaDA2.0 attention splits query_key_value as
    [H, G, G] heads, i.e. q rows then k rows then v rows.
    """
    q_rows, kv_rows = cfg.n_heads * cfg.head_dim, cfg.n_kv_heads * cfg.head_dim
    out, experts = {}, {}
    for key, t in state.items():
        key = key.replace("model.word_embeddings.", "model.embed_tokens.")
        if key.endswith("attention.query_key_value.weight"):
            base = key.replace("attention.query_key_value.weight", "self_attn.")
            q, k, v = t.split([q_rows, kv_rows, kv_rows])
            out.update({base + "q_proj.weight": q, base + "k_proj.weight": k, base + "v_proj.weight": v})
        elif m := re.match(r"(model\.layers\.\d+\.mlp)\.experts\.(\d+)\.(\w+)_proj\.weight", key):
            experts.setdefault(m.group(1), {}).setdefault(m.group(3), {})[int(m.group(2))] = t
        else:
            for a, b in GLM_RENAMES:
                key = key.replace(a, b)
            out[key] = t
    for mlp, parts in experts.items():
        stack = {name: torch.stack([parts[name][e] for e in sorted(parts[name])]) for name in parts}
        out[f"{mlp}.experts.gate_up_proj"] = torch.cat([stack["gate"], stack["up"]], dim=1)
        out[f"{mlp}.experts.down_proj"] = stack["down"]
    return out


@torch.no_grad()
def test_llada2_forward_matches_transformers_glm4_moe():
    ours = scramble_parameters(tiny_model("llada2", n_layers=3), seed=8)
    cfg, m = ours.cfg, ours.cfg.moe
    ref_cfg = transformers.Glm4MoeConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, partial_rotary_factor=cfg.rotary_dim / cfg.head_dim, rope_theta=cfg.rope_theta,
        rms_norm_eps=cfg.norm_eps, use_qk_norm=True, attention_bias=False, tie_word_embeddings=False,
        moe_intermediate_size=m.intermediate_size, n_routed_experts=m.n_experts, num_experts_per_tok=m.top_k,
        n_shared_experts=m.n_shared_experts, n_group=m.n_group, topk_group=m.topk_group,
        routed_scaling_factor=m.routed_scaling, norm_topk_prob=True, first_k_dense_replace=m.first_k_dense,
        attn_implementation="sdpa",
    )
    ref = transformers.Glm4MoeForCausalLM(ref_cfg).eval()
    ref.load_state_dict(llada2_to_glm4_moe(checkpoint_state_dict(ours), cfg), strict=True)
    b, t = 2, 10
    ids = torch.randint(0, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(9))
    mask = block_causal_mask(t, cfg.block_size).expand(b, 1, t, t)
    want = ref(input_ids=ids, attention_mask=mask, position_ids=torch.arange(t).expand(b, t)).logits
    assert rel_err(ours(ids), want) < 1e-4


# --------------------------------------------------------------------------- LLaDA2.0 router


def hand_router(**moe_kwargs) -> MoE:
    """An MoE whose router logits equal the input, so sigmoid scores are set by hand: x = logit(s)."""
    kwargs = {"top_k": 2, "routed_scaling": 2.5, "n_shared_experts": 0, **moe_kwargs}
    cfg = MoEConfig(n_experts=8, intermediate_size=4, **kwargs)
    moe = MoE(8, cfg)
    with torch.no_grad():
        moe.router.weight.copy_(torch.eye(8))
    return moe


def logits_of(scores: list[list[float]]) -> torch.Tensor:
    s = torch.tensor(scores, dtype=torch.float64)
    return torch.log(s / (1 - s)).float()


def routed(moe: MoE, scores: list[list[float]]) -> list[dict[int, float]]:
    """Per token: {expert id: weight}."""
    with torch.no_grad():
        ids, weights = moe.route(logits_of(scores))
    return [dict(zip(i.tolist(), w.tolist())) for i, w in zip(ids, weights)]


def assert_routes(got: dict[int, float], want: dict[int, float]) -> None:
    assert set(got) == set(want)
    for e, w in want.items():
        assert math.isclose(got[e], w, rel_tol=1e-5), (e, got[e], w)


# Groups of 2 experts: {0,1} {2,3} {4,5} {6,7}.
GROUPED = [0.9, 0.1, 0.6, 0.55, 0.8, 0.05, 0.3, 0.3]


def test_group_limiting_excludes_a_better_expert_in_a_losing_group():
    # Group scores (sum of top 2): 1.0, 1.15, 0.85, 0.6 -> groups {2,3} and {0,1} survive.
    # Expert 4 (0.8) would be second overall, but its group lost: experts 0 and 2 are chosen.
    moe = hand_router(n_group=4, topk_group=2)
    assert_routes(routed(moe, [GROUPED])[0], {0: 0.9 / 1.5 * 2.5, 2: 0.6 / 1.5 * 2.5})
    # Without groups the plain top-2 wins.
    assert_routes(routed(hand_router(), [GROUPED])[0], {0: 0.9 / 1.7 * 2.5, 4: 0.8 / 1.7 * 2.5})


def test_expert_bias_steers_selection_and_groups_but_not_weights():
    # bias +0.5 on expert 5 lifts group {4,5} to 0.8 + 0.55 = 1.35 > {2,3} 1.15 > {0,1} 1.0:
    # expert 0 (best raw score) drops out with its group; biased top-2 in {2,3,4,5} is 4 (0.8), 2 (0.6).
    moe = hand_router(n_group=4, topk_group=2)
    with torch.no_grad():
        moe.expert_bias[5] = 0.5
    assert_routes(routed(moe, [GROUPED])[0], {4: 0.8 / 1.4 * 2.5, 2: 0.6 / 1.4 * 2.5})


def test_expert_bias_changes_choice_weights_use_unbiased_scores():
    scores = [[0.7, 0.6, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1]]
    moe = hand_router()
    assert_routes(routed(moe, scores)[0], {0: 0.7 / 1.3 * 2.5, 1: 0.6 / 1.3 * 2.5})
    with torch.no_grad():
        moe.expert_bias[2] = 0.3  # biased 0.8: chosen over expert 1; weight from its raw 0.5
    assert_routes(routed(moe, scores)[0], {2: 0.5 / 1.2 * 2.5, 0: 0.7 / 1.2 * 2.5})


def test_single_expert_weight_is_its_score_times_scaling():
    # The published gate normalises only when top_k > 1.
    scores = [[0.2, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]]
    assert_routes(routed(hand_router(top_k=1), scores)[0], {1: 0.7 * 2.5})


@torch.no_grad()
def test_moe_forward_equals_hand_loop_over_chosen_experts():
    tokens = [GROUPED, [0.7, 0.6, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1]]
    chosen = [{0: 0.9 / 1.5 * 2.5, 2: 0.6 / 1.5 * 2.5}, {0: 0.7 / 1.3 * 2.5, 1: 0.6 / 1.3 * 2.5}]  # by hand, as above
    moe = hand_router(n_group=4, topk_group=2, n_shared_experts=1)
    gen = torch.Generator().manual_seed(5)
    for name, p in moe.named_parameters():
        if name != "router.weight" and p.ndim == 2:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    x = logits_of(tokens)

    def swiglu(mlp, v):
        return mlp.w_down.weight @ (torch.nn.functional.silu(mlp.w_gate.weight @ v) * (mlp.w_up.weight @ v))

    want = torch.stack([
        sum(w * swiglu(moe.experts[e], x[n]) for e, w in chosen[n].items()) + swiglu(moe.shared, x[n])
        for n in range(len(tokens))
    ])
    assert torch.allclose(moe(x[None])[0], want, atol=1e-5)


@torch.no_grad()
def test_router_matches_transformers_deepseek_v3_router_on_random_tokens():
    """Ling 2.0's gate is DeepSeek-V3's group-limited sigmoid router (for top_k > 1): compare on random inputs."""
    cfg = MoEConfig(
        n_experts=16, top_k=3, intermediate_size=4, n_shared_experts=0, n_group=4, topk_group=2, routed_scaling=2.5
    )
    moe = MoE(12, cfg)
    gen = torch.Generator().manual_seed(7)
    moe.router.weight.copy_(torch.randn(16, 12, generator=gen))
    moe.expert_bias.copy_(0.3 * torch.randn(16, generator=gen))
    ref_cfg = transformers.DeepseekV3Config(
        hidden_size=12, n_routed_experts=16, num_experts_per_tok=3, n_group=4, topk_group=2,
        routed_scaling_factor=2.5, norm_topk_prob=True,
    )
    ref = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3TopkRouter(ref_cfg)
    ref.weight.copy_(moe.router.weight)
    ref.e_score_correction_bias.copy_(moe.expert_bias)
    x = torch.randn(64, 12, generator=gen)
    ids, weights = moe.route(x)
    _, ref_weights, ref_ids = ref(x)
    order, ref_order = ids.argsort(-1), ref_ids.argsort(-1)
    assert torch.equal(ids.gather(1, order), ref_ids.gather(1, ref_order))
    assert torch.allclose(weights.gather(1, order), ref_weights.gather(1, ref_order), atol=1e-6)
