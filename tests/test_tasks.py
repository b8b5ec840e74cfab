"""Tests for focuslib.tasks: determinism, disjoint splits, correct answers, scoring.

Answers are re-derived here from the prompt text by parsers independent of the
generators, so a formatting bug in a generator cannot hide behind its own logic.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from itertools import cycle, islice

from focuslib.tasks import (
    CHARSET, DEFAULT_MIX_WEIGHTS, MIXES, PROCEDURAL_TASKS, SPLITS, TASK_NAMES, load_task, prefix_match, prompt_split,
)

SINGLE_TASKS = [t for t in PROCEDURAL_TASKS if t not in MIXES]


# ------------------------------------------------------------------ oracles


def eval_plus_minus(expr: str) -> int:
    """Left-to-right value of 'a+b-c' with non-negative integer terms."""
    tokens = re.findall(r"\d+|[+-]", expr)
    total, sign = int(tokens[0]), 1
    for tok in tokens[1:]:
        if tok in "+-":
            sign = 1 if tok == "+" else -1
        else:
            total += sign * int(tok)
    return total


def long_oracle(body: str) -> str | None:
    """Answers of the long-answer tasks (tribonacci, count_by, repeat, walk, running_sum) re-derived from the prompt text."""
    if m := re.fullmatch(r"trib (\d)(\d)(\d) (\d\d)", body):
        a, b, c, n = (int(g) for g in m.groups())
        out = []
        for _ in range(n):
            a, b, c = b, c, (a + b + c) % 10
            out.append(str(c))
        return "".join(out)
    if m := re.fullmatch(r"cnt (\d\d)\+(\d) (\d\d)", body):
        start, step, n = (int(g) for g in m.groups())
        return "".join(str((start + k * step) % 100).zfill(2) for k in range(n))
    if m := re.fullmatch(r"rep ([a-z0-9]+) (\d\d)", body):
        return "".join(islice(cycle(m.group(1)), int(m.group(2))))
    if m := re.fullmatch(r"walk ((?:[a-z0-9]{2} ){2,36})([a-z0-9]) (\d\d)", body):
        succ = dict(m.group(1).split())  # "ab" -> a: b
        out, x = [], m.group(2)
        for _ in range(int(m.group(3))):
            x = succ[x]
            out.append(x)
        return "".join(out)
    if m := re.fullmatch(r"sum (\d+) (\d\d)", body):
        digits, n = [int(d) for d in m.group(1)], int(m.group(2))
        return "".join(str(sum(digits[:i + 1]) % 10) for i in range(n))
    return None


def oracle(prompt: str) -> str:
    """The correct answer for any procedural prompt, from its text alone."""
    assert prompt.endswith("=")
    body = prompt[:-1]
    long = long_oracle(body)
    if long is not None:
        return long
    if body.startswith("sort "):
        return ",".join(str(v) for v in sorted(int(x) for x in body[5:].split(",")))
    if body.startswith("rev "):
        return body[4:][::-1]
    return str(eval_plus_minus(body))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def splits() -> dict[str, dict[str, list[str]]]:
    """500 prompts per (procedural task, split), loaded once."""
    return {t: {s: load_task(t, 500, seed=s).prompts for s in SPLITS} for t in PROCEDURAL_TASKS}


# ------------------------------------------------------- procedural tasks


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_deterministic_per_seed(name: str) -> None:
    a, b = load_task(name, 50, seed=7), load_task(name, 50, seed=7)
    assert a.dataset.to_list() == b.dataset.to_list()
    assert a.prompts != load_task(name, 50, seed=8).prompts
    assert load_task(name, 50, seed="test").prompts != load_task(name, 50, seed="validation").prompts


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_smaller_n_is_prefix(name: str) -> None:
    assert load_task(name, 60, seed="test").prompts[:30] == load_task(name, 30, seed="test").prompts


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_splits_disjoint(name: str, splits: dict[str, dict[str, list[str]]]) -> None:
    train, val, test = (set(splits[name][s]) for s in SPLITS)
    assert not (train & val) and not (train & test) and not (val & test)


def test_int_seeds_draw_from_train_unless_told(splits: dict[str, dict[str, list[str]]]) -> None:
    held_out = set(splits["chain_sum"]["test"]) | set(splits["chain_sum"]["validation"])
    assert not set(load_task("chain_sum", 500, seed=123).prompts) & held_out
    assert {prompt_split(p) for p in load_task("chain_sum", 200, seed=123, split="test").prompts} == {"test"}


@pytest.mark.parametrize("name", PROCEDURAL_TASKS)
def test_answers_correct_and_scored(name: str) -> None:
    task = load_task(name, 300, seed="validation")
    for ex in task:
        assert ex["answer"] == oracle(ex["prompt"]), ex
        assert task.score(ex["answer"], ex) == 1.0
        assert task.score(" " + ex["answer"] + " ", ex) == 1.0
        assert task.score(ex["answer"] + "1", ex) == 0.0
        assert task.score("", ex) == 0.0


@pytest.mark.parametrize("name, lo, hi", [("tribonacci", 40, 60), ("count_by", 40, 60), ("repeat", 40, 60),
                                          ("walk", 12, 24), ("running_sum", 40, 48)])
def test_long_tasks_have_long_answers(name: str, lo: int, hi: int) -> None:
    """40-60 tokens in a 64-token window; a walk through 24 listed symbols that never repeats one, 12-24."""
    task = load_task(name, 200, seed="test")
    lengths = [len(a) for a in task.answers]
    assert min(lengths) == lo and max(lengths) == hi
    assert len({len(p) for p in task.prompts}) == 1  # fixed-width prompts: position says where inputs are
    short = load_task(name, 50, seed="test", **({"min_fields": 2, "max_fields": 4} if name == "count_by"
                                                 else {"min_len": 4, "max_len": 8}))
    assert max(len(a) for a in short.answers) <= 8  # the difficulty knob used by the curriculum


def test_running_sum_keeps_every_digit_at_a_fixed_distance() -> None:
    """Whatever n is, prompt digit i sits at the same distance before answer digit i (width digits per prompt)."""
    task = load_task("running_sum", 50, seed="test", min_len=1, max_len=48)
    assert len({len(p) for p in task.prompts}) == 1 and len({len(a) for a in task.answers}) > 10
    with pytest.raises(ValueError, match="max_len"):
        load_task("running_sum", 5, max_len=49)
    with pytest.raises(ValueError, match="width"):
        load_task("running_sum", 5, width=61, max_len=48)


def test_long_mix_is_mostly_walk_and_fills_most_of_one_32_token_block() -> None:
    task = load_task("long_mix", 400, seed="test")
    counts = Counter(task.dataset["task"])
    assert counts.keys() == {"walk", "repeat"} and 260 <= counts["walk"] <= 340
    # long_mix's own knobs: answers fill 24-31 of the block's 32 rows, with room for one <eos>
    assert {len(a) for a in task.answers} <= set(range(24, 32))
    assert {len(ex["prompt"].split()) for ex in task if ex["task"] == "walk"} == {28 + 3}  # 28 pairs listed
    assert task.evaluate(task.answers)["score"] == 1.0
    # the caller's knobs win over the mixture's own, key by key; a sub-task left out of the weights drops its own
    mine = load_task("long_mix", 200, seed="test", repeat={"max_len": 25})
    assert {len(ex["answer"]) for ex in mine if ex["task"] == "repeat"} == {24, 25}
    other = load_task("long_mix", 50, seed="test", weights={"walk": 1, "count_by": 1})
    assert set(other.dataset["task"]) == {"walk", "count_by"}


def test_walk_is_a_permutation_with_a_long_cycle_through_the_start() -> None:
    for ex in load_task("walk", 200, seed="test", alphabet=16, wrap=True, min_letters=16, max_letters=16,
                        min_len=40, max_len=60, min_cycle=10, max_cycle=12):
        pairs = ex["prompt"].split()[1:17]
        assert sorted(p[0] for p in pairs) == sorted(p[1] for p in pairs) == list("abcdefghijklmnop")
        start, answer = ex["prompt"].split()[17], ex["answer"]
        period = answer.index(start) + 1  # the walk comes back to its start after one cycle
        assert 10 <= period <= 12 and len(set(answer[:period])) == period
        assert answer == (answer[:period] * 8)[: len(answer)]


def test_walk_on_fewer_letters_is_a_permutation_of_a_random_subset() -> None:
    sizes = Counter()
    for ex in load_task("walk", 300, seed="test", alphabet=16, wrap=True, min_letters=4, max_letters=6):
        pairs = ex["prompt"].split()[1:-2]
        firsts, seconds = sorted(p[0] for p in pairs), sorted(p[1] for p in pairs)
        assert firsts == seconds and len(set(firsts)) == len(firsts)
        sizes[len(pairs)] += 1
        assert ex["answer"] == oracle(ex["prompt"]) and set(ex["answer"]) <= set(firsts)
    assert sizes.keys() == {4, 5, 6}
    letters_seen = {c for ex in load_task("walk", 100, seed="test", alphabet=16, min_letters=4, max_letters=4)
                    for c in ex["answer"]}
    assert len(letters_seen) > 8 and letters_seen <= set("abcdefghijklmnop")  # a random subset per problem


def test_walk_without_wrap_never_repeats_a_letter_over_a_larger_alphabet() -> None:
    """wrap=False: every answer letter is new (no period to copy), over the first `alphabet` symbols of a-z0-9."""
    task = load_task("walk", 300, seed="test", alphabet=36, wrap=False, min_letters=4, max_letters=36,
                     min_len=2, max_len=36, min_cycle=2, max_cycle=36)
    symbols = set()
    for ex in task:
        pairs = ex["prompt"].split()[1:-2]
        assert sorted(p[0] for p in pairs) == sorted(p[1] for p in pairs)  # still a permutation
        assert ex["answer"] == oracle(ex["prompt"]) and len(set(ex["answer"])) == len(ex["answer"])
        assert len(ex["answer"]) <= len(pairs) and int(ex["prompt"][-3:-1]) == len(ex["answer"])
        symbols |= set(ex["answer"])
    assert symbols == set("abcdefghijklmnopqrstuvwxyz0123456789")
    assert max(len(a) for a in task.answers) > 30
    wrapped = load_task("walk", 50, seed="test", wrap=True, min_len=40, max_len=60, min_cycle=2, max_cycle=4)
    assert all(len(set(a)) <= 4 for a in wrapped.answers)  # wrap=True comes back after its cycle


def test_the_default_walk_is_the_regime_task() -> None:
    """24 of the 36 symbols a-z0-9 listed (fixed width), 12-24 of them walked, none twice: every symbol needs
    the one before it."""
    task = load_task("walk", 100, seed="test")
    assert len({len(p) for p in task.prompts}) == 1
    for ex in task:
        pairs = ex["prompt"].split()[1:-2]
        assert len(pairs) == 24 and ex["answer"] == oracle(ex["prompt"])
        assert len(set(ex["answer"])) == len(ex["answer"])


def test_walk_knobs_are_checked() -> None:
    with pytest.raises(ValueError, match="max_cycle"):
        load_task("walk", 2, min_cycle=4, max_cycle=37)
    with pytest.raises(ValueError, match="max_letters"):
        load_task("walk", 2, min_letters=4, max_letters=37)
    small = load_task("walk", 5, seed="test", alphabet=16, min_letters=16, max_letters=16, min_len=4, max_len=16)
    assert all(len(p.split()) == 16 + 3 for p in small.prompts) and set("".join(small.answers)) <= set("abcdefghijklmnop")
    with pytest.raises(ValueError, match="at least 2 letters"):
        load_task("walk", 2, min_letters=1, max_letters=4)
    with pytest.raises(ValueError, match="alphabet"):
        load_task("walk", 2, alphabet=37)
    with pytest.raises(ValueError, match="max_letters"):
        load_task("walk", 2, alphabet=20, min_letters=4, max_letters=21)


def test_prefix_match() -> None:
    assert prefix_match("12345", "12345") == 1.0
    assert prefix_match(" 12x45", "12345") == pytest.approx(0.4)
    assert prefix_match("", "12") == 0.0 and prefix_match("1234567", "12345") == 1.0


def test_partial_credit_is_not_given() -> None:
    rev = load_task("spell_backward", 1)[0]
    assert load_task("spell_backward", 1).score(rev["answer"][:-1], rev) == 0.0
    sums = load_task("chain_sum", 1)
    assert sums.score("1" + sums[0]["answer"].lstrip("-"), sums[0]) == 0.0


def test_default_formats() -> None:
    sums = load_task("chain_sum", 300)
    assert all(2 <= len(re.findall(r"\d+", p)) <= 3 and len(p) <= 6 for p in sums.prompts)
    sorts = load_task("number_sorting", 300)
    assert all(3 <= p.count(",") + 1 <= 5 for p in sorts.prompts)
    words = load_task("spell_backward", 300)
    assert all(3 <= len(p) - len("rev =") <= 8 for p in words.prompts)
    adds = load_task("basic_arithmetic", 300)
    assert all(re.fullmatch(r"[1-9]\d\+[1-9]\d=", p) for p in adds.prompts)
    assert any(int(a) >= 100 for a in adds.answers)  # carries out of the tens happen


@pytest.mark.parametrize(
    ("name", "knobs"),
    [(t, {}) for t in SINGLE_TASKS]
    + [
        ("chain_sum", {"allow_negation": True, "max_terms": 4, "max_digits": 2}),
        ("number_sorting", {"min_value": -20, "max_value": 20}),
        ("spell_backward", {"max_word_len": 10}),
        ("basic_arithmetic", {"operators": "+-*", "max_terms": 3}),
    ],
)
def test_strings_within_charset(name: str, knobs: dict) -> None:
    task = load_task(name, 300, seed="train", **knobs)
    assert set("".join(task.prompts + task.answers)) <= set(CHARSET)


def test_mix_proportions_and_per_task_scoring() -> None:
    mix = load_task("mix", 2000, seed="train")
    counts = Counter(mix.dataset["task"])
    for sub, weight in DEFAULT_MIX_WEIGHTS.items():
        assert abs(counts[sub] / 2000 - weight) < 0.04, counts
    custom = Counter(load_task("mix", 1000, weights={"basic_arithmetic": 1, "spell_backward": 3}).dataset["task"])
    assert set(custom) == {"basic_arithmetic", "spell_backward"} and 0.2 < custom["basic_arithmetic"] / 1000 < 0.3
    preds = [a if t == "chain_sum" else "" for a, t in zip(mix.answers, mix.dataset["task"])]
    result = mix.evaluate(preds)
    assert result["score/chain_sum"] == 1.0 and result["score/spell_backward"] == 0.0
    assert result["score"] == pytest.approx(counts["chain_sum"] / 2000)


def test_mix_subtasks_match_standalone_streams() -> None:
    mix = load_task("mix", 300, seed="test", chain_sum={"max_terms": 4})
    sums = [p for p, t in zip(mix.prompts, mix.dataset["task"]) if t == "chain_sum"]
    assert sums == load_task("chain_sum", len(sums), seed="test", max_terms=4).prompts


def test_unique_option() -> None:
    task = load_task("chain_sum", 200, seed="test", unique=True)
    assert len(set(task.prompts)) == 200
    with pytest.raises(RuntimeError, match="only"):
        load_task("number_sorting", 50, unique=True, min_numbers=1, max_numbers=1)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "nope", "n": 1}, ValueError, "known tasks: chain_sum"),
        ({"name": "chain_sum", "n": 0}, ValueError, "positive"),
        ({"name": "chain_sum", "n": 1, "seed": "dev"}, ValueError, "train"),
        ({"name": "chain_sum", "n": 1, "seed": "test", "split": "train"}, ValueError, "conflicts"),
        ({"name": "chain_sum", "n": 1, "max_term": 3}, TypeError, "max_terms"),
        ({"name": "chain_sum", "n": 1, "min_terms": 3, "max_terms": 2}, ValueError, "min_terms"),
        ({"name": "mix", "n": 1, "weights": {"gsm8k": 1}}, ValueError, "unknown sub-task"),
        ({"name": "gsm8k", "n": 1}, ValueError, "path="),
        ({"name": "humaneval", "n": 1, "timeout_s": 1}, TypeError, "timeout"),
    ],
)
def test_clear_errors(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        load_task(**kwargs)


def test_task_names_exported() -> None:
    assert set(TASK_NAMES) >= {"chain_sum", "number_sorting", "spell_backward", "basic_arithmetic", "mix",
                               "gsm8k", "humaneval", "sharegpt"}


# ------------------------------------------------------------- benchmarks


@pytest.fixture()
def gsm8k_file(tmp_path: Path) -> Path:
    records = [
        {"question": "How many apples?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "Total cost?", "answer": "Some work.\n#### 1,234"},
        {"question": "Temperature change?", "answer": "It fell.\n#### -5"},
    ]
    path = tmp_path / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_gsm8k(gsm8k_file: Path) -> None:
    task = load_task("gsm8k", 3, path=gsm8k_file, template="Q: {question}\nA:")
    assert task.prompts[1] == "Q: Total cost?\nA:" and task.answers == ["7", "1234", "-5"]
    ex = task[1]
    assert task.score("So the total is $1,234.", ex) == 1.0
    assert task.score("12 items at 100 each make 1234.00", ex) == 1.0
    assert task.score("1,234 then 1235", ex) == 0.0
    assert task.score("no number here", ex) == 0.0
    assert task.score("it drops by -5 degrees", task[2]) == 1.0
    assert sorted(load_task("gsm8k", 3, seed=1, path=gsm8k_file).answers) == sorted(task.answers)
    with pytest.raises(ValueError, match="only 3"):
        load_task("gsm8k", 4, path=gsm8k_file)
    with pytest.raises(FileNotFoundError):
        load_task("gsm8k", 1, path=gsm8k_file.with_name("missing.jsonl"))


def test_humaneval_executes_in_subprocess() -> None:
    task = load_task("humaneval", 2, timeout=3.0)
    ex = task[0]
    assert ex["task_id"] == "HumanEval/0" and ex["prompt"].rstrip().endswith('"""')
    assert task.score(ex["answer"], ex) == 1.0
    assert task.score(ex["prompt"] + ex["answer"], ex) == 1.0  # a repeated prompt is accepted
    assert task.score(ex["answer"] + "\ndef junk(:\n", ex) == 1.0  # cut at the stop sequence
    assert task.score("    return False\n", ex) == 0.0


def test_humaneval_timeout() -> None:
    task = load_task("humaneval", 1, timeout=0.5)
    assert task.score("    while True:\n        pass\n", task[0]) == 0.0


def test_sharegpt_prompts() -> None:
    task = load_task("sharegpt", 20)
    assert len(task) == 20 and all(p.strip() for p in task.prompts)
    assert set(task.answers) == {""} and not task.has_reference
    assert math.isnan(task.score("anything", task[0]))
    short = load_task("sharegpt", 20, seed=3, max_chars=100)
    assert all(len(p) <= 100 for p in short.prompts) and short.prompts != task.prompts
