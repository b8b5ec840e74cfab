"""Nothing silently wrong: every bad input fails loudly with a message naming what is wrong.

Checkpoints (non-finite weights, corrupt files, device, special ids), decoding (non-finite
logits, prompts the tokenizer cannot encode, argument types), traces, the config checks
(the decoder's own request rules before any weights load, unknown keys) and the apps
(message only, no traceback; the report lists what it left out). Tiny models, fast.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file, save_file

from focuslib import DiffusionDecoder, load_model, load_trace, save_trace
from focuslib.loading import CheckpointError, read_config, save_checkpoint
from focuslib.requests import encode_prompts
from focuslib.testing import TINY_VOCAB, tiny_char_tokenizer, tiny_model, write_tiny_checkpoint
from focuslib.trace import COLUMNS
from focuslib.policies.budget import FixedBudget, FocusBudget
from focuslib.policies.unmasking import POLICIES, LowConfidence, Threshold

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
NAN = float("nan")


# --------------------------------------------------------------------------- 1. non-finite weights


def _corrupt(path: Path, key: str, how) -> None:
    """Rewrite one tensor of path/model.safetensors in place."""
    tensors = load_file(path / "model.safetensors")
    how(tensors[key])
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


@pytest.fixture
def sdar_ckpt(tmp_path: Path) -> Path:
    return save_checkpoint(tiny_model("sdar"), tmp_path / "ckpt", dtype=torch.float32)


def test_one_nan_weight_is_refused_naming_the_tensor(sdar_ckpt):
    key = "model.layers.1.self_attn.q_proj.weight"  # the real SDAR (Qwen3) key name
    _corrupt(sdar_ckpt, key, lambda t: t.view(-1).__setitem__(5, NAN))
    with pytest.raises(CheckpointError, match=rf"checkpoint tensor '{key}' in .*model.safetensors holds 1 non-finite "
                                              r"value\(s\) \(NaN or Inf\) of 1024: the checkpoint is corrupt"):
        load_model(sdar_ckpt)


def test_all_nan_embeddings_are_refused(sdar_ckpt):
    key = "model.embed_tokens.weight"
    _corrupt(sdar_ckpt, key, lambda t: t.fill_(NAN))
    with pytest.raises(CheckpointError, match=rf"'{key}' .* holds {TINY_VOCAB * 32} non-finite"):
        load_model(sdar_ckpt)


def test_check_finite_false_skips_the_check(sdar_ckpt):
    _corrupt(sdar_ckpt, "model.norm.weight", lambda t: t.__setitem__(0, float("inf")))
    with pytest.raises(CheckpointError, match="'model.norm.weight'.*check_finite=False"):
        load_model(sdar_ckpt)
    model, _ = load_model(sdar_ckpt, check_finite=False)  # the opt-out for very large checkpoints
    assert math.isinf(model.norm.weight[0].item())


def test_values_that_overflow_the_load_dtype_are_named(sdar_ckpt):
    _corrupt(sdar_ckpt, "model.layers.0.mlp.up_proj.weight", lambda t: t.view(-1).__setitem__(0, 1e6))
    with pytest.raises(CheckpointError, match=r"'model.layers.0.mlp.up_proj.weight' .* overflows torch.float16"):
        load_model(sdar_ckpt, dtype=torch.float16)
    assert load_model(sdar_ckpt)[0].cfg.family == "sdar"  # finite in float32


# --------------------------------------------------------------------------- 2. non-finite logits in generate


def test_non_finite_logits_name_the_step_and_the_sequences(sdar_ckpt):
    model, _ = load_model(sdar_ckpt)  # the load checks pass; the weights go bad afterwards
    with torch.no_grad():
        model.embed.weight[7] = NAN  # only prompts holding token 7 are affected
    decoder = DiffusionDecoder(model, Threshold(0.9))
    with pytest.raises(FloatingPointError, match=r"step 0: the model's logits are not finite \(NaN or Inf\) for "
                                                 r"sequences \[1, 3\] of the batch"):
        decoder.generate([[3, 4, 5], [3, 7, 5], [4, 4], [7]], gen_length=8)
    assert len(decoder.generate([[3, 4, 5], [4, 4]], gen_length=8).sequences) == 2  # the others decode


def test_nan_lm_head_names_every_sequence(sdar_ckpt):
    model, _ = load_model(sdar_ckpt)
    with torch.no_grad():
        model.lm_head.weight.fill_(NAN)
    with pytest.raises(FloatingPointError, match=r"step 0: .* sequences \[0, 1\]"):
        DiffusionDecoder(model, LowConfidence()).generate([[3, 4], [5]], gen_length=8, steps=8)


# --------------------------------------------------------------------------- 3. characters the tokenizer cannot encode


@pytest.fixture(scope="module")
def bundled():
    return load_model("tiny-sdar")


@pytest.mark.parametrize("prompts,match", [
    (["rev café="], r"prompt 0 \('rev café='\) has characters the tokenizer cannot encode: 'é'"),
    (["sort 3,1,2=", "Sort 3,1,2="], r"prompt 1 .* cannot encode: 'S'"),
    (["rev fun😀="], r"prompt 0 .* cannot encode: '😀'"),
    (["What is 2+2?"], r"prompt 0 .* cannot encode: 'W', '\?'"),
])
def test_unknown_characters_are_named(bundled, prompts, match):
    model, tok = bundled
    with pytest.raises(ValueError, match=match + r".*allow_unk=True"):
        DiffusionDecoder(model, Threshold(0.9), tokenizer=tok).generate(prompts, gen_length=8)


def test_allow_unk_decodes_anyway(bundled):
    model, tok = bundled
    out = DiffusionDecoder(model, Threshold(0.9), tokenizer=tok, allow_unk=True).generate(["rev café="], gen_length=8)
    assert len(out.text) == 1


def test_raw_char_tokenizer_unknown_characters():
    with pytest.raises(ValueError, match=r"prompt 0 .* cannot encode: 'A'"):
        encode_prompts(["A+1="], tiny_char_tokenizer())
    tok = tiny_char_tokenizer()
    assert encode_prompts(["a+1="], tok) == [[tok.token_to_id(c) for c in "a+1="]]


def test_byte_level_tokenizers_are_not_checked():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())  # byte-level BPE: no unknown token, every string encodes
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["hello world"], trainers.BpeTrainer(initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    ids = encode_prompts(["Café 😀"], tok)
    assert tok.decode(ids[0]) == "Café 😀"


# --------------------------------------------------------------------------- 4. unreadable checkpoints


def test_invalid_config_json_names_the_file(sdar_ckpt):
    (sdar_ckpt / "config.json").write_text('{"model_type": "sdar",')
    with pytest.raises(CheckpointError, match=r"config.json is not valid JSON \(.*\); the file is corrupt"):
        load_model(sdar_ckpt)


@pytest.mark.parametrize("cut", [0, 8, 0.5])
def test_truncated_or_empty_safetensors_is_named(sdar_ckpt, cut):
    file = sdar_ckpt / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[: int(len(data) * cut) if isinstance(cut, float) else cut])
    with pytest.raises(CheckpointError, match=r"model.safetensors is truncated or corrupt \(\d+ bytes; safetensors: "):
        load_model(sdar_ckpt)


def test_missing_shard_is_named(sdar_ckpt):
    keys = load_file(sdar_ckpt / "model.safetensors").keys()
    index = {"weight_map": {k: "model-00001-of-00002.safetensors" for k in keys}}
    (sdar_ckpt / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="model-00001-of-00002.safetensors does not exist"):
        load_model(sdar_ckpt)


def test_cuda_without_a_gpu_is_said_clearly(sdar_ckpt, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"load_model\(device='cuda'\): no CUDA device is visible "
                                         r"\(torch.cuda.is_available\(\) is False\); load on device='cpu'"):
        load_model(sdar_ckpt, device="cuda")


def test_mask_token_id_outside_the_vocabulary(sdar_ckpt):
    hf = json.loads((sdar_ckpt / "config.json").read_text())
    (sdar_ckpt / "config.json").write_text(json.dumps({**hf, "mask_token_id": TINY_VOCAB}))
    message = rf"mask_token_id {TINY_VOCAB} is outside the vocabulary: .*\(vocab_size {TINY_VOCAB}\)"
    with pytest.raises(CheckpointError, match=r"config.json: " + message):
        load_model(sdar_ckpt)
    with pytest.raises(ValueError, match=message):
        read_config(sdar_ckpt)  # what the config checks read before loading


# --------------------------------------------------------------------------- 5. argument types


@pytest.fixture(scope="module")
def sdar_decoder():
    return DiffusionDecoder(tiny_model("sdar"), Threshold(0.9))


@pytest.mark.parametrize("prompts,match", [
    ([123], r"prompt 0 is int 123; expected a string or a list of integer token ids"),
    ([[3, 4], None], r"prompt 1 is NoneType None; expected a string or a list of integer token ids"),
    ([[1, "a"]], r"prompt 0 has 'a' \(str\) at position 1; expected a string or a list of integer token ids"),
    ([[3, 4.0]], r"prompt 0 has 4.0 \(float\) at position 1"),
    ([torch.tensor([3.0, 4.0])], r"prompt 0 is a Tensor of shape \(2,\) and dtype torch.float32"),
])
def test_prompts_of_the_wrong_type(sdar_decoder, prompts, match):
    with pytest.raises(TypeError, match=match):
        sdar_decoder.generate(prompts, gen_length=8)


def test_integer_arrays_are_prompts(sdar_decoder):
    import numpy as np

    ref = sdar_decoder.generate([[3, 4, 5]], gen_length=8).tokens
    for p in (torch.tensor([3, 4, 5]), np.array([3, 4, 5]), (3, 4, 5)):
        assert torch.equal(sdar_decoder.generate([p], gen_length=8).tokens, ref)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(gen_length=2.5), TypeError, r"gen_length must be an int, got 2.5 \(float\)"),
    (dict(gen_length=16.0), TypeError, r"gen_length must be an int, got 16.0 \(float\)"),
    (dict(gen_length="16"), TypeError, r"gen_length must be an int, got '16' \(str\)"),
    (dict(gen_length=True), TypeError, r"gen_length must be an int, got True \(bool\)"),
    (dict(gen_length=8, steps=2.5), TypeError, r"steps must be an int or None, got 2.5 \(float\)"),
    (dict(gen_length=8, steps=1), ValueError, r"steps=1 is fewer than the 2 blocks to decode"),
])
def test_gen_length_and_steps(sdar_decoder, kwargs, error, match):
    with pytest.raises(error, match=match):
        sdar_decoder.generate([[3, 4]], **kwargs)


def test_policy_arguments_of_the_wrong_type():
    with pytest.raises(ValueError, match=r"alpha must be > 0 and finite, got '1.5'"):
        FocusBudget(alpha="1.5")
    with pytest.raises(ValueError, match=r"FixedBudget count must be an int >= 1, got 2.5"):
        FixedBudget(count=2.5)
    with pytest.raises(ValueError, match=r"threshold must be a finite real number, got '0.9'"):
        Threshold(threshold="0.9")


def test_unmasking_by_registered_name():
    model = tiny_model("sdar")
    for name, cls in POLICIES.items():
        assert type(DiffusionDecoder(model, name).unmasking) is cls
    out = DiffusionDecoder(model, "threshold").generate([[3, 4]], gen_length=8)
    assert out.tokens.shape == (1, 8)


@pytest.mark.parametrize("unmasking,error,match", [
    ("thresold", ValueError, r"unknown unmasking policy 'thresold'; registered names: low_confidence, .*threshold"),
    (None, TypeError, r"unmasking must be an unmasking policy object \(focuslib.policies.unmasking: LowConfidence, .*Threshold"),
    (0.9, TypeError, r"unmasking must be an unmasking policy object .* got 0.9 \(float\)"),
    (Threshold, TypeError, r"unmasking: pass an instance, Threshold\(\), not the class"),
])
def test_unmasking_that_is_not_a_policy(unmasking, error, match):
    with pytest.raises(error, match=match):
        DiffusionDecoder(tiny_model("sdar"), unmasking)


# --------------------------------------------------------------------------- 6. traces


def test_save_trace_of_none_says_trace_true_is_needed(tmp_path, sdar_decoder):
    out = sdar_decoder.generate([[3, 4]], gen_length=8)
    with pytest.raises(TypeError, match=r"save_trace got None .* generate\(\.\.\., trace=True\)"):
        save_trace(out.trace, tmp_path / "t.parquet")


def test_load_trace_of_a_parquet_that_is_not_a_trace(tmp_path):
    path = tmp_path / "other.parquet"
    pd.DataFrame({"step": [0], "seq": [0], "foo": [1.0]}).to_parquet(path)
    missing = [c for c in COLUMNS if c not in ("step", "seq")]
    with pytest.raises(ValueError, match=rf"other.parquet is not a decode trace: missing columns "
                                         rf"\[{', '.join(map(repr, missing))}\]"):
        load_trace(path)


def test_trace_round_trip_with_the_optional_dense_commit(tmp_path):
    decoder = DiffusionDecoder(tiny_model("sdar"), Threshold(0.9))
    trace = decoder.generate([[3, 4]], gen_length=8, trace=True, dense_labels=True).trace
    assert "dense_commit" in trace
    back = load_trace(save_trace(trace, tmp_path / "t.parquet"))
    pd.testing.assert_frame_equal(back, trace)


# --------------------------------------------------------------------------- 7. the decoder's rules before loading


def compose_decode(overrides: list[str]):
    import focuslib.experiments.config_checks  # noqa: F401  (registers decode_schema)

    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return compose("config", overrides=["task.n=4", "progress=false", *overrides])


def config_problems(overrides: list[str]) -> str:
    from focuslib.experiments.config_checks import ConfigError, plan_run

    with pytest.raises(ConfigError) as err:
        plan_run(compose_decode(overrides))
    return str(err.value)


@pytest.mark.parametrize("family,extra,blocks", [
    ("sdar", [], 4), ("llada2", [], 4), ("llada", ["block_size=8"], 2), ("dream", ["block_size=4"], 4),
])
def test_steps_fewer_than_blocks_is_caught_before_loading_for_every_family(tmp_path, family, extra, blocks):
    path = write_tiny_checkpoint(tmp_path / family, family)
    message = f"steps=1 is fewer than the {blocks} blocks to decode"
    assert message in config_problems([f"model.path={path}", "steps=1", "gen_length=16", *extra])
    block = {"block_size": int(extra[0].split("=")[1])} if extra else {}
    decoder = DiffusionDecoder(tiny_model(family), Threshold(0.9), **block)
    with pytest.raises(ValueError, match=message):  # the same rule, the same message
        decoder.generate([[3, 4]], gen_length=16, steps=1)


def test_bundled_block_model_steps_one():
    assert "steps=1 is fewer than the 2 blocks to decode" in config_problems(["steps=1"])


def test_prompt_rules_use_the_task_prompts_before_loading(tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "What is 2+2?", "answer": "#### 4"}) + "\n")
    text = config_problems(["task=gsm8k", f"task.options.path={data}", "task.n=1"])
    assert "task: prompt 0 ('What is 2+2?') has characters the tokenizer cannot encode: 'W', '?'" in text
    text = config_problems(["gen_length=120"])  # prompts of 13+ tokens do not fit max_positions 128
    assert "task: prompt 1 (13 tokens) + gen_length 120 exceeds the model's max_positions 128" in text


def test_block_grid_rule_is_the_decoders():
    message = "gen_length 16 is not a multiple of block_size 5"
    assert message in config_problems(["model=tiny_llada", "block_size=5"])
    with pytest.raises(ValueError, match=message):
        DiffusionDecoder(tiny_model("llada"), Threshold(0.9), block_size=5).generate([[3]], gen_length=16)


# --------------------------------------------------------------------------- 8. unknown keys, apps without tracebacks


def test_plus_unknown_key_is_an_error_naming_it():
    text = config_problems(["+foo=1"])
    assert "foo: unknown key (an override +foo=... adds a key the schema does not have)" in text
    assert "model.bar: unknown key" in config_problems(["+model.bar=1"])


def _exits_cleanly(capsys, call, *expected: str) -> str:
    """`call` exits with status 1 and prints the named error alone on stderr (no traceback)."""
    with pytest.raises(SystemExit) as exit_:
        call()
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error: " in err
    for text in expected:
        assert text in err
    return err


def _hydra_exits_cleanly(capsys, monkeypatch, main, cfg, *expected: str) -> str:
    """`main(cfg)` run the way @hydra.main runs an app (Hydra's own top-level error report)."""
    import hydra._internal.utils as hydra_utils

    from focuslib.experiments.config_checks import AppError

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(hydra_utils, "is_under_debugger", lambda: False)  # coverage's tracer looks like one
    with pytest.raises(AppError):
        main(cfg)
    return _exits_cleanly(capsys, lambda: hydra_utils.run_and_report(lambda: main(cfg)), *expected)


def test_decode_app_prints_the_config_error_alone(capsys, monkeypatch):
    from focuslib.experiments import decode

    _hydra_exits_cleanly(capsys, monkeypatch, decode.main, compose_decode(["+foo=1", "check_only=true"]),
                         "error: invalid config:", "foo: unknown key")
    _hydra_exits_cleanly(capsys, monkeypatch, decode.main, compose_decode(["steps=1"]),
                         "steps=1 is fewer than the 2 blocks")


def test_decode_app_prints_checkpoint_errors_alone(capsys, monkeypatch, sdar_ckpt):
    from focuslib.experiments import decode

    file = sdar_ckpt / "model.safetensors"
    file.write_bytes(file.read_bytes()[:100])
    monkeypatch.setattr(decode.HydraConfig, "get", lambda: _FakeHydra(sdar_ckpt.parent))
    _hydra_exits_cleanly(capsys, monkeypatch, decode.main, compose_decode([f"model.path={sdar_ckpt}"]),
                         "model.safetensors is truncated or corrupt")


class _FakeHydra:
    """What decode.main reads from HydraConfig.get() (the compose API sets no runtime)."""

    def __init__(self, out: Path) -> None:
        from types import SimpleNamespace

        self.overrides = SimpleNamespace(task=[])
        self.runtime = SimpleNamespace(output_dir=str(out / "run"))


def test_hydra_full_error_keeps_the_original_error(monkeypatch):
    from focuslib.experiments import decode
    from focuslib.experiments.config_checks import ConfigError

    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigError, match="foo: unknown key"):
        decode.main(compose_decode(["+foo=1"]))


