"""The import graph: policies and kernels import nothing of the decoder, and no module imports itself back.

Parsed statically (ast), so the test sees imports inside functions too; imports under
`if TYPE_CHECKING:` never run and are ignored. Importing `a.b.c` counts as importing the
packages `a` and `a.b` as well, whose __init__ modules run first (except the importing
module's own ancestors, which are already initialising).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("focuslib", "policies", "kernels", "experiments")
# the folders installed under the focuslib namespace (pyproject's package-dir mapping)
MAPPED = {"policies": "focuslib.policies", "kernels": "focuslib.kernels", "experiments": "focuslib.experiments"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    top, _, rest = name.partition(".")
    return MAPPED[top] + (f".{rest}" if rest else "") if top in MAPPED else name


def _source(module: str) -> Path | None:
    """The file of a project module name (focuslib.policies.x -> policies/x.py), or None."""
    for folder, mapped in MAPPED.items():
        if module == mapped or module.startswith(mapped + "."):
            module = folder + module[len(mapped):]
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """Project modules imported by one file (with their parent packages)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST, depth: int) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) and top_level_only:
                continue
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in child.names]
            for t in targets:
                parts = t.split(".")
                for i in range(1, len(parts) + 1):
                    mod = ".".join(parts[:i])
                    if parts[0] == "focuslib" and _source(mod) is not None:
                        found.add(mod)
            visit(child, depth + 1)

    visit(ast.parse(path.read_text()), 0)
    # a module's own ancestor packages are already initialising when it runs: not an edge
    return {m for m in found if m != name and not name.startswith(m + ".")}


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")]
    return {_module_name(p): _imports(p, top_level_only) for p in files}


def _closure(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_policies_and_kernels_never_import_the_decoder():
    graph = _graph(top_level_only=False)
    for module in graph:
        if module.startswith(("focuslib.policies", "focuslib.kernels")):
            reached = _closure(graph, module)
            assert "focuslib.decoder" not in reached, f"{module} imports focuslib.decoder (via {sorted(reached)})"
    assert "focuslib.decoder" not in _closure(graph, "focuslib.contract")


def test_the_graph_is_not_empty():
    """Guards the two tests above against passing vacuously (e.g. after a rename)."""
    graph = _graph(top_level_only=False)
    assert "focuslib.contract" in _closure(graph, "focuslib.policies.eviction")
    assert "focuslib.decoder" in _closure(graph, "focuslib.experiments.decode")


def test_no_import_cycles_at_module_level():
    graph = _graph(top_level_only=True)
    for module in graph:
        assert module not in _closure(graph, module), f"{module} imports itself back at module level"


def test_lazy_exports_are_the_functions_not_the_submodules():
    import subprocess
    import sys

    code = ("from focuslib import DiffusionDecoder, EvalResult, evaluate, load_trace, load_model\n"
            "import focuslib, inspect\n"
            "assert inspect.isfunction(evaluate) and inspect.isfunction(focuslib.evaluate), focuslib.evaluate\n"
            "assert inspect.isfunction(load_trace) and inspect.isclass(DiffusionDecoder)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_bare_name_kernels_is_hugging_faces_package_not_this_folder(tmp_path):
    """From a checkout's root (on sys.path), `import kernels` must not shadow Hugging Face's `kernels`
    (transformers imports it when installed); without it installed, the error names focuslib.kernels."""
    import importlib.metadata
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = "import kernels, focuslib.kernels as ours; print(kernels.__file__); print(ours.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    try:
        importlib.metadata.version("kernels")  # the distribution, whatever sys.path's order
        installed = True
    except importlib.metadata.PackageNotFoundError:
        installed = False
    if installed:
        theirs, ours = out.stdout.split()
        assert "site-packages" in theirs and Path(ours).parent == root / "kernels", out
    else:
        assert out.returncode != 0 and "focuslib.kernels" in out.stderr, out


@pytest.mark.parametrize("module,config,key", [("focuslib.conf", "config", "model"),
                                                ("focuslib.conf", "bench", "stacks"),
                                                ("focuslib.experiments.train_conf", "train", "model")])
def test_configs_compose_by_module_as_an_installed_app_finds_them(module, config, key):
    """An installed console script resolves its config_path to a module (`focuslib.conf`), so the config folders
    must be importable packages (a missing conf/__init__.py broke `pip install .`: "Primary config module
    'focuslib.conf' not found")."""
    from hydra import compose, initialize_config_module

    import focuslib.experiments.config_checks  # noqa: F401  (registers the schemas)
    import focuslib.experiments.train  # noqa: F401

    with initialize_config_module(config_module=module, version_base=None):
        cfg = compose(config)
    assert key in cfg
