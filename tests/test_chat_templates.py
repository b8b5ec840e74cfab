"""Chat templates of the real checkpoints: kept by the loader, applied by the tasks' `chat=True`.

The reference metadata in tests/data/reference-checkpoints holds what each family publishes:
SDAR-8B-Chat its full tokenizer (vocab.json, merges.txt, chat_template.jinja); Dream its
tokenizer_config.json and added tokens (its BPE files are SDAR's, see the folder's README);
LLaDA its tokenizer_config.json with the template but no tokenizer.json; LLaDA2.0-mini only
its config. Each template is checked against the prompt the model's own chat code builds.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from focuslib import DiffusionDecoder, evaluate, load_model
from focuslib.experiments.config_checks import ConfigError, plan_run
from focuslib.loading import BUNDLED_DIR, load_tokenizer, read_config
from focuslib.requests import encode_prompts
from focuslib.policies.unmasking import Threshold
from focuslib.tasks import apply_chat_template, load_task
from focuslib.tasks.benchmarks import humaneval_program, score_humaneval
from focuslib.testing import tiny_char_tokenizer

ROOT = Path(__file__).resolve().parents[1]
REF = ROOT / "tests" / "data" / "reference-checkpoints"
QUESTION = "What is 2+2?"


def _copy(src: Path, dst: Path, names: list[str]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


# --------------------------------------------------------------------------- the real templates


def test_sdar_reference_tokenizer_keeps_its_chat_template():
    tok = load_tokenizer(REF / "sdar-8b-chat")
    assert tok.chat_template == (REF / "sdar-8b-chat" / "chat_template.jinja").read_text()
    prompt = apply_chat_template(tok, QUESTION)
    # SDAR's README: apply_chat_template([{"role": "user", ...}], add_generation_prompt=True, tokenize=False)
    assert prompt == f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
    ids = encode_prompts([prompt], tok)[0]
    im_start, im_end = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert ids[0] == im_start and ids.count(im_start) == 2 and ids.count(im_end) == 1  # special tokens, once each


@pytest.mark.parametrize("keep", ["jinja_file", "tokenizer_config"])
def test_template_is_read_from_either_place(tmp_path, keep):
    src = REF / "sdar-8b-chat"
    ckpt = _copy(src, tmp_path, ["vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json"])
    config = json.loads((src / "tokenizer_config.json").read_text())
    template = config.pop("chat_template")
    if keep == "jinja_file":
        (ckpt / "chat_template.jinja").write_text(template)
    else:
        config["chat_template"] = template
    (ckpt / "tokenizer_config.json").write_text(json.dumps(config))
    assert load_tokenizer(ckpt).chat_template == template


def test_dream_tokenizer_loads_without_its_remote_code_and_keeps_its_template(tmp_path):
    """Dream's tokenizer_config names DreamTokenizer (remote code, never run): loaded as Qwen2's tokenizer."""
    ckpt = _copy(REF / "sdar-8b-chat", tmp_path, ["vocab.json", "merges.txt"])
    _copy(REF / "dream-v0-instruct-7b", ckpt, ["tokenizer_config.json", "added_tokens.json", "special_tokens_map.json"])
    tok = load_tokenizer(ckpt)
    cfg = read_config(REF / "dream-v0-instruct-7b")
    assert tok.mask_token_id == cfg.mask_id == 151666 and tok.eos_token_id == 151643
    # Dream's template adds Qwen2.5's default system turn when the messages have none
    assert apply_chat_template(tok, QUESTION) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n")


def test_llada_template_renders_what_llada_chat_py_feeds_the_model(tmp_path):
    """LLaDA ships its template in tokenizer_config.json; its tokenizer.json is not in the reference data,
    so the template is attached to a small tokenizer with LLaDA's BOS, saved and loaded back."""
    from transformers import PreTrainedTokenizerFast

    llada = json.loads((REF / "llada-8b-instruct" / "tokenizer_config.json").read_text())
    tok = PreTrainedTokenizerFast(tokenizer_object=tiny_char_tokenizer(), bos_token=llada["bos_token"],
                                  eos_token="<|endoftext|>", mask_token="<|mask|>")
    tok.chat_template = llada["chat_template"]
    tok.save_pretrained(tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.chat_template == llada["chat_template"]
    assert apply_chat_template(loaded, f"  {QUESTION} ") == (  # the template trims the user's text
        f"<|startoftext|><|start_header_id|>user<|end_header_id|>\n\n{QUESTION}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_missing_template_or_tokenizer_is_a_clear_error():
    from tokenizers import Tokenizer

    with pytest.raises(ValueError, match="tiny-sdar has no chat_template: .*chat_template.jinja"):
        apply_chat_template(load_tokenizer(BUNDLED_DIR / "tiny-sdar"), QUESTION)
    with pytest.raises(ValueError, match="needs the checkpoint's tokenizer"):
        apply_chat_template(None, QUESTION)
    with pytest.raises(ValueError, match="raw tokenizers.Tokenizer"):
        apply_chat_template(tiny_char_tokenizer(), QUESTION)
    assert isinstance(tiny_char_tokenizer(), Tokenizer)


# --------------------------------------------------------------------------- tasks with chat=True

# tiny-sdar reads "<problem>=": a template that appends "=" as the generation prompt makes a bare
# question file a task the bundled model solves, so chat prompts are checked end to end.
EQUALS_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}{% if add_generation_prompt %}={% endif %}"


@pytest.fixture
def chat_sdar(tmp_path) -> Path:
    """tiny-sdar with EQUALS_TEMPLATE in its tokenizer_config.json."""
    ckpt = _copy(BUNDLED_DIR / "tiny-sdar", tmp_path / "tiny-sdar-chat",
                 ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"])
    config = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": EQUALS_TEMPLATE}))
    return ckpt


@pytest.fixture
def questions(tmp_path) -> tuple[Path, list[str]]:
    """A GSM8K-format file of basic_arithmetic problems without their trailing '='."""
    prompts = list(load_task("basic_arithmetic", 8).prompts)
    answers = [r["answer"] for r in load_task("basic_arithmetic", 8).dataset]
    file = tmp_path / "gsm8k.jsonl"
    file.write_text("".join(json.dumps({"question": p.removesuffix("="), "answer": f"so\n#### {a}"}) + "\n"
                            for p, a in zip(prompts, answers)))
    return file, prompts


def test_gsm8k_chat_prompts_are_the_user_turn_and_decode_end_to_end(chat_sdar, questions):
    file, prompts = questions
    model, tok = load_model(chat_sdar)
    assert tok.chat_template == EQUALS_TEMPLATE  # load_model keeps the checkpoint's template
    chat = load_task("gsm8k", 8, path=file, chat=True, tokenizer=tok)
    plain = load_task("gsm8k", 8, path=file)
    assert list(chat.prompts) == prompts
    assert [r["user_prompt"] for r in chat.dataset] == list(plain.prompts) == [p[:-1] for p in prompts]
    decoder = DiffusionDecoder(model, Threshold(0.9), tokenizer=tok)
    got = evaluate(decoder, chat, gen_length=16, progress=False)
    want = evaluate(decoder, load_task("basic_arithmetic", 8), gen_length=16, progress=False)
    assert [r["prediction"] for r in got.records] == [r["prediction"] for r in want.records]
    assert got.accuracy >= 0.5


def test_chat_option_without_a_usable_tokenizer_fails_before_reading(questions):
    file, _ = questions
    with pytest.raises(ValueError, match="needs the checkpoint's tokenizer"):
        load_task("gsm8k", 2, path=file, chat=True)
    with pytest.raises(TypeError, match="chat must be true or false"):
        load_task("gsm8k", 2, path=file, chat="yes", tokenizer=None)


def test_humaneval_chat_follows_lm_eval_humaneval_instruct_and_scores_the_body():
    tok = load_tokenizer(REF / "sdar-8b-chat")
    task = load_task("humaneval", 2, chat=True, tokenizer=tok)
    row = task.dataset[0]
    assert row["prompt"] == apply_chat_template(
        tok, "Write a solution to the following problem and make sure that it passes the tests:\n"
             f"```python\n{row['code_prompt']}\n```\n") + f"Here is the completed function:\n```python\n{row['code_prompt']}\n"
    # the model writes the body after the prefilled opening and closes the code block
    body = row["answer"] + "\n```\nThis function returns the answer."
    assert humaneval_program(body, row).startswith(row["code_prompt"])  # HumanEval's prompt, not the chat text
    assert task.score(body, row) == 1.0
    assert score_humaneval(body, row) == 0.0  # without chat's "```" stop the prose after the block breaks it


def test_sharegpt_chat_wraps_the_first_human_turn():
    tok = load_tokenizer(REF / "sdar-8b-chat")
    task = load_task("sharegpt", 2, chat=True, tokenizer=tok, max_chars=500)
    plain = load_task("sharegpt", 2, max_chars=500)
    for row, text in zip(task.dataset, plain.prompts):
        assert row["user_prompt"] == text and row["prompt"] == apply_chat_template(tok, text)


# --------------------------------------------------------------------------- the decode app's config


def _plan(overrides: list[str]):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return plan_run(compose("config", overrides=["progress=false", *overrides]))


def test_decode_config_applies_the_checkpoints_template(chat_sdar, questions):
    file, prompts = questions
    task = ["task=gsm8k", "task.n=8", f"task.options.path={file}"]
    assert list(_plan([f"model.path={chat_sdar}", *task, "task.options.chat=true"]).task.prompts) == prompts
    assert list(_plan([f"model.path={chat_sdar}", *task]).task.prompts) == [p[:-1] for p in prompts]
    with pytest.raises(ConfigError, match=r"task.options.chat: .*tiny-sdar has no chat_template"):
        _plan([*task, "task.options.chat=true"])  # the bundled tiny-sdar has no template