def test_bench_app_prints_the_config_error_alone(capsys, monkeypatch):
    from focuslib.experiments import bench

    for overrides, expected in ((["unmasking.threshold=1.5", "stacks.focus.budget.alpha=-1"],
                                 ["unmasking.threshold must lie in (0.0, 1.0], got 1.5",
                                  "stacks.focus.budget.alpha must be > 0"]),
                                (["steps=1", "batch_sizes=[0]"],
                                 ["steps=1 is fewer than the 2 blocks to decode",
                                  "batch_sizes must be a non-empty list of ints >= 1"])):
        with initialize_config_dir(config_dir=str(CONF), version_base=None):
            cfg = compose("bench", overrides=overrides)
        _hydra_exits_cleanly(capsys, monkeypatch, bench.main, cfg, *expected)


def test_train_app_prints_the_config_error_alone(capsys, monkeypatch, tmp_path):
    from focuslib.experiments import train

    for overrides, expected in ((["+foo=1"], "foo: unknown key"),
                                (["model.family=dream"], "training supports families 'llada' and 'sdar', got 'dream'")):
        with initialize_config_dir(config_dir=str(CONF.parent / "experiments" / "train_conf"), version_base=None):
            cfg = compose("train", overrides=[f"run_dir={tmp_path}", "n_train=8", "n_val=4", *overrides])
        _hydra_exits_cleanly(capsys, monkeypatch, train.main, cfg, expected)


