"""Family modules against the published metadata of the real checkpoints (no weights needed)."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from focuslib.families import FAMILIES, config_from_hf, get_family
from focuslib.loading import load_tokenizer, read_config
from focuslib.model import Transformer
from focuslib.testing import FAMILY_NAMES, tiny_config

REF = Path(__file__).parent / "data" / "reference-checkpoints"  # published metadata of the real checkpoints

WITH_WEIGHT_MAP = ["llada-8b-instruct", "dream-v0-instruct-7b", "sdar-8b-chat"]


def expected_names(cfg, n_layers: int = 2) -> set[str]:
    """Checkpoint keys our mapping produces for the config shrunk to n_layers (meta device: no memory)."""
    with torch.device("meta"):
        model = Transformer(dataclasses.replace(cfg, n_layers=n_layers))
    return set(get_family(cfg.family).plan(dict(model.named_parameters())))


def published_names(folder: str, n_layers: int = 2) -> set[str]:
    weight_map = json.loads((REF / folder / "model.safetensors.index.json").read_text())["weight_map"]
    layer = re.compile(r"\.(?:blocks|layers)\.(\d+)\.")
    return {k for k in weight_map if not (m := layer.search(k)) or int(m.group(1)) < n_layers}


@pytest.mark.parametrize("folder", WITH_WEIGHT_MAP)
def test_key_map_consumes_exactly_the_published_weight_map(folder):
    cfg = read_config(REF / folder)
    assert expected_names(cfg) == published_names(folder)


def test_llada2_key_map_matches_published_layout():
    # No weight map is published with the config; these names follow inclusionAI's
    # modeling_llada2_moe.py: layer 0 dense (first_k_dense_replace=1), later layers MoE.
    cfg = read_config(REF / "llada2-mini")
    layer0 = [f"attention.{n}.weight" for n in ("query_key_value", "query_layernorm", "key_layernorm", "dense")]
    layer0 += ["input_layernorm.weight", "post_attention_layernorm.weight"]
    mlp = [f"{p}_proj.weight" for p in ("gate", "up", "down")]
    want = {"model.word_embeddings.weight", "model.norm.weight", "lm_head.weight"}
    for i in (0, 1):
        want |= {f"model.layers.{i}.{n}" for n in layer0}
    want |= {f"model.layers.0.mlp.{n}" for n in mlp}
    want |= {"model.layers.1.mlp.gate.weight", "model.layers.1.mlp.gate.expert_bias"}
    want |= {f"model.layers.1.mlp.experts.{e}.{n}" for e in range(256) for n in mlp}
    want |= {f"model.layers.1.mlp.shared_experts.{n}" for n in mlp}
    assert expected_names(cfg) == want


def test_llada_config_parses_to_published_values():
    cfg = read_config(REF / "llada-8b-instruct")
    assert (cfg.family, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads) == ("llada", 32, 4096, 32, 32)
    assert cfg.head_dim == 128
    assert (cfg.vocab_size, cfg.intermediate_size, cfg.rope_theta, cfg.norm_eps) == (126464, 12288, 500000.0, 1e-5)
    assert (cfg.mask_id, cfg.pad_id, set(cfg.eos_ids)) == (126336, 126081, {126081, 126348})
    assert cfg.attention == "full" and not cfg.logit_shift and not cfg.qkv_bias and not cfg.tie_embeddings
    assert cfg.answer_offset_embeddings == 0


def test_dream_config_parses_to_published_values():
    cfg = read_config(REF / "dream-v0-instruct-7b")
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (28, 3584, 28, 4, 128)
    assert cfg.logit_shift and cfg.qkv_bias and not cfg.qk_norm and cfg.attention == "full"
    assert (cfg.mask_id, cfg.rope_theta, cfg.vocab_size) == (151666, 1e6, 152064)
    assert cfg.eos_ids[0] == 151643 and 151645 in cfg.eos_ids  # <|endoftext|>, <|im_end|>


def test_sdar_config_parses_to_published_values():
    cfg = read_config(REF / "sdar-8b-chat")
    assert (cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim) == (36, 4096, 32, 8, 128)
    assert cfg.qk_norm and not cfg.qkv_bias and not cfg.logit_shift
    assert (cfg.attention, cfg.block_size, cfg.mask_id) == ("block_causal", 4, 151669)
    assert set(cfg.eos_ids) == {151643, 151645}  # config.json + generation_config.json


@pytest.mark.parametrize("model_type", ["llada2_moe_veomni", "llada2_moe"])
def test_llada2_config_parses_to_published_values(model_type):
    hf = {**json.loads((REF / "llada2-mini" / "config.json").read_text()), "model_type": model_type}
    cfg = config_from_hf(hf)
    m = cfg.moe
    assert (cfg.family, cfg.n_layers, cfg.dim, cfg.n_heads, cfg.n_kv_heads) == ("llada2", 20, 2048, 16, 4)
    assert cfg.head_dim == 128
    assert (cfg.rotary_dim, cfg.rope_theta, cfg.qk_norm, cfg.qkv_bias) == (64, 600000.0, True, False)
    assert (m.n_experts, m.top_k, m.intermediate_size, m.n_shared_experts) == (256, 8, 512, 1)
    assert (m.n_group, m.topk_group, m.routed_scaling, m.norm_topk_prob, m.first_k_dense) == (8, 4, 2.5, True, 1)
    assert (cfg.attention, cfg.block_size, cfg.mask_id, cfg.eos_ids) == ("block_causal", 32, 156895, (156892,))
    assert config_from_hf({**hf, "block_size": 8}).block_size == 8  # focuslib override key


@pytest.mark.parametrize("folder", WITH_WEIGHT_MAP + ["llada2-mini"])
def test_real_config_survives_our_writer(folder):
    """Writing a real config back in the family format and re-reading gives the same ModelConfig."""
    cfg = read_config(REF / folder)
    assert config_from_hf(get_family(cfg.family).config_to_hf(cfg)) == cfg


def test_unknown_model_type_names_it_and_lists_known_ones():
    with pytest.raises(ValueError, match="gpt_bogus") as err:
        config_from_hf({"model_type": "gpt_bogus"})
    for known in ("llada", "Dream", "sdar", "llada2_moe"):
        assert known in str(err.value)
    assert set(FAMILIES) == {"llada", "Dream", "sdar", "llada2_moe", "llada2_moe_veomni"}


def test_unsupported_architecture_switch_is_refused():
    hf = get_family("llada").config_to_hf(tiny_config("llada"))
    with pytest.raises(ValueError, match="include_bias"):
        config_from_hf({**hf, "include_bias": True})


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_writer_refuses_what_the_format_cannot_express(family):
    # Only LLaDA2.0's format has partial rotary; only Dream's shifts logits.
    odd = {"llada2": dict(logit_shift=True)}.get(family, dict(rotary_dim=4))
    with pytest.raises(ValueError, match="cannot express"):
        get_family(family).config_to_hf(tiny_config(family, **odd))


def test_real_sdar_tokenizer_gives_published_special_ids():
    tok = load_tokenizer(REF / "sdar-8b-chat")
    added = json.loads((REF / "sdar-8b-chat" / "added_tokens.json").read_text())
    cfg = read_config(REF / "sdar-8b-chat")
    assert tok.mask_token_id == cfg.mask_id == 151669
    assert tok.eos_token_id == 151643 and tok.pad_token_id == 151643
    assert tok.convert_tokens_to_ids("<|im_end|>") == 151645
    # added_tokens.json spells the mask "<MASK>", tokenizer_config.json "<|MASK|>"; same id.
    assert added["<MASK>"] == tok.convert_tokens_to_ids("<|MASK|>") == 151669
    others = {t: i for t, i in added.items() if t != "<MASK>"}
    assert {t: tok.convert_tokens_to_ids(t) for t in others} == others
    assert tok.encode("a<|MASK|>b", add_special_tokens=False).count(151669) == 1
