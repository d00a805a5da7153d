"""Parts of the flow that ship as their own package and plug in by name.

The SFT stage lives in the top-level `finetune` package, which itself uses datagen's records
and readers. If datagen imported it back, the two would form an import cycle and the core
could not run (or be tested) without torch-heavy training code. Instead `finetune` registers
itself under the entry-point group `datagen.plugins` (see pyproject.toml), and the pipeline
and CLI find it there, exactly as they would find a third-party stage.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from datagen.errors import DatagenError

GROUP = "datagen.plugins"


def plugin(name: str) -> Any:
    """The object registered as `name` (e.g. the `finetune.plugin` module)."""
    found = entry_points(group=GROUP, name=name)
    if not found:
        raise DatagenError(
            f"no '{name}' plugin is installed (entry point group {GROUP}); "
            "install datagen with pip (pip install -e . in a checkout) so its plugins register"
        )
    return next(iter(found)).load()


def plugin_names() -> list[str]:
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load_plugins() -> list[Any]:
    """Import every plugin once: a plugin module that calls `datagen.registry.register` adds
    its stages exactly as a built-in stage module does."""
    return [plugin(name) for name in plugin_names()]
