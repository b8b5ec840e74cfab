"""Masked-diffusion training recipe (focuslib.training): loss, masks, batches, a tiny run end to end."""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from focuslib.model import Transformer
from focuslib.training import (
    EOS_ID, MASK_ID, PAD_ID, ModelSpec, TrainConfig, Trainer, block_diffusion_mask, build_tokenizer,
    diffusion_logits, diffusion_loss, encode_pairs, forward_with_mask, make_batch, mask_answer, sample_t,
)

TINY = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, intermediate_size=64,
            block_size=4, answer_offset_embeddings=8, max_positions=64)


# --------------------------------------------------------------------------- loss


def _logits_from_probs(probs: list[list[list[float]]]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probabilities (log p)."""
    return torch.tensor(probs, dtype=torch.float64).log()


def test_diffusion_loss_hand_computed():
    # two sequences of 3 positions, vocab 3; position 0 is prompt in both
    probs = [
        [[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]],
        [[0.3, 0.3, 0.4], [0.6, 0.3, 0.1], [0.25, 0.25, 0.5]],
    ]
    targets = torch.tensor([[0, 1, 2], [2, 0, 1]])
    masked = torch.tensor([[False, True, True], [False, True, False]])
    answer = torch.tensor([[False, True, True], [False, True, True]])
    t = torch.tensor([0.5, 0.25], dtype=torch.float64)
    # row 0: masked targets 1 (p=0.5) and 2 (p=0.8), weight 1/0.5, 2 answer tokens
    row0 = (-math.log(0.5) - math.log(0.8)) / 0.5 / 2
    # row 1: masked target 0 at position 1 (p=0.6), weight 1/0.25, 2 answer tokens
    row1 = -math.log(0.6) / 0.25 / 2
    expected = (row0 + row1) / 2
    got = diffusion_loss(_logits_from_probs(probs), targets, masked, t, answer)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_diffusion_loss_ignores_prompt_and_unmasked_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 6, 5, generator=gen)
    targets = torch.randint(0, 5, (2, 6), generator=gen)
    answer = torch.tensor([[False, False, True, True, True, True]] * 2)
    masked = answer & torch.tensor([[True, False] * 3, [False, True] * 3])
    t = torch.tensor([0.3, 0.9])
    base = diffusion_loss(logits, targets, masked, t, answer)
    changed = logits.clone()
    changed[:, :2] = torch.randn(2, 2, 5, generator=gen) * 100  # prompt logits
    changed[:, :2, 0] = float("inf")
    changed[~masked & answer] += 7.0  # unmasked answer logits
    assert torch.equal(diffusion_loss(changed, targets, masked, t, answer), base)
    # a masked flag on a prompt position is ignored too (answer gates the weight)
    assert torch.equal(diffusion_loss(logits, targets, masked | ~answer, t, answer), base)


# --------------------------------------------------------------------------- masks and noise


def test_block_diffusion_mask_entries():
    T, bs = 8, 4
    m = block_diffusion_mask(T, bs)
    assert m.shape == (16, 16) and m.dtype == torch.bool
    noisy_b1 = T + 5  # a noisy token of block 1 (positions 4..7)
    assert m[noisy_b1, 0:4].all()  # sees clean block 0
    assert not m[noisy_b1, 4:8].any()  # not its own block's clean tokens
    assert m[noisy_b1, T + 4 : T + 8].all()  # sees its own noisy block
    assert not m[noisy_b1, T : T + 4].any()  # not the noisy block 0
    noisy_b0 = T + 1
    assert not m[noisy_b0, :T].any() and m[noisy_b0, T : T + 4].all() and not m[noisy_b0, T + 4 :].any()
    # clean tokens: block-causal among clean, never noisy
    assert m[2, 0:4].all() and not m[2, 4:8].any() and not m[2, T:].any()
    assert m[6, 0:8].all() and not m[6, T:].any()
    # full structure: clean->clean block lower-triangular, noisy->clean strictly, noisy->noisy diagonal
    blk = torch.arange(T) // bs
    assert torch.equal(m[:T, :T], blk[None] <= blk[:, None])
    assert torch.equal(m[T:, :T], blk[None] < blk[:, None])
    assert torch.equal(m[T:, T:], blk[None] == blk[:, None])


def test_sample_t_is_stratified():
    t = sample_t(8, eps=1e-3, generator=torch.Generator().manual_seed(1))
    strata = ((t - 1e-3) / (1 - 1e-3) * 8).floor().long()
    assert torch.equal(strata, torch.arange(8))
    assert (t > 1e-3).all() and (t <= 1).all()


def test_masking_never_touches_prompt_or_padding():
    tok = build_tokenizer()
    pairs = encode_pairs(tok, ["3+5-2=", "sort 3,1,2=", "rev water="], ["6", "1,2,3", "retaw"])
    batch = make_batch(pairs, gen_length=8)
    gen = torch.Generator().manual_seed(0)
    for t_value in (0.3, 1.0):
        t = torch.full((3,), t_value)
        for _ in range(20):
            noisy, masked = mask_answer(batch.ids, batch.answer, t, gen)
            assert torch.equal(noisy[~batch.answer], batch.ids[~batch.answer])
            assert not masked[~batch.answer].any()
            assert torch.equal(masked, noisy == MASK_ID)
    assert masked.sum() == batch.answer.sum()  # t = 1 masks the whole answer region


def test_make_batch_layout():
    tok = build_tokenizer()
    pairs = encode_pairs(tok, ["1+2=", "rev abc="], ["3", "cba"])
    b = make_batch(pairs, gen_length=5, seq_len=16)
    assert b.prompt_len.tolist() == [4, 8]
    row = b.ids[0].tolist()
    assert tok.decode(row[:5]) == "1+2=3" and row[5:9] == [EOS_ID] * 4 and row[9:] == [PAD_ID] * 7
    assert b.answer[0].nonzero().flatten().tolist() == [4, 5, 6, 7, 8]
    assert b.valid.sum(1).tolist() == [9, 13]
    assert tok.decode(b.ids[1, 8:11].tolist()) == "cba"
    with pytest.raises(ValueError):
        make_batch(pairs, gen_length=3)  # "cba" + <eos> needs 4


# --------------------------------------------------------------------------- forward equivalences


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_training_forward_matches_reference_path(family):
    torch.manual_seed(0)
    model = Transformer(ModelSpec(family=family, **TINY).build(48)).init_weights(0.2, seed=1).eval()
    tok = build_tokenizer()
    batch = make_batch(encode_pairs(tok, ["3+5-2=", "sort 3,1,2="], ["6", "1,2,3"]), gen_length=8)
    noisy, _ = mask_answer(batch.ids, batch.answer, torch.tensor([0.5, 0.9]), torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = diffusion_logits(model, batch, noisy)
        if family == "llada":
            ref = model(noisy, answer_start=batch.prompt_len, key_valid=batch.valid)
            torch.testing.assert_close(logits[batch.valid], ref[batch.valid], atol=1e-5, rtol=1e-5)
            return
        # block k of the noisy copy = the reference path on [clean blocks < k, noisy block k]
        bs = model.cfg.block_size
        for k in range(batch.ids.shape[1] // bs + 1):
            lo, hi = k * bs, min((k + 1) * bs, batch.ids.shape[1])
            if lo >= hi:
                continue
            x = torch.cat([batch.ids[:, :lo], noisy[:, lo:hi]], 1)
            ref = model(x, answer_start=batch.prompt_len, key_valid=batch.valid[:, :hi])
            v = batch.valid[:, lo:hi]
            torch.testing.assert_close(logits[:, lo:hi][v], ref[:, lo:][v], atol=1e-5, rtol=1e-5)


def test_forward_with_mask_matches_model_forward():
    model = Transformer(ModelSpec(family="sdar", **TINY).build(48)).init_weights(0.2, seed=2).eval()
    ids = torch.randint(4, 48, (2, 12))
    pos = torch.arange(12).expand(2, 12)
    start = torch.tensor([3, 5])
    with torch.no_grad():
        ours = forward_with_mask(model, ids, pos, model.attention_rule(pos, pos), start)
        torch.testing.assert_close(ours, model(ids, answer_start=start), atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- tokenizer and a tiny run


def test_tokenizer_round_trip():
    from focuslib.tasks import CHARSET

    tok = build_tokenizer()
    assert [tok.token_to_id(s) for s in ("<pad>", "<eos>", "<mask>")] == [PAD_ID, EOS_ID, MASK_ID]
    text = "sort 3,1,2= rev water= 47+38-2*3="
    ids = tok.encode(text).ids
    assert len(ids) == len(text) and tok.decode(ids) == text
    assert set(tok.encode(CHARSET).ids) == set(range(4, 4 + len(CHARSET)))


def _tiny_cfg(tmp_path: Path, family: str, **kw) -> TrainConfig:
    base = dict(
        model=ModelSpec(family=family, **TINY), task="mix", n_train=64, n_val=8, gen_length=12, batch_size=8,
        max_steps=5, warmup_steps=2, time_budget_min=5.0, run_dir=str(tmp_path / "run"), progress=False,
        snapshot_every_min=0.0, export_dir=str(tmp_path / "export"), log_every=1,
    )
    return TrainConfig(**{**base, **kw})


def test_init_from_an_exported_checkpoint_starts_from_its_weights(tmp_path):
    """init_from a checkpoint directory (a bundled model): the run starts from the exported weights."""
    from focuslib.loading import load_model

    Trainer(_tiny_cfg(tmp_path / "src", "sdar")).run()
    exported = load_model(tmp_path / "src" / "export")[0]
    trainer = Trainer(_tiny_cfg(tmp_path, "sdar", export_dir=None, init_from=str(tmp_path / "src" / "export")))
    assert trainer.state.step == 0
    ids, start = torch.randint(4, 20, (3, 10)), torch.tensor([3, 4, 5])
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(ids, answer_start=start), exported(ids, answer_start=start))


@pytest.mark.parametrize("family", ["llada", "sdar"])
def test_tiny_training_run_exports_loadable_checkpoint(tmp_path, family):
    from focuslib.loading import load_model

    Trainer(_tiny_cfg(tmp_path, family)).run()
    model, tok = load_model(tmp_path / "export")
    assert model.cfg.family == family and model.cfg.answer_offset_embeddings == 8
    assert model.cfg.mask_id == MASK_ID and model.cfg.eos_ids == (EOS_ID,)
    ids = torch.tensor([tok.encode("3+4=", add_special_tokens=False) + [MASK_ID] * 4])
    logits = model(ids, answer_start=torch.tensor([4]))
    assert logits.shape == (1, 8, model.cfg.vocab_size) and torch.isfinite(logits).all()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 5 and all(math.isfinite(v) for v in losses)
    assert any(r.get("event") == "val" for r in records)

    decoder_mod = pytest.importorskip("focuslib.decoder")
    from focuslib.policies.unmasking import LowConfidence

    out = decoder_mod.DiffusionDecoder(model, LowConfidence(), tokenizer=tok).generate(["3+4="], gen_length=8, steps=8)
    assert len(out.sequences) == 1 and len(out.sequences[0]) <= 8 and isinstance(out.text[0], str)


def test_resume_continues_step_and_optimizer(tmp_path):
    Trainer(_tiny_cfg(tmp_path, "llada", max_steps=3, export_dir=None)).run()
    blob = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert blob["state"]["step"] == 3 and blob["optimizer"]["state"]
    trainer = Trainer(_tiny_cfg(tmp_path, "llada", max_steps=5, export_dir=None, resume=True))
    assert trainer.state.step == 3
    torch.testing.assert_close(trainer.model.state_dict(), blob["model"])
    trainer.run()
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["state"]["step"] == 5


def test_compact_resume_snapshot_continues_on_a_fresh_machine(tmp_path):
    """The committed snapshot (fp32 weights, bf16 second moments) resumes a run whose run dir is gone."""
    snapshot = tmp_path / "resume" / "snap.pt"
    Trainer(_tiny_cfg(tmp_path, "sdar", max_steps=3, export_dir=None, resume_snapshot=str(snapshot))).run()
    full = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    compact = torch.load(snapshot, weights_only=False)
    assert compact["compact"] and snapshot.stat().st_size < 0.75 * (tmp_path / "run" / "last.pt").stat().st_size
    (tmp_path / "run" / "last.pt").unlink()  # a fresh machine: only the committed snapshot is left
    trainer = Trainer(_tiny_cfg(tmp_path, "sdar", max_steps=5, export_dir=None, resume=True,
                                resume_snapshot=str(snapshot)))
    assert trainer.state.step == 3
    torch.testing.assert_close(trainer.model.state_dict(), full["model"])
    for k, v in trainer.optimizer.state_dict()["state"].items():
        assert not v["exp_avg"].any()  # first moments restart from zero
        torch.testing.assert_close(v["exp_avg_sq"], full["optimizer"]["state"][k]["exp_avg_sq"], rtol=1e-2, atol=0)
    trainer.run()
    assert torch.load(snapshot, weights_only=False)["state"]["step"] == 5


def test_init_from_a_shallower_run_grows_it_without_changing_its_function(tmp_path):
    """init_from: the source's layers first, the added layers start as identities -- same logits -- then train."""
    from focuslib.training import grow_into

    Trainer(_tiny_cfg(tmp_path / "src", "sdar", max_steps=2, export_dir=None)).run()
    source = tmp_path / "src" / "run" / "last.pt"
    deep = replace(ModelSpec(family="sdar", **TINY), n_layers=4)
    trainer = Trainer(_tiny_cfg(tmp_path, "sdar", model=deep, export_dir=None, resume=True, init_from=str(source)))
    assert trainer.state.step == 0  # fresh optimizer and clock, not a resume of the source
    shallow = Trainer(_tiny_cfg(tmp_path / "src", "sdar", export_dir=None, resume=True)).model
    ids, start = torch.randint(4, 20, (3, 10)), torch.tensor([3, 4, 5])
    with torch.no_grad():
        torch.testing.assert_close(trainer.model(ids, answer_start=start), shallow(ids, answer_start=start))
        assert trainer.model.layers[3].attn.wq.weight.abs().sum() > 0  # random, only the outputs are zeroed
    trainer.run()
    with torch.no_grad():
        assert trainer.model.layers[3].attn.wo.weight.abs().sum() > 0  # the added layers learn
    resumed = Trainer(_tiny_cfg(tmp_path, "sdar", model=deep, export_dir=None, resume=True, init_from=str(source),
                                max_steps=6))
    assert resumed.state.step == 5  # later sessions resume the grown run, not the source
    with pytest.raises(ValueError, match="more than the model's"):
        grow_into(shallow, trainer.model.state_dict())
    wide = Transformer(replace(deep, dim=64, head_dim=16).build(shallow.cfg.vocab_size))
    with pytest.raises(ValueError, match="embed.weight"):
        grow_into(wide, shallow.state_dict())


def test_hydra_presets_compose():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import focuslib.experiments.train  # noqa: F401  (registers train_schema)

    conf_dir = str(Path(__file__).resolve().parents[1] / "experiments" / "train_conf")
    presets = {}
    for preset, family in (("tiny_llada", "llada"), ("tiny_sdar", "sdar"), ("tiny_sdar_b32", "sdar"),
                           ("tiny_sdar_b32_long", "sdar"), ("walk_lookup", "sdar")):
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            cfg = compose("train", overrides=[f"train={preset}", "run_dir=/tmp/x", "time_budget_min=1"])
        obj = presets[preset] = OmegaConf.to_object(cfg)
        assert isinstance(obj, TrainConfig) and obj.model.family == family and obj.time_budget_min == 1
    # the two-stage recipe: tiny_sdar_b32 starts from walk_lookup's run, a model it can grow into
    stage1, stage2 = presets["walk_lookup"], presets["tiny_sdar_b32"]
    assert stage2.init_from == f"outputs/train/{stage1.run_name}/last.pt" and stage2.model.n_layers == 8
    from focuslib.training import grow_into

    vocab = 48
    source = Transformer(stage1.model.build(vocab)).state_dict()
    grow_into(Transformer(stage2.model.build(vocab)), source)
    # stage 3 continues stage 2's run: the same architecture, longer positions only
    stage3 = presets["tiny_sdar_b32_long"]
    assert stage3.init_from == f"outputs/train/{stage2.run_name}/last.pt"
    assert replace(stage3.model, max_positions=stage2.model.max_positions) == stage2.model
    with initialize_config_dir(config_dir=conf_dir, version_base=None), pytest.raises(Exception):
        compose("train", overrides=["no_such_field=1"])
