"""Task container, split/seed resolution and the split-filtered collection loop.

Everything here is independent of where problems come from, so the procedural
generators and the file-backed benchmarks share one notion of "split" and "seed".
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datasets import Dataset

SPLITS: tuple[str, ...] = ("train", "validation", "test")

# Bucket of hash(prompt) % 10 -> split. Fixed forever: changing it (or a prompt
# format) silently moves problems between splits of already-trained models.
_BUCKET_SPLIT: tuple[str, ...] = ("train",) * 8 + ("validation", "test")

Scorer = Callable[[str, dict[str, Any]], float]


def prompt_split(prompt: str) -> str:
    """Split a prompt belongs to, from a stable hash of its text.

    Partitioning by content (not by seed) is what makes train/validation/test
    disjoint even when a small problem space makes two seeds draw the same problem.
    """
    digest = hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest()
    return _BUCKET_SPLIT[int.from_bytes(digest, "big") % len(_BUCKET_SPLIT)]


@dataclass(frozen=True)
class SeedSpec:
    """A resolved `seed` argument: which split to draw from, and which stream.

    `named` is True when the caller passed a split name as the seed; file-backed
    benchmarks then keep file order instead of sampling.
    """

    split: str
    seed: int | str
    named: bool

    def derive(self, stream: str) -> int:
        """Deterministic 48-bit generator seed for one named stream (task, sub-task).

        Hashing (rather than `seed + offset`) keeps streams far apart: reasoning-gym
        seeds item i with `seed + i`, so nearby integer seeds would share items.
        """
        key = f"{stream}|{self.split}|{self.seed}".encode("utf-8")
        return int.from_bytes(hashlib.blake2b(key, digest_size=6).digest(), "big")


def resolve_seed(seed: int | str, split: str | None = None) -> SeedSpec:
    """Turn `seed` (int or split name) plus an optional `split` into a SeedSpec.

    An int seed draws from the *train* split unless `split` says otherwise, so
    fresh training data (seed=epoch) can never contain a validation/test problem.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if isinstance(seed, str):
        if seed not in SPLITS:
            raise ValueError(f"seed must be an int or one of {SPLITS}, got {seed!r}")
        if split is not None and split != seed:
            raise ValueError(f"seed={seed!r} conflicts with split={split!r}")
        return SeedSpec(split=seed, seed=seed, named=True)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int or one of {SPLITS}, got {seed!r}")
    return SeedSpec(split=split or "train", seed=seed, named=False)


def collect(
    stream: Iterable[dict[str, Any]],
    n: int,
    split: str,
    unique: bool = False,
    max_draws: int | None = None,
) -> list[dict[str, Any]]:
    """Take the first `n` rows of `stream` whose prompt hashes into `split`.

    Taking a prefix of one deterministic stream makes a smaller n a prefix of a
    larger n. `max_draws` turns an exhausted problem space (e.g. a tiny knob
    setting whose prompts all hash elsewhere) into an error instead of a hang.
    """
    max_draws = max_draws if max_draws is not None else 200 * n + 100_000
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for draws, row in enumerate(stream):
        if draws >= max_draws:
            break
        prompt = row["prompt"]
        if prompt_split(prompt) != split or (unique and prompt in seen):
            continue
        seen.add(prompt)
        rows.append(row)
        if len(rows) == n:
            return rows
    kind = "distinct " if unique else ""
    raise RuntimeError(
        f"found only {len(rows)} of {n} {kind}problems in split {split!r} after "
        f"{max_draws} draws; lower n, drop unique=True, or widen the difficulty knobs"
    )


def select_rows(rows: Sequence[dict[str, Any]], n: int, spec: SeedSpec, stream: str) -> list[dict[str, Any]]:
    """Pick n rows of a fixed file: file order for a named seed, a seeded sample otherwise.

    File-backed benchmarks already *are* a split, so a named seed just means
    "the first n, reproducibly"; an int seed gives a different subset per seed.
    """
    if n > len(rows):
        raise ValueError(f"{stream}: asked for n={n} but only {len(rows)} problems are available")
    if spec.named:
        return list(rows[:n])
    import random

    picks = random.Random(spec.derive(stream)).sample(range(len(rows)), n)
    return [rows[i] for i in picks]


def to_dataset(rows: list[dict[str, Any]]) -> Dataset:
    """Build an in-memory `datasets.Dataset` without ever touching the hub.

    The offline flags only matter if `datasets` is first imported here; nothing in
    this module calls a hub API either way.
    """
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from focuslib.extras import require

    return require("datasets", "focuslib.tasks").Dataset.from_list(rows)


@dataclass
class Task:
    """A fixed list of problems plus the rule that scores a prediction for one.

    `dataset` always has columns `prompt`, `answer` and `task` (the sub-task
    name, which equals `name` except in mixtures) plus per-task metadata.
    `has_reference` is False for prompt-only sets (sharegpt), whose score is NaN.
    `score_workers` > 1 lets `score_all` run slow scorers (code execution) in threads.
    """

    name: str
    dataset: Dataset
    scorer: Scorer
    has_reference: bool = True
    score_workers: int = 1

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.dataset)

    @property
    def prompts(self) -> list[str]:
        return list(self.dataset["prompt"])

    @property
    def answers(self) -> list[str]:
        return list(self.dataset["answer"])

    def score(self, prediction: str, example: dict[str, Any]) -> float:
        """Score one prediction (the generated answer text, without the prompt)."""
        return float(self.scorer(prediction, example))

    def score_all(self, predictions: Sequence[str]) -> list[float]:
        """Score predictions aligned with the dataset rows."""
        if len(predictions) != len(self):
            raise ValueError(f"{self.name}: got {len(predictions)} predictions for {len(self)} problems")
        pairs = list(zip(predictions, self.dataset))
        if self.score_workers <= 1:
            return [self.score(p, ex) for p, ex in pairs]
        with ThreadPoolExecutor(self.score_workers) as pool:
            return list(pool.map(lambda pe: self.score(*pe), pairs))

    def evaluate(self, predictions: Sequence[str]) -> dict[str, float]:
        """Mean score overall and per sub-task (`score/<task>`), ready for logging."""
        scores = self.score_all(predictions)
        by_task: dict[str, list[float]] = defaultdict(list)
        for s, task in zip(scores, self.dataset["task"]):
            by_task[task].append(s)
        out = {"score": _mean(scores), "n": float(len(scores))}
        if len(by_task) > 1:
            out.update({f"score/{t}": _mean(v) for t, v in sorted(by_task.items())})
        return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
