"""Long-answer procedural tasks: the regime FOCUS targets (answers of 12-60 tokens, 32-token blocks).

Every prompt has a fixed width, so the position of an answer token alone says
where its inputs are: a small character-level model can learn them as local
rules. The tasks span the range from strictly sequential to parallel decoding:

| task         | prompt          | answer                                  | what a token needs                        |
|--------------|-----------------|-----------------------------------------|-------------------------------------------|
| walk         | "walk rb v6 ... x 18=" | 18 of the 24 listed symbols of a-z0-9, each the successor of the one before it in the listed pairs, none twice | the previous answer token, looked up in the prompt: strictly sequential |
| repeat       | "rep k3q9 48="  | "k3q9k3q9..." cut to 48 characters       | the pattern and its own offset: parallel |
| count_by     | "cnt 37+7 24="  | 24 two-digit fields 37 44 51 ... mod 100, no separators | the previous field and the step: sequential across fields, carries inside |
| tribonacci   | "trib 371 48="  | 48 digits, d_i = d_{i-1}+d_{i-2}+d_{i-3} mod 10 (seeds 3,7,1) | the three digits before it: strictly sequential |
| running_sum  | "sum 3527...(48 digits) 40=" | 40 digits, a_i = a_{i-1} + prompt digit i mod 10 | the previous answer digit and the prompt digit a fixed distance back: strictly sequential |
| long_mix     | walk, repeat    | 24-31 tokens, one 32-token block         | walk 3/4 (28 symbols listed, 24-28 long), repeat 1/4 (24-31) |

The two-digit number before "=" is the answer length (in fields for count_by), so
the model knows where `<eos>` goes. Difficulty knob: the answer length range
(`min_len`/`max_len`, `min_fields`/`max_fields`); training can draw short answers
first (`focuslib.training.TrainConfig.curriculum_*`). Scores are exact match;
`prefix_match` gives the correct-prefix fraction used during training.

`walk` is pointer chasing: the prompt lists a permutation of 24 symbols drawn
from a-z0-9 as 24 pairs "xy" (y follows x) in random order, then a start symbol;
the answer is the walk from it, 12-24 symbols. A token is a function of the
token before it, found by an induction-head lookup (match the previous symbol
in the prompt, copy its partner), and no token can be decoded before its
predecessor: the sequential regime. The start lies on a cycle at least as long
as the walk, so no symbol comes twice: a walk that wraps (`wrap=True`) repeats
its first cycle, and a model decodes the repeats in parallel once one cycle is
out (measured: 67% of a block's masked rows per step, docs/design.md).
`alphabet`, `min_letters`/`max_letters` and `min_cycle`/`max_cycle` make it
easier for training to start on (fewer symbols, fewer pairs, short cycles).

`long_mix` fills most of one 32-token block with the answer: walks of 24-28
symbols through 28 listed pairs, and repeats of 24-31 characters. Short answers
would leave the block to `<eos>` filler, which a block decodes at its first
step, and against the prompt's rows (computed once) an oracle eviction could
then save only a third of the row-layers
(docs/design.md, "The regime testbed"). count_by, tribonacci and running_sum have
40-60-token answers and are not in it: the 8-layer x 192 model of stop 20 learned
count_by only after ~6 hours, tribonacci never (137 minutes at 0%), and running_sum
(a prompt digit read 53 positions back) stayed at its first digit in every probe
(docs/design.md, "The regime testbed").
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Any

Row = dict[str, Any]

PATTERN_ALPHABET: str = string.ascii_lowercase + string.digits


def _check_length(what: str, lo: int, hi: int, maximum: int = 99) -> None:
    if not 1 <= lo <= hi <= maximum:
        raise ValueError(f"need 1 <= min_{what}={lo} <= max_{what}={hi} <= {maximum}")


def tribonacci_stream(seed: int, *, min_len: int = 40, max_len: int = 60) -> Iterator[Row]:
    """Tribonacci digits mod 10 after three seed digits: "trib 371 08=" -> "17581439"."""
    _check_length("len", min_len, max_len)
    rng = random.Random(seed)
    while True:
        seeds = [rng.randint(0, 9) for _ in range(3)]
        n = rng.randint(min_len, max_len)
        digits = list(seeds)
        for _ in range(n):
            digits.append(sum(digits[-3:]) % 10)
        prompt = f"trib {''.join(map(str, seeds))} {n:02d}="
        yield {"prompt": prompt, "answer": "".join(map(str, digits[3:])), "task": "tribonacci"}


def count_by_stream(seed: int, *, min_fields: int = 20, max_fields: int = 30) -> Iterator[Row]:
    """Counting from s in steps of d mod 100, two digits per field: "cnt 95+7 04=" -> "95020916"."""
    _check_length("fields", min_fields, max_fields, maximum=49)
    rng = random.Random(seed)
    while True:
        start, step, n = rng.randint(0, 99), rng.randint(1, 9), rng.randint(min_fields, max_fields)
        answer = "".join(f"{(start + k * step) % 100:02d}" for k in range(n))
        yield {"prompt": f"cnt {start:02d}+{step} {n:02d}=", "answer": answer, "task": "count_by"}


def repeat_stream(seed: int, *, min_len: int = 40, max_len: int = 60, pattern_len: int = 4) -> Iterator[Row]:
    """A pattern of `pattern_len` letters/digits repeated and cut to n: "rep k3q9 10=" -> "k3q9k3q9k3"."""
    _check_length("len", min_len, max_len)
    if not 1 <= pattern_len <= 8:
        raise ValueError(f"pattern_len must be in 1..8, got {pattern_len}")
    rng = random.Random(seed)
    while True:
        pattern = "".join(rng.choice(PATTERN_ALPHABET) for _ in range(pattern_len))
        n = rng.randint(min_len, max_len)
        answer = (pattern * (n // pattern_len + 1))[:n]
        yield {"prompt": f"rep {pattern} {n:02d}=", "answer": answer, "task": "repeat"}


def running_sum_stream(seed: int, *, min_len: int = 40, max_len: int = 48, width: int = 48) -> Iterator[Row]:
    """Running sums mod 10 of `width` prompt digits, the first n of them: "sum 3527... 04=" -> "3870".

    Answer digit i = (answer digit i-1 + prompt digit i) mod 10. The prompt always
    holds `width` digits, so digit i sits at a fixed distance from answer digit i
    whatever n is: one relative-position read plus a two-digit sum per token.
    """
    _check_length("len", min_len, max_len, maximum=width)
    if not 1 <= width <= 60:
        raise ValueError(f"width must be in 1..60, got {width}")
    rng = random.Random(seed)
    while True:
        digits = [rng.randint(0, 9) for _ in range(width)]
        n = rng.randint(min_len, max_len)
        sums, total = [], 0
        for d in digits[:n]:
            total = (total + d) % 10
            sums.append(total)
        prompt = f"sum {''.join(map(str, digits))} {n:02d}="
        yield {"prompt": prompt, "answer": "".join(map(str, sums)), "task": "running_sum"}


WALK_ALPHABET: str = PATTERN_ALPHABET[:16]  # a-p, the default; `alphabet=` takes up to all of a-z0-9


def walk_stream(seed: int, *, min_len: int = 12, max_len: int = 24, min_cycle: int = 2, max_cycle: int | None = None,
                min_letters: int = 24, max_letters: int = 24, alphabet: int = 36, wrap: bool = False) -> Iterator[Row]:
    """Pointer chasing through a permutation: "walk ab ba cc ... a 05=" -> "babab".

    The permutation is a cycle of `min_cycle`-`max_cycle` letters through the start
    letter plus a random permutation of the remaining letters (distractor pairs), over
    the first `alphabet` symbols of a-z0-9 (default all 36). `min_letters`/`max_letters`
    below `alphabet` draw a random subset per problem (fewer pairs, cycles clipped to
    its size): an easier lookup for training to start on. `max_cycle` defaults to the
    alphabet's size.

    `wrap=False` keeps the walk from coming back to a letter: its length is drawn first
    (clipped to the letters drawn) and the cycle is at least that long, so every answer
    letter is new and none can be copied from a period earlier -- the one-token-per-step
    regime all the way through the answer.
    """
    _check_length("len", min_len, max_len)
    if not 2 <= alphabet <= len(PATTERN_ALPHABET):
        raise ValueError(f"alphabet must be in 2..{len(PATTERN_ALPHABET)} (symbols of a-z0-9), got {alphabet}")
    max_cycle = alphabet if max_cycle is None else max_cycle  # None: as many as the alphabet has
    _check_length("cycle", min_cycle, max_cycle, maximum=alphabet)
    _check_length("letters", min_letters, max_letters, maximum=alphabet)
    if min_letters < 2:
        raise ValueError(f"a walk needs at least 2 letters, got min_letters={min_letters}")
    symbols = PATTERN_ALPHABET[:alphabet]
    rng = random.Random(seed)
    while True:
        letters = list(symbols)
        rng.shuffle(letters)
        if min_letters < max_letters:  # the default (all 16) draws nothing, so its problems stay the same
            letters = letters[:rng.randint(min_letters, max_letters)]
        else:
            letters = letters[:max_letters]
        if wrap:
            length = rng.randint(min(min_cycle, len(letters)), min(max_cycle, len(letters)))
        else:
            n = rng.randint(min(min_len, len(letters)), min(max_len, len(letters)))
            length = rng.randint(max(n, min(min_cycle, len(letters))), max(n, min(max_cycle, len(letters))))
        cycle, rest = letters[:length], letters[length:]
        succ = {a: b for a, b in zip(cycle, cycle[1:] + cycle[:1])}
        succ.update(zip(rest, rng.sample(rest, len(rest))))
        pairs = [a + succ[a] for a in symbols if a in succ]
        rng.shuffle(pairs)
        if wrap:
            n = rng.randint(min_len, max_len)
        walk, x = [], cycle[0]
        for _ in range(n):
            x = succ[x]
            walk.append(x)
        prompt = f"walk {' '.join(pairs)} {cycle[0]} {n:02d}="
        yield {"prompt": prompt, "answer": "".join(walk), "task": "walk"}


LONG_STREAMS = {"tribonacci": tribonacci_stream, "count_by": count_by_stream, "repeat": repeat_stream,
                "walk": walk_stream, "running_sum": running_sum_stream}

# The sequential task carries most of the mixture: it is the one in FOCUS's regime; repeat is the parallel end.
LONG_MIX_WEIGHTS: dict[str, float] = {"walk": 0.75, "repeat": 0.25}
# long_mix's own sub-task knobs (under the caller's): every answer fills most of one 32-token block
LONG_MIX_KNOBS: dict[str, dict[str, Any]] = {
    "walk": {"min_letters": 28, "max_letters": 28, "min_len": 24, "max_len": 28},
    "repeat": {"min_len": 24, "max_len": 31},
}


def score_exact(prediction: str, example: Row) -> float:
    """Exact match of the whole answer, surrounding whitespace ignored."""
    return float(prediction.strip() == example["answer"])


def prefix_match(prediction: str, answer: str) -> float:
    """Fraction of the answer's characters before the first wrong one (1.0 = exact; extra output is ignored)."""
    pred = prediction.strip()
    n = next((i for i, (p, a) in enumerate(zip(pred, answer)) if p != a), min(len(pred), len(answer)))
    return n / max(len(answer), 1)
