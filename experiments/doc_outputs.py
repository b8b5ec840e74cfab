"""Every command output shown in README.md and docs/ is produced by code: rerun, check, rewrite.

Two kinds of output blocks are recognised in the Markdown files:

* a fenced block with no language whose first line is a shell prompt (`$ python -m
  experiments.decode ...`): one or more commands, each followed by what it prints;
* the text between `<!-- doc-output: COMMAND -->` and `<!-- /doc-output -->` (a table
  printed by COMMAND, e.g. the benchmark's), shown outside a code block.

`python -m experiments.doc_outputs` reruns the commands (in a fresh working directory, with
this checkout on `PYTHONPATH`) and fails when a block disagrees with what the code prints
now; `--write` rewrites the blocks instead. Only deterministic content is compared:
wall-clock numbers (tokens/s, seconds, speedups, Pareto marks, the report's noise
paragraphs), timestamps and absolute paths are masked on both sides. A block may elide
lines with a line `...` (its other lines must appear in order); `--write` then refreshes the
lines it can match and refuses a block whose deterministic lines changed. Commands that take
minutes (`experiments.bench`, `experiments.train`, `experiments.overhead`, `torchrun`) run only
with `--slow`.

    python -m experiments.doc_outputs                 # check the fast blocks (a test runs this)
    python -m experiments.doc_outputs --slow --write  # regenerate everything (minutes)
    python -m experiments.doc_outputs README.md --slow --write --only experiments.overhead  # some blocks
    python -m experiments.doc_outputs README.md --slow --write --only bench --keep /tmp/runs  # keep bench.png
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = ("README.md", "docs/experiments.md")
SLOW_COMMANDS = ("experiments.bench", "experiments.train", "experiments.overhead", "torchrun")
FENCE = re.compile(r"^```\n(\$ .*?)^```$", re.MULTILINE | re.DOTALL)
MARKED = re.compile(r"^<!-- doc-output: (.+?) -->\n(.*?)^<!-- /doc-output -->$", re.MULTILINE | re.DOTALL)
# Table columns whose cells are wall-clock measurements (or derived from them).
VOLATILE_COLUMNS = {"tokens_per_s", "wall_time_s", "speedup", "speedup_share", "Pareto", "tokens/s",
                    "decoder tokens/s", "minimal loop tokens/s", "decoder / minimal", "LLaDA generate.py tokens/s",
                    "decoder / LLaDA"}
# (pattern, replacement) applied to every line on both sides.
MASKS = [
    (re.compile(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\]"), "[TIME]"),
    (re.compile(r"\S*?(outputs|multirun)/"), r"\1/"),
    (re.compile(r"multirun/(decode/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d|doc\d+)"), "multirun/SWEEP"),
    (re.compile(r"outputs/(\w+)/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d"), r"outputs/\1/RUN"),
    (re.compile(r"[\d.]+ tokens/s"), "N tokens/s"),
    (re.compile(r"\| [\d.]+ s$"), "| N s"),
    (re.compile(r"^(Timing noise|Runs within noise).*"), r"\1 ..."),
]
PROGRESS = re.compile(r"\r|\d+%\|")  # tqdm lines


@dataclass
class Block:
    """One output block of a doc: where it is, its commands and the output it shows."""

    path: Path
    span: tuple[int, int]      # character range of the shown output (or of the whole fenced body)
    commands: list[str]        # as shown in the doc
    shown: list[list[str]]     # per command, the lines shown after it
    fenced: bool

    @property
    def slow(self) -> bool:
        return any(word in cmd for cmd in self.commands for word in SLOW_COMMANDS)

    @property
    def where(self) -> str:
        line = self.path.read_text()[: self.span[0]].count("\n") + 1
        return f"{self.path.relative_to(ROOT)}:{line}"


def find_blocks(path: Path) -> list[Block]:
    """The output blocks of one Markdown file, in order."""
    text, out = path.read_text(), []
    for m in FENCE.finditer(text):
        commands, shown = [], []
        for line in m.group(1).rstrip("\n").split("\n"):
            if line.startswith("$ "):
                commands.append(line[2:])
                shown.append([])
            else:
                shown[-1].append(line)
        for lines in shown:  # a blank line separates one command's output from the next command
            while lines and not lines[-1]:
                lines.pop()
        out.append(Block(path, m.span(1), commands, shown, fenced=True))
    for m in MARKED.finditer(text):
        out.append(Block(path, m.span(2), [m.group(1)], [m.group(2).rstrip("\n").split("\n")], fenced=False))
    return sorted(out, key=lambda b: b.span)


# ------------------------------------------------------------------ running


def run_commands(commands: Sequence[str], workdir: Path) -> list[list[str]]:
    """Run a block's commands in order in `workdir`; each one's stdout+stderr lines, progress bars dropped.

    A sweep (`-m`) without `hydra.sweep.dir` gets a fresh one, and a later command naming a
    timestamped sweep directory (as the docs show it) reads that one instead.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("HYDRA_FULL_ERROR", None)  # the docs show Hydra's short error form
    outputs, sweep = [], None
    for k, shown_cmd in enumerate(commands):
        words = shlex.split(shown_cmd)
        if words[0] == "python":
            words[0] = sys.executable
        if "-m" in words[2:] and not any(w.startswith("hydra.sweep.dir=") for w in words):
            sweep = f"multirun/doc{k}"
            words.append(f"hydra.sweep.dir={sweep}")
        elif sweep is not None:
            words = [sweep if re.fullmatch(r"multirun/decode/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", w) else w for w in words]
        proc = subprocess.run(words, cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
        lines = (proc.stdout + proc.stderr).replace("\r\n", "\n").split("\n")
        outputs.append(_clean([line.replace(f"{workdir}{os.sep}", "") for line in lines]))
    return outputs


def _clean(lines: list[str]) -> list[str]:
    kept = [ln.rstrip() for ln in lines if not PROGRESS.search(ln) and not ln.startswith("batch ")]
    while kept and not kept[-1]:
        kept.pop()
    return kept


# ------------------------------------------------------------------ comparing


def normalise(lines: Sequence[str]) -> list[str]:
    """Lines with wall-clock values, timestamps and paths masked (table cells by column name)."""
    out, volatile = [], set()
    for i, line in enumerate(lines):
        if line.startswith("|") and i + 1 < len(lines) and re.fullmatch(r"\|(\s*-+\s*\|)+", lines[i + 1]):
            header = [c.strip() for c in line.strip("|").split("|")]
            volatile = {j for j, name in enumerate(header) if name in VOLATILE_COLUMNS}
        elif line.startswith("|") and volatile:
            cells = line.strip("|").split("|")
            line = "|" + "|".join(" * " if j in volatile else c for j, c in enumerate(cells)) + "|"
        elif not line.startswith("|"):
            volatile = set()
        for pattern, repl in MASKS:
            line = pattern.sub(repl, line)
        out.append(line)
    return out


def match(shown: list[str], actual: list[str]) -> list[int] | None:
    """Indices of `actual` matching each shown line (None for `...`), or None if they disagree.

    Without `...` the normalised lines must be equal; with it, the runs of shown lines
    between `...` must appear in `actual` in order (anchored at the ends without `...`).
    """
    s, a = normalise(shown), normalise(actual)
    if not shown:  # a command shown without its output: only run
        return []
    if "..." not in shown:
        return list(range(len(a))) if s == a else None
    where: list[int | None] = []
    pos, segments = 0, _segments(s)
    for n, (start, seg) in enumerate(segments):
        if n > 0:
            where.append(None)  # the `...` before this segment
        if not seg:
            continue
        if start == 0:  # the block starts with this segment: it must start the output
            hit = 0 if a[:len(seg)] == seg else None
        else:
            hit = next((i for i in range(pos, len(a) - len(seg) + 1) if a[i:i + len(seg)] == seg), None)
        if hit is None or (n == len(segments) - 1 and hit + len(seg) != len(a)):
            return None
        where.extend(range(hit, hit + len(seg)))
        pos = hit + len(seg)
    return where  # type: ignore[return-value]


def _segments(lines: list[str]) -> list[tuple[int, list[str]]]:
    """Split at `...` lines: (index of the segment's first line, its lines)."""
    out, start, seg = [], 0, []
    for i, line in enumerate(lines):
        if line == "...":
            out.append((start, seg))
            start, seg = i + 1, []
        else:
            seg.append(line)
    out.append((start, seg))
    return out


def render(block: Block, outputs: list[list[str]]) -> str | None:
    """The block's new text from fresh outputs (None: an elided block whose deterministic lines changed)."""
    parts = []
    for cmd, shown, actual in zip(block.commands, block.shown, outputs):
        where = match(shown, actual) if "..." in shown or not shown else list(range(len(actual)))
        if where is None:
            return None
        lines = ["..." if i is None else actual[i] for i in where]
        parts.append(([f"$ {cmd}"] if block.fenced else []) + lines)
    for part in parts[:-1]:
        if len(part) > 1:
            part.append("")
    return "\n".join(line for part in parts for line in part) + "\n"


def check(blocks: Sequence[Block], write: bool, keep: Path | None = None) -> list[str]:
    """Rerun each block; the disagreements (or, with `write`, rewrite the files). Returns error messages.

    Each block runs in a fresh temporary directory, or in `keep`/<k> (kept: plots the commands wrote).
    """
    errors, edits = [], {}
    for k, block in enumerate(blocks):
        with contextlib.nullcontext(keep / str(k)) if keep else tempfile.TemporaryDirectory(prefix="doc_outputs_") as tmp:
            Path(tmp).mkdir(parents=True, exist_ok=True)
            outputs = run_commands(block.commands, Path(tmp))
        bad = [k for k, (s, a) in enumerate(zip(block.shown, outputs)) if match(s, a) is None]
        print(f"{'drift' if bad else 'ok   '} {block.where}: {' && '.join(block.commands)[:100]}", flush=True)
        new = render(block, outputs) if write else None  # None also: an elided block that drifted
        if new is not None:
            edits.setdefault(block.path, []).append((block.span, new))
        if new is not None or not bad:
            continue
        k = bad[0]
        errors.append(f"{block.where}: `{block.commands[k]}` prints\n" + "\n".join(
            f"    {line}" for line in outputs[k]) + "\n  but the doc shows\n" + "\n".join(f"    {line}" for line in block.shown[k]))
    for path, changes in edits.items():
        text = path.read_text()
        for (lo, hi), new in sorted(changes, reverse=True):
            text = text[:lo] + new + text[hi:]
        path.write_text(text)
    return errors


def all_blocks(files: Sequence[str] = DOC_FILES, slow: bool = False, only: str | None = None) -> Iterator[Block]:
    """The blocks of `files`: fast ones, slow ones too with `slow`; with `only`, those whose commands contain it."""
    for name in files:
        for block in find_blocks(ROOT / name):
            if (slow or not block.slow) and (only is None or any(only in cmd for cmd in block.commands)):
                yield block


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.doc_outputs", description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="*", default=list(DOC_FILES), help="Markdown files, relative to the checkout")
    parser.add_argument("--write", action="store_true", help="rewrite the blocks with fresh output")
    parser.add_argument("--slow", action="store_true", help="also run commands that take minutes (bench, train)")
    parser.add_argument("--only", metavar="TEXT", help="only the blocks whose commands contain TEXT")
    parser.add_argument("--keep", metavar="DIR", type=Path,
                        help="run block k in DIR/k and keep what it wrote (e.g. a benchmark's plot)")
    args = parser.parse_args(argv)
    blocks = list(all_blocks(args.files, args.slow, args.only))
    if args.only is not None and not blocks:
        parser.error(f"no block of {args.files} matches --only {args.only!r}" + ("" if args.slow else " (slow blocks need --slow)"))
    errors = check(blocks, args.write, args.keep)
    for message in errors:
        print(f"\n{message}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
