"""The documentation cannot rot: docs/policies.md runs, its Hydra routes compose, citations resolve.

* every ```python block of docs/policies.md runs, in order, in one namespace (the blocks
  assert what they show, on tiny random models);
* the two Hydra routes of docs/policies.md (command-line `_target_`, a config group option on
  `hydra.searchpath`) compose and validate, built from the page's own module, YAML and commands;
* every `docs/design.md, "<heading>"` citation in the project names a heading of docs/design.md;
* no tracked file outside docs/ cites the private design notes the project was built from
  (users do not have them).
"""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POLICIES_MD = ROOT / "docs" / "policies.md"
DESIGN_MD = ROOT / "docs" / "design.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def blocks(path: Path, lang: str) -> list[str]:
    """The fenced code blocks of `path` in language `lang`, in order."""
    return [body for kind, body in FENCE.findall(path.read_text()) if kind == lang]


def test_policies_guide_runs():
    code = blocks(POLICIES_MD, "python")
    assert len(code) >= 6, "docs/policies.md lost its examples"
    namespace: dict = {"__name__": "docs_policies"}
    start = time.perf_counter()
    for i, body in enumerate(code):
        exec(compile(body, f"docs/policies.md[python block {i}]", "exec"), namespace)  # noqa: S102
    assert time.perf_counter() - start < 30  # the page promises fast examples (about 5 s here)
    for name in ("MostConfident", "KeepLeftmost", "QueryNormGrowth", "CountRows", "Ramp"):
        assert name in namespace, f"the worked example {name} is gone from docs/policies.md"


def _module_block() -> str:
    """The external-package example of docs/policies.md (the block that starts '# mypkg/leftmost.py')."""
    found = [b for b in blocks(POLICIES_MD, "python") if b.startswith("# mypkg/leftmost.py")]
    assert len(found) == 1, "docs/policies.md must show mypkg/leftmost.py once"
    return found[0]


def _hydra_commands() -> list[list[str]]:
    """Overrides of the `python -m experiments.decode` commands in the page's bash blocks."""
    out = []
    for body in blocks(POLICIES_MD, "bash"):
        for line in body.splitlines():
            words = shlex.split(line)
            if "experiments.decode" in words:
                out.append(words[words.index("experiments.decode") + 1:])
    return out


@pytest.fixture
def external_package(tmp_path, monkeypatch):
    """The page's mypkg/ and my_conf/ in a fresh directory, which is the working directory and on sys.path."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "leftmost.py").write_text(_module_block())
    for body in blocks(POLICIES_MD, "yaml"):
        target = body.splitlines()[0].removeprefix("#").strip()
        (tmp_path / target).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / target).write_text(body)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:
        del sys.modules[name]


def test_hydra_routes_of_the_guide(external_package):
    from hydra import compose, initialize_config_dir

    from focuslib.experiments.config_checks import plan_run
    from focuslib import DiffusionDecoder
    from focuslib.testing import tiny_model

    commands = _hydra_commands()
    assert len(commands) == 2 and any(any(w.startswith("hydra.searchpath=") for w in c) for c in commands)
    for overrides in commands:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
            cfg = compose("config", overrides=[*overrides, "task.n=2"])
        plan = plan_run(cfg)
        assert type(plan.eviction).__module__ == "mypkg.leftmost" and plan.eviction.layer == 2
        # check_only does not build a decoder; this does (and decodes a little)
        decoder = DiffusionDecoder(tiny_model("sdar", n_layers=4), plan.unmasking, plan.eviction, plan.budget)
        assert decoder.generate([[3, 4, 5]], gen_length=8, stop_at_eos=False).stats.steps > 0


# -------------------------------------------------------------------------- citations

PRIVATE_NOTES = ("DESIGN" + ".md", "../" + "shared", "/work/" + "shared")  # spelled apart: this file is scanned too
CITATION = re.compile(r'docs/design\.md,[\s#*]*\\?"([^"\\]+)\\?"')


def _project_text_files() -> list[tuple[str, str]]:
    """(path, text) of tracked and untracked-but-not-ignored files; binary files and tests/data skipped."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                                capture_output=True, check=True).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    out = []
    for rel in sorted(set(filter(None, listed.split("\0")))):
        path = ROOT / rel
        if rel.startswith("tests/data/") or not path.is_file():
            continue
        raw = path.read_bytes()
        if b"\0" in raw[:8192]:
            continue
        try:
            out.append((rel, raw.decode("utf-8")))
        except UnicodeDecodeError:
            continue
    return out


def test_design_citations_name_real_headings():
    headings = {m.group(1).strip() for m in re.finditer(r"^#{2,3} (.+)$", DESIGN_MD.read_text(), re.MULTILINE)}
    cited = {(rel, name) for rel, text in _project_text_files() for name in CITATION.findall(text)}
    assert cited, "no file cites docs/design.md any more: is the pattern stale?"
    missing = sorted(f"{rel}: {name!r}" for rel, name in cited if name not in headings and not name.startswith("<"))
    assert not missing, f"citations of docs/design.md sections that do not exist: {missing}"


def test_no_file_outside_docs_cites_the_private_design_notes():
    offenders = [f"{rel}:{n + 1}: {line.strip()}"
                 for rel, text in _project_text_files() if not rel.startswith("docs/")
                 for n, line in enumerate(text.splitlines()) if any(p in line for p in PRIVATE_NOTES)]
    assert not offenders, "cite docs/design.md sections instead:\n" + "\n".join(offenders)


# ---------------------------------------------------------------- command outputs shown in the docs


def test_doc_outputs_masks_only_wall_clock():
    from experiments.doc_outputs import match

    shown = ["accuracy 79.7% | 1475 tokens/s | 8 forward passes | 0.4 s",
             "| run | accuracy | tokens_per_s | row_layers |", "|---|---|---|---|", "| 0 | 79.7% | 1247.7 | 18920 |"]
    timing = ["accuracy 79.7% | 903 tokens/s | 8 forward passes | 1.2 s",
              "| run | accuracy | tokens_per_s | row_layers |", "|---|---|---|---|", "| 0 | 79.7% | 611.0 | 18920 |"]
    assert match(shown, timing) is not None
    assert match(shown, [timing[0].replace("8 forward", "9 forward"), *timing[1:]]) is None
    assert match(shown, [*timing[:3], "| 0 | 79.7% | 611.0 | 18921 |"]) is None
    assert match(["...", shown[0], "..."], ["title", timing[0], "wrote x"]) == [None, 1, None]
    assert match([shown[0], "..."], ["title", timing[0]]) is None  # anchored at the start


def test_every_fast_output_block_reproduces():
    """Rerun every command output block of README.md and docs/ (not bench/train) against the code."""
    from experiments.doc_outputs import all_blocks, check

    blocks = list(all_blocks())
    assert len(blocks) >= 9, "output blocks disappeared from the docs"
    errors = check(blocks, write=False)
    assert not errors, "\n".join(errors) + "\n(regenerate: python -m experiments.doc_outputs --write)"


def test_doc_outputs_only_selects_blocks_by_command():
    from experiments.doc_outputs import all_blocks, main

    picked = list(all_blocks(["README.md"], slow=True, only="experiments.overhead"))
    assert picked and all(any("experiments.overhead" in c for c in b.commands) for b in picked)
    assert len(picked) < len(list(all_blocks(["README.md"], slow=True)))
    assert not list(all_blocks(["README.md"], slow=False, only="experiments.overhead"))  # slow blocks need slow
    with pytest.raises(SystemExit):
        main(["README.md", "--only", "no such command anywhere"])
