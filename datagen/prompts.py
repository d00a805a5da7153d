"""Prompt templates live in `prompts/*.txt` (Jinja2), one file per prompt, never in code.

Users override any prompt by pointing `DATAGEN_PROMPTS` (or a pipeline's `prompts_dir`) at a
folder holding files of the same names.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2


def builtin_prompts_dir() -> Path:
    repo = Path(__file__).resolve().parent.parent / "prompts"
    if repo.is_dir():
        return repo
    from importlib.resources import files

    return Path(str(files("datagen._prompts")))


@lru_cache(maxsize=8)
def _environment(extra_dir: str | None) -> jinja2.Environment:
    search = [extra_dir] if extra_dir else []
    search.append(str(builtin_prompts_dir()))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(search),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug, not an empty string
        keep_trailing_newline=False,
        autoescape=False,
    )


def render(name: str, prompts_dir: str | Path | None = None, **variables: Any) -> str:
    """Render `prompts/<name>.txt`."""
    extra = prompts_dir or os.environ.get("DATAGEN_PROMPTS")
    template = _environment(str(extra) if extra else None).get_template(f"{name}.txt")
    return template.render(**variables).strip()