# --------------------------------------------------------------------------- 9. report: corrupt and missing runs


def _metrics(speed: float, acc: float, overrides: list[str]) -> str:
    return json.dumps({"accuracy": acc, "tokens_per_s": speed, "tokens_per_step": 2.0, "forward_passes": 3,
                       "row_layers": 9, "n_examples": 4, "wall_time_s": 1.0, "overrides": overrides})


@pytest.fixture
def broken_sweep(tmp_path: Path) -> Path:
    """A 2x3 sweep: points 0 and 1 ok, 2 with a corrupt metrics.json, 3 failed (run dir, no metrics), 4-5 never ran."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    _target_: hydra._internal.core_plugins.basic_sweeper.BasicSweeper\n"
        "    params: null\n  overrides:\n    task:\n    - unmasking=threshold,low_confidence\n"
        "    - cache=block,delayed,none\n    - task.n=4\n")
    points = [["unmasking=threshold", "cache=block"], ["unmasking=threshold", "cache=delayed"],
              ["unmasking=threshold", "cache=none"], ["unmasking=low_confidence", "cache=block"]]
    for i, overrides in enumerate(points):
        run = sweep / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if i < 2:
            (run / "metrics.json").write_text(_metrics(10.0 * (i + 1), 0.9 - 0.1 * i, overrides))
    (sweep / "2" / "metrics.json").write_text('{"accuracy": 0.5, "tokens_')
    return sweep


def test_report_names_corrupt_files_and_lists_failed_points(broken_sweep):
    from focuslib.experiments.report import scan_runs, write_report

    runs = scan_runs(broken_sweep)
    assert list(runs.table["run"]) == ["0", "1"] and list(runs.table["cache"]) == ["block", "delayed"]
    assert list(runs.corrupt) == [str(broken_sweep / "2" / "metrics.json")]
    assert runs.failed == {
        "3": "no metrics.json: the run failed or did not finish (unmasking=low_confidence cache=block)",
        "4": "no run directory: the point was never started (the sweep stopped early?)",
        "5": "no run directory: the point was never started (the sweep stopped early?)",
    }
    md = write_report(broken_sweep)["md"].read_text()
    assert "2 runs; Pareto front over (tokens/s, accuracy). 4 failed or missing points are listed below." in md
    assert "| 0 | block | 90.0% | 10.0 |" in md and "| 1 | delayed | 80.0% | 20.0 |" in md
    assert "## 4 failed or missing points (not in the table)" in md
    assert f"- {broken_sweep / '2' / 'metrics.json'}: unreadable metrics.json (Unterminated string" in md
    assert "- 3: no metrics.json: the run failed or did not finish (unmasking=low_confidence cache=block)" in md


def test_report_app_warns_on_stderr(broken_sweep, capsys):
    from focuslib.experiments import report

    report.main([str(broken_sweep)])
    out, err = capsys.readouterr()
    assert "| 0 | block |" in out and "failed or missing points" in out
    assert err.count("warning: ") == 4 and "2/metrics.json: unreadable metrics.json" in err


def test_report_app_errors_print_the_message_alone(tmp_path, capsys):
    from focuslib.experiments import report

    _exits_cleanly(capsys, lambda: report.main([str(tmp_path / "nowhere")]), "nowhere is not a directory")
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text("not json")
    _exits_cleanly(capsys, lambda: report.main([str(tmp_path)]), "no readable metrics.json under",
                   "0/metrics.json (Expecting value")
