"""Procedural tasks in compact, character-level formats for the bundled tiny models.

reasoning-gym's own questions are long natural-language sentences; a
character-level model of a few million parameters cannot afford them, so every
task here re-formats the problem as a short canonical string ending in "=".

| task             | prompt           | answer    | generator / scorer                              |
|------------------|------------------|-----------|-------------------------------------------------|
| chain_sum        | "3+5-2="         | "6"       | reasoning-gym chain_sum / its decimal scorer    |
| number_sorting   | "sort 3,1,2="    | "1,2,3"   | Python `random` / exact match (see below)       |
| spell_backward   | "rev water="     | "retaw"   | reasoning-gym spell_backward / its scorer       |
| basic_arithmetic | "47+38="         | "85"      | Python `random` / reasoning-gym decimal scorer  |
| mix              | any of the above | ...       | weighted mixture, scored per row's `task`       |

The long-answer tasks of `long` (tribonacci, count_by, repeat, walk, long_mix) share the
same streams, splits and mixture machinery.

Every score is 1.0 or 0.0: reasoning-gym's partial-credit rewards are binarised
(only its 1.0 counts), because accuracy curves need exact match.
"""

from __future__ import annotations

import functools
import inspect
import random
import string
from collections.abc import Callable, Iterator, Mapping
from itertools import count
from typing import Any

from focuslib.extras import require

from .base import SeedSpec, Task, collect, to_dataset
from .long import LONG_MIX_KNOBS, LONG_MIX_WEIGHTS, LONG_STREAMS, score_exact

# Fixed, append-only: character-level tokenizers index into this string, so
# reordering it would silently change the token ids of trained checkpoints.
CHARSET: str = string.digits + string.ascii_lowercase + "+-*=, "

Row = dict[str, Any]


def _row(task: str, prompt: str, answer: str) -> Row:
    return {"prompt": prompt, "answer": answer, "task": task}


def _check_range(what: str, lo: int, hi: int, minimum: int | None = None) -> None:
    """Reject inverted or too-small knob ranges with a ValueError (reasoning-gym uses asserts)."""
    if lo > hi:
        raise ValueError(f"min_{what}={lo} must be <= max_{what}={hi}")
    if minimum is not None and lo < minimum:
        raise ValueError(f"min_{what}={lo} must be >= {minimum}")


# ---------------------------------------------------------------- generators
# Each generator takes the derived stream seed plus keyword-only difficulty knobs
# (defaults = the settings the bundled models were trained on) and yields rows
# forever; `collect` keeps the ones that hash into the requested split.


def chain_sum_stream(
    seed: int,
    *,
    min_terms: int = 2,
    max_terms: int = 3,
    min_digits: int = 1,
    max_digits: int = 1,
    allow_negation: bool = False,
) -> Iterator[Row]:
    """reasoning-gym chain_sum ("4 - 1 + 7") with the spaces removed: "4-1+7=" -> "10"."""
    _check_range("terms", min_terms, max_terms, 1)
    _check_range("digits", min_digits, max_digits, 1)
    reasoning_gym = require("reasoning_gym", "the chain_sum task")
    ds = reasoning_gym.create_dataset(
        "chain_sum", seed=seed, size=1, min_terms=min_terms, max_terms=max_terms,
        min_digits=min_digits, max_digits=max_digits, allow_negation=allow_negation,
    )
    for idx in count():
        item = ds[idx]
        yield _row("chain_sum", item["metadata"]["expression"].replace(" ", "") + "=", item["answer"])


def number_sorting_stream(
    seed: int,
    *,
    min_numbers: int = 3,
    max_numbers: int = 5,
    min_value: int = 0,
    max_value: int = 9,
) -> Iterator[Row]:
    """Integers sorted ascending: "sort 3,1,2=" -> "1,2,3".

    Generated with Python `random`: reasoning-gym's number_sorting draws floats,
    picks the direction at random and wants a quoted list, none of which fits a
    compact integer format.
    """
    _check_range("numbers", min_numbers, max_numbers, 1)
    _check_range("value", min_value, max_value)
    rng = random.Random(seed)
    while True:
        values = [rng.randint(min_value, max_value) for _ in range(rng.randint(min_numbers, max_numbers))]
        yield _row("number_sorting", "sort " + ",".join(map(str, values)) + "=", ",".join(map(str, sorted(values))))


