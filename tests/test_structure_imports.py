"""The package's import graph: every module imports, no cycles, stages point downward only, and no
function-level import of another module of the package (which is how cycles hide).

The graph is read from the source with `ast` (every import statement, at any depth), so it covers code
paths a test run may not take.
"""

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# source folder -> package (pyproject's package-dir)
FOLDERS = {"cebench": "cebench", "pretrain": "cebench.pretrain", "transfer": "cebench.transfer",
           "retrieval": "cebench.retrieval", "benchmarks": "cebench.benchmarks"}
# stage -> the stages it may import (the layout: core <- pretrain <- transfer, retrieval <- benchmarks)
ALLOWED = {"core": {"core"}, "pretrain": {"core", "pretrain"}, "transfer": {"core", "pretrain", "transfer"},
           "retrieval": {"core", "pretrain", "retrieval"},
           "benchmarks": {"core", "pretrain", "transfer", "retrieval", "benchmarks"}}


def _modules() -> dict[str, Path]:
    mods = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join([package, *parts])] = path
    return mods


MODULES = _modules()


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED and parts[1] != "core" else "core"


def _imports(module: str, path: Path):
    """(target module, line, at function level) for every import of a package module in `path`."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # `from pkg import submodule` imports the submodule; `from mod import name` the module
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in MODULES else stem for a in node.names]
        else:
            continue
        for t in targets:
            if t in MODULES:
                yield t, node.lineno, node.col_offset > 0


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in _imports(m, p) if t != m} for m, p in MODULES.items()}


def test_every_module_imports():
    assert len(MODULES) > 50 and "cebench.transfer.det.train" in MODULES
    for m in MODULES:
        importlib.import_module(m)


def test_the_import_graph_is_acyclic():
    graph, state, stack = _graph(), {}, []

    def visit(m):  # depth-first; a grey node met again closes a cycle
        state[m] = "grey"
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == "grey":
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = "black"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_stages_import_downward_only():
    bad = [f"{m} imports {t}" for m, targets in _graph().items() for t in targets
           if _stage(t) not in ALLOWED[_stage(m)]]
    assert not bad, bad


def test_no_function_level_imports_inside_the_package():
    lazy = [f"{p.relative_to(ROOT)}:{line} imports {t}" for m, p in MODULES.items()
            for t, line, nested in _imports(m, p) if nested]
    assert not lazy, lazy


def test_the_checker_sees_cycles_and_nested_imports(tmp_path, monkeypatch):
    """The graph reader itself: relative, nested and `from pkg import submodule` imports all count."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from .b import x\n")
    b.write_text("def f():\n    from cebench.transfer import a\n")
    monkeypatch.setitem(MODULES, "cebench.transfer.a", a)
    monkeypatch.setitem(MODULES, "cebench.transfer.b", b)
    assert list(_imports("cebench.transfer.a", a)) == [("cebench.transfer.b", 1, False)]
    assert list(_imports("cebench.transfer.b", b)) == [("cebench.transfer.a", 2, True)]
    with pytest.raises(pytest.fail.Exception, match="cebench.transfer.a -> cebench.transfer.b -> cebench.transfer.a"):
        test_the_import_graph_is_acyclic()
