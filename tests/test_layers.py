"""The import layers of STYLE.md, checked rather than remembered: `lint-imports` keeps the
contract in pyproject.toml, every module is placed in a layer, and no import cycle exists
(type-only and in-function imports count: a cycle is a cycle however it is spelt)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def test_lint_imports_keeps_the_layer_contracts() -> None:
    tool = Path(sys.executable).parent / "lint-imports"
    proc = subprocess.run([str(tool), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout


def test_every_module_sits_in_a_layer() -> None:
    """A new module must be placed, or the layer contract would silently not cover it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    placed = {name.strip() for layer in config["layers"] for name in layer.split(":")}
    graph = grimp.build_graph("datagen", include_external_packages=False, cache_dir=None)
    unplaced = sorted(m for m in graph.modules if m != "datagen"
                      and not any(m == p or m.startswith(p + ".") for p in placed))
    assert not unplaced, f"place these in pyproject's layer contract: {unplaced}"


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("datagen", "finetune", include_external_packages=False, cache_dir=None)
    cycles = _strongly_connected(graph)
    assert not cycles, f"import cycles: {cycles}"


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("a", "a.x", "a.y", "a.z"):
        graph.add_module(name)
    graph.add_import(importer="a.x", imported="a.y")
    graph.add_import(importer="a.y", imported="a.x")
    graph.add_import(importer="a.y", imported="a.z")
    assert _strongly_connected(graph) == [["a.x", "a.y"]]


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph.find_modules_directly_imported_by(module):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found
