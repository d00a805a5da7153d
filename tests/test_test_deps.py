"""Every third-party module the tests import is declared in pyproject.toml.

A test module that guards an import with try/except (or importorskip) silently defines no
tests when the package is missing; this check makes an undeclared test dependency a failure
instead, whichever test file needs it. Packages of the optional extras (vllm, ray) count as
declared: tests that touch them must handle both cases on purpose.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LOCAL = {"datagen", "finetune", "bench"} | {p.stem for p in (ROOT / "tests").glob("*.py")}  # bench: the repo's own scripts


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _closure(names: set[str]) -> set[str]:
    """The declared distributions and everything they require (installed ones only)."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def _imported_top_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_test_imports_are_declared_in_dev_extra() -> None:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    declared = {_name(r) for r in project["dependencies"] + extras}
    allowed = _closure(declared)
    dists_of = metadata.packages_distributions()
    missing = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        for module in _imported_top_modules(path) - LOCAL - set(sys.stdlib_module_names):
            dists = {_name(d) for d in dists_of.get(module, [module])}
            if not dists & allowed:
                missing.setdefault(module, []).append(path.name)
    assert not missing, f"imported by tests but not declared in pyproject.toml (dev extra?): {missing}"
