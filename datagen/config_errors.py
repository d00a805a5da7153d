"""Config errors users can read: one line naming the file, the key and, for a typo, the closest
real key. Shared by every config a user writes (the pipeline YAML, its `eval:` and
`finetune:` sections, `--set`), so each reports mistakes the same way."""

from __future__ import annotations

import difflib
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


class ConfigError(ValueError):
    """A config problem, already phrased as `file: where: what is wrong`."""


def suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(options))})"


def check_keys(data: Any, model: type[BaseModel], where: str, source: str) -> None:
    """Unknown keys get a message naming the key and the closest real one, before pydantic.
    A model's `LEGACY_KEYS` (older spellings it still reads) are not unknown."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    legacy = getattr(model, "LEGACY_KEYS", frozenset())
    for key, value in data.items():
        if key not in fields:
            if model.model_config.get("extra") == "forbid" and key not in legacy:
                raise ConfigError(f"{source}: {where}{key}: unknown key{suggest(str(key), list(fields))}")
            continue
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            check_keys(value, annotation, f"{where}{key}.", source)


def format_validation(exc: ValidationError, where: str, source: str) -> ConfigError:
    first = exc.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    if not loc:  # a check across fields: its message names the keys itself
        prefix = f"{where.rstrip('.')}: " if where else ""
        return ConfigError(f"{source}: {prefix}{first['msg'].removeprefix('Value error, ')}")
    return ConfigError(f"{source}: {where}{loc}: {first['msg']} (got {first.get('input')!r})")


def parse_set(item: str, example: str) -> tuple[list[str], Any]:
    """One `--set a.b=value` (the value is YAML): the dotted path and the value. The one
    parser behind `datagen run --set` and every stage command's `--set`."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. {example}")
    dotted, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {dotted}: not valid YAML: {raw!r} ({getattr(exc, 'problem', exc)})") from None
    return dotted.strip().split("."), value
