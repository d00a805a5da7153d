"""The dependency between the two packages points one way: finetune uses datagen, never back.

datagen reaches the SFT stage through the `datagen.plugins` entry point; a direct import
would bring back the cycle (and make the core unusable without the training stack)."""

from __future__ import annotations

import ast
from pathlib import Path

DATAGEN = Path(__file__).resolve().parent.parent / "datagen"


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "import_module" and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                names.add(first.value)
    return names


def test_datagen_never_imports_finetune() -> None:
    offenders = {
        str(path.relative_to(DATAGEN.parent)): sorted(n for n in imported_modules(path) if n.split(".")[0] == "finetune")
        for path in DATAGEN.rglob("*.py")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_check_sees_every_import_form(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import finetune.train\nfrom finetune import plugin\nimportlib.import_module('finetune.cli')\n")
    assert imported_modules(sample) == {"finetune.train", "finetune", "finetune.cli"}


def test_finetune_plugin_is_registered() -> None:
    from datagen.plugins import plugin

    finetune = plugin("finetune")
    assert finetune.FinetuneConfig().method == "lora" and callable(finetune.train)