def spell_backward_stream(seed: int, *, min_word_len: int = 3, max_word_len: int = 8) -> Iterator[Row]:
    """reasoning-gym spell_backward words: "rev water=" -> "retaw".

    Its word list has proper nouns and non-ASCII words; only lowercase ASCII
    words are kept so that every string stays inside CHARSET.
    """
    _check_range("word_len", min_word_len, max_word_len, 1)
    reasoning_gym = require("reasoning_gym", "the spell_backward task")
    ds = reasoning_gym.create_dataset(
        "spell_backward", seed=seed, size=1, min_word_len=min_word_len, max_word_len=max_word_len
    )
    ds.words = [w for w in ds.words if w.isascii() and w.isalpha() and w.islower()]
    if not ds.words:
        raise ValueError(f"no lowercase words with {min_word_len} <= length <= {max_word_len}")
    for idx in count():
        item = ds[idx]
        yield _row("spell_backward", f"rev {item['metadata']['word']}=", item["answer"])


def basic_arithmetic_stream(
    seed: int,
    *,
    min_terms: int = 2,
    max_terms: int = 2,
    min_digits: int = 2,
    max_digits: int = 2,
    operators: str = "+",
) -> Iterator[Row]:
    """Expressions of d-digit integers (default: 2-digit additions, "47+38=" -> "85").

    Generated with Python `random` because reasoning-gym's basic_arithmetic draws
    operands in 0..10**d (not exactly d digits) and always inserts spaces.
    `operators` is any non-empty subset of "+-*"; usual precedence applies.
    """
    _check_range("terms", min_terms, max_terms, 1)
    _check_range("digits", min_digits, max_digits, 1)
    if not operators or set(operators) - set("+-*"):
        raise ValueError(f"operators must be a non-empty subset of '+-*', got {operators!r}")
    rng = random.Random(seed)
    while True:
        terms = [str(_draw_digits(rng, min_digits, max_digits)) for _ in range(rng.randint(min_terms, max_terms))]
        expr = terms[0] + "".join(rng.choice(operators) + t for t in terms[1:])
        # eval is safe: expr is built above from digits and "+-*" only.
        yield _row("basic_arithmetic", expr + "=", str(eval(expr, {"__builtins__": {}})))


