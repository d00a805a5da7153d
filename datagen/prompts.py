"""Prompt templates live in `prompts/*.txt` (Jinja2), one file per prompt, never in code.

Users override any prompt by pointing `DATAGEN_PROMPTS` (or a pipeline's `prompts_dir`) at a
folder holding files of the same names.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import lru_cache
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import jinja2

from datagen.resources import PROMPTS, listing, resource


def bundled_prompt(name: str) -> Traversable:
    """The shipped `prompts/<name>` (with its suffix), wherever the package is installed."""
    return resource(PROMPTS, name)


def bundled_prompts() -> list[Traversable]:
    return listing(PROMPTS, ".txt")


class _BundledLoader(jinja2.BaseLoader):
    """Templates read from the installed package (a wheel, an sdist install or a checkout)."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, None, Callable[[], bool]]:
        node = bundled_prompt(template)
        if not node.is_file():
            raise jinja2.TemplateNotFound(template)
        return node.read_text(encoding="utf-8"), None, lambda: True


@lru_cache(maxsize=8)
def _environment(extra_dir: str | None) -> jinja2.Environment:
    loaders: list[jinja2.BaseLoader] = [jinja2.FileSystemLoader(extra_dir)] if extra_dir else []
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader([*loaders, _BundledLoader()]),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, not an empty string
        keep_trailing_newline=False,
        autoescape=False,
    )


def render(name: str, prompts_dir: str | Path | None = None, **variables: Any) -> str:
    """Render `prompts/<name>.txt`."""
    extra = prompts_dir or os.environ.get("DATAGEN_PROMPTS")
    template = _environment(str(extra) if extra else None).get_template(f"{name}.txt")
    return template.render(**variables).strip()

