"""Checkpoint saving and loading: round trips, shards, and clear errors for broken checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from focuslib import loading
from focuslib.loading import load_model, load_tokenizer, save_checkpoint
from focuslib.testing import (
    FAMILY_NAMES, TINY_EOS, TINY_MASK, scramble_parameters, tiny_char_tokenizer, tiny_model, write_tiny_checkpoint,
)

IDS = torch.tensor([[5, 9, 2, 63, 63, 7, 1, 30, 11], [3, 3, 62, 0, 63, 12, 14, 40, 8]])


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path / "model.safetensors", framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def rewrite(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, path / "model.safetensors")


@pytest.mark.parametrize("family", FAMILY_NAMES)
@torch.no_grad()
def test_round_trip_gives_identical_logits(tmp_path, family):
    model = scramble_parameters(tiny_model(family), seed=3)
    save_checkpoint(model, tmp_path, dtype=torch.float32)
    loaded, tokenizer = load_model(tmp_path)
    assert tokenizer is None  # no tokenizer files written
    assert loaded.cfg == model.cfg and not loaded.training
    assert torch.equal(loaded(IDS), model(IDS))
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "float32"


@torch.no_grad()
def test_round_trip_with_tied_embeddings_and_offset_embeddings(tmp_path):
    model = scramble_parameters(tiny_model("sdar", tie_embeddings=True, answer_offset_embeddings=6), seed=4)
    save_checkpoint(model, tmp_path, dtype=torch.float32)
    keys = set(read_tensors(tmp_path))
    assert "lm_head.weight" not in keys and "model.offset_embed.weight" in keys
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf["tie_word_embeddings"] is True and hf["answer_offset_embeddings"] == 6
    loaded, _ = load_model(tmp_path)
    assert loaded.lm_head.weight is loaded.embed.weight
    start = torch.tensor([3, 5])
    assert torch.equal(loaded(IDS, answer_start=start), model(IDS, answer_start=start))


@torch.no_grad()
def test_bfloat16_checkpoint_loads_as_float32_on_cpu_by_default(tmp_path):
    model = tiny_model("llada2")
    save_checkpoint(model, tmp_path)  # default dtype bfloat16
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        assert f.get_tensor("model.word_embeddings.weight").dtype == torch.bfloat16
    assert load_model(tmp_path)[0].embed.weight.dtype == torch.float32
    assert load_model(tmp_path, dtype="auto")[0].embed.weight.dtype == torch.bfloat16
    assert load_model(tmp_path, dtype=torch.bfloat16)[0].lm_head.weight.dtype == torch.bfloat16


@torch.no_grad()
def test_sharded_checkpoint_loads_like_a_single_file(tmp_path):
    single = tmp_path / "single"
    model = scramble_parameters(tiny_model("llada2"), seed=5)
    save_checkpoint(model, single, dtype=torch.float32)
    tensors = read_tensors(single)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text((single / "config.json").read_text())
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[::2], names[1::2])):  # interleave so both shards hold every kind
        file = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, sharded / file)
        weight_map.update(dict.fromkeys(part, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded, _ = load_model(sharded)
    assert torch.equal(loaded(IDS), model(IDS))


def test_missing_key_is_named(tmp_path):
    write_tiny_checkpoint(tmp_path, "sdar")
    tensors = read_tensors(tmp_path)
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    rewrite(tmp_path, tensors)
    with pytest.raises(ValueError, match=r"missing keys: model\.layers\.1\.self_attn\.k_norm\.weight"):
        load_model(tmp_path)


def test_unexpected_key_is_named(tmp_path):
    write_tiny_checkpoint(tmp_path, "dream")
    tensors = read_tensors(tmp_path)
    tensors["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(32)
    rewrite(tmp_path, tensors)
    with pytest.raises(ValueError, match=r"unexpected keys: model\.layers\.0\.self_attn\.o_proj\.bias"):
        load_model(tmp_path)


def test_many_missing_keys_are_counted(tmp_path):
    write_tiny_checkpoint(tmp_path, "llada2")
    tensors = {k: v for k, v in read_tensors(tmp_path).items() if ".experts." not in k}
    rewrite(tmp_path, tensors)
    with pytest.raises(ValueError, match=r"missing keys: .*\(24 in all\)"):  # 8 experts x 3 matrices
        load_model(tmp_path)


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    write_tiny_checkpoint(tmp_path, "llada2")
    tensors = read_tensors(tmp_path)
    key = "model.layers.0.attention.query_key_value.weight"  # fused: (4 + 2 + 2) heads x 8 = 64 rows
    assert list(tensors[key].shape) == [64, 32]
    tensors[key] = tensors[key][:48]
    rewrite(tmp_path, tensors)
    with pytest.raises(ValueError, match=r"query_key_value\.weight: checkpoint \[48, 32\], model expects \[64, 32\]"):
        load_model(tmp_path)


def test_fused_qkv_is_q_then_k_then_v_rows(tmp_path):
    model = scramble_parameters(tiny_model("llada2"), seed=6)
    save_checkpoint(model, tmp_path, dtype=torch.float32)
    fused = read_tensors(tmp_path)["model.layers.1.attention.query_key_value.weight"]
    attn = model.layers[1].attn
    assert torch.equal(fused[:32], attn.wq.weight) and torch.equal(fused[32:48], attn.wk.weight)
    assert torch.equal(fused[48:], attn.wv.weight)


def test_bare_name_resolves_to_bundled_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(loading, "BUNDLED_DIR", tmp_path)
    write_tiny_checkpoint(tmp_path / "tiny-llada", "llada")
    assert loading.bundled_checkpoints() == ["tiny-llada"]
    assert load_model("tiny-llada")[0].cfg.family == "llada"
    with pytest.raises(ValueError, match=r"'tiny-nothing'.*tiny-llada"):
        load_model("tiny-nothing")


def test_directory_without_checkpoint_files_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    write_tiny_checkpoint(tmp_path, "sdar")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)


def test_config_missing_a_required_field_is_named(tmp_path):
    write_tiny_checkpoint(tmp_path, "sdar")
    hf = json.loads((tmp_path / "config.json").read_text())
    del hf["num_attention_heads"]
    (tmp_path / "config.json").write_text(json.dumps(hf))
    with pytest.raises(ValueError, match="num_attention_heads"):
        load_model(tmp_path)


def test_tokenizer_is_none_without_tokenizer_files(tmp_path):
    write_tiny_checkpoint(tmp_path, "llada")
    (tmp_path / "tokenizer_config.json").write_text("{}")  # config alone is not a tokenizer
    assert load_tokenizer(tmp_path) is None


def test_raw_char_tokenizer_round_trips_with_special_tokens(tmp_path):
    raw = tiny_char_tokenizer()
    write_tiny_checkpoint(tmp_path, "sdar", tokenizer=raw)
    _, tok = load_model(tmp_path)
    assert (tok.mask_token_id, tok.eos_token_id, tok.pad_token_id) == (TINY_MASK, TINY_EOS, TINY_EOS)
    text = "12+30=42"
    ids = tok.encode(text + "<|mask|>", add_special_tokens=False)
    assert ids == raw.encode(text).ids + [TINY_MASK]
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_save_refuses_config_overrides_that_do_not_parse(tmp_path):
    with pytest.raises(ValueError, match="unknown model_type"):
        save_checkpoint(tiny_model("llada"), tmp_path, extra_config={"model_type": "bogus"})
    assert not (tmp_path / "model.safetensors").exists()