def _draw_digits(rng: random.Random, min_digits: int, max_digits: int) -> int:
    digits = rng.randint(min_digits, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


STREAMS: dict[str, Callable[..., Iterator[Row]]] = {
    "chain_sum": chain_sum_stream,
    "number_sorting": number_sorting_stream,
    "spell_backward": spell_backward_stream,
    "basic_arithmetic": basic_arithmetic_stream,
    **LONG_STREAMS,
}

# ------------------------------------------------------------------- scorers


def score_number(prediction: str, example: Row) -> float:
    """reasoning-gym's decimal reward, counted only when exact ("+06" and "6.0" equal "6")."""
    compute_decimal_reward = require("reasoning_gym.utils", "number scoring").compute_decimal_reward

    return float(compute_decimal_reward(prediction.strip(), oracle_answer=example["answer"]) == 1.0)


def score_sorted(prediction: str, example: Row) -> float:
    """Exact match ignoring whitespace. reasoning-gym's sorting scorer is not used:
    it tolerates an error of 1 per value, which would accept "1,2,4" for "1,2,3"."""
    return float("".join(prediction.split()) == example["answer"])


@functools.cache
def _spell_scorer() -> Callable[[str, Row], float]:
    return require("reasoning_gym", "reversal scoring").create_dataset("spell_backward", seed=0, size=1).score_answer


def score_reversal(prediction: str, example: Row) -> float:
    """reasoning-gym's spell_backward scorer, binarised (it gives partial credit per prefix char)."""
    return float(_spell_scorer()(prediction.strip(), {"answer": example["answer"]}) == 1.0)


SCORERS: dict[str, Callable[[str, Row], float]] = {
    "chain_sum": score_number,
    "number_sorting": score_sorted,
    "spell_backward": score_reversal,
    "basic_arithmetic": score_number,
    **{name: score_exact for name in LONG_STREAMS},
}


def score_mixed(prediction: str, example: Row) -> float:
    """Dispatch on the row's `task` column so a mixture scores each sub-task its own way."""
    return SCORERS[example["task"]](prediction, example)


# ------------------------------------------------------------------ builders

DEFAULT_MIX_WEIGHTS: dict[str, float] = {"spell_backward": 0.25, "number_sorting": 0.25, "chain_sum": 0.25, "basic_arithmetic": 0.25}

# Mixtures by name: the bundled 8-block models' short tasks, and the long-answer regime tasks.
MIXES: dict[str, dict[str, float]] = {"mix": DEFAULT_MIX_WEIGHTS, "long_mix": LONG_MIX_WEIGHTS}
# A mixture's own knobs per sub-task, under the caller's (a caller's key wins; sub-tasks left out of weights drop)
MIX_KNOBS: dict[str, dict[str, dict[str, Any]]] = {"long_mix": LONG_MIX_KNOBS}


def knob_names(name: str) -> list[str]:
    """Difficulty knobs a procedural task accepts (keyword-only args of its generator)."""
    params = inspect.signature(STREAMS[name]).parameters.values()
    return [p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY]


def procedural_rows(name: str, n: int, spec: SeedSpec, unique: bool, knobs: dict[str, Any]) -> list[Row]:
    """First n rows of task `name` in `spec.split`, from the stream seeded for (name, split, seed)."""
    unknown = sorted(set(knobs) - set(knob_names(name)))
    if unknown:
        raise TypeError(f"{name}: unknown option(s) {unknown}; known: {knob_names(name) + ['unique', 'split']}")
    return collect(STREAMS[name](spec.derive(name), **knobs), n, spec.split, unique=unique)


def build_procedural(name: str, n: int, spec: SeedSpec, unique: bool = False, **knobs: Any) -> Task:
    """One procedural task. `unique=True` forbids repeated prompts (useful for evaluation)."""
    return _task(name, procedural_rows(name, n, spec, unique, knobs), SCORERS[name])


def build_mix(
    n: int,
    spec: SeedSpec,
    weights: dict[str, float] | None = None,
    unique: bool = False,
    name: str = "mix",
    **sub_knobs: dict[str, Any],
) -> Task:
    """Weighted mixture `name` (a key of MIXES); each row's sub-task is drawn independently from `weights`.

    Sub-task knobs go in one dict per sub-task, e.g. `chain_sum={"max_terms": 4}`.
    Each sub-task keeps its standalone stream, so the mix's chain_sum rows are the
    first rows of `load_task("chain_sum", ...)` with the same seed and knobs.
    """
    weights = dict(MIXES[name] if weights is None else weights)
    _check_weights(weights, sub_knobs)
    own = {k: v for k, v in MIX_KNOBS.get(name, {}).items() if weights.get(k, 0) > 0}
    sub_knobs = {k: {**own.get(k, {}), **sub_knobs.get(k, {})} for k in own.keys() | sub_knobs.keys()}
    names = list(weights)
    rng = random.Random(spec.derive("mix"))
    choices = rng.choices(names, weights=[weights[k] for k in names], k=n)
    streams = {
        k: iter(procedural_rows(k, choices.count(k), spec, unique, sub_knobs.get(k, {})))
        for k in names if k in choices
    }
    return _task(name, [next(streams[k]) for k in choices], score_mixed)


def _check_weights(weights: dict[str, float], sub_knobs: dict[str, Any]) -> None:
    bad = sorted(set(weights) - set(STREAMS))
    if bad:
        raise ValueError(f"mix weights name unknown sub-task(s) {bad}; known: {sorted(STREAMS)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"mix weights must be >= 0 with a positive sum, got {weights}")
    not_dicts = sorted(k for k, v in sub_knobs.items() if not isinstance(v, Mapping))
    if not_dicts:
        raise TypeError(f"mix: options {not_dicts} must be knob dicts, e.g. chain_sum={{'max_terms': 4}}")
    orphan = sorted(set(sub_knobs) - {k for k, w in weights.items() if w > 0})
    if orphan:
        raise TypeError(f"mix: option(s) {orphan} are not sub-tasks with a positive weight in {weights}")


def _task(name: str, rows: list[Row], scorer: Callable[[str, Row], float]) -> Task:
    """Wrap rows as a Task after checking they fit the character-level alphabet."""
    used = set().union(*(set(r["prompt"]) | set(r["answer"]) for r in rows))
    if not used <= set(CHARSET):
        raise RuntimeError(f"{name}: generated characters outside CHARSET: {sorted(used - set(CHARSET))}")
    return Task(name=name, dataset=to_dataset(rows), scorer=scorer)
