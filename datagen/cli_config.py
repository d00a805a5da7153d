"""Stage commands generated from their pydantic config, torchtune-style.

Every config field becomes a flag (`num_instructions` -> `--num-instructions`) whose help is
the field's description and default, read from the model: a default is written once, in the
config, and `--help` can never disagree with what runs. `--set key=value` (YAML value) works
the same here as on `datagen run`. The flags every stage shares (`--input`, `--out`,
`--format`, `--dropped`, `--llm`, `--judge`, cache and seed) come from `cli_common`.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from datagen.config_errors import parse_set
from datagen.registry import Stage

# Fields the shared flags already cover: `--llm` sets the stage's backend through the context.
COMMON_FIELDS = frozenset({"llm"})


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _plain_type(annotation: Any) -> Any:
    """`int | None` -> int; anything that is not one simple type -> None (parsed as YAML)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _plain_type(args[0]) if len(args) == 1 else None
    return annotation


def _describe_default(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    if value is None:
        return "default: none"
    if isinstance(value, (dict, list)):
        return f"default: {yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()}"
    return f"default: {value}"


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise argparse.ArgumentTypeError(f"not valid YAML: {text!r} ({getattr(exc, 'problem', exc)})") from None


def add_config_flags(
    parser: argparse.ArgumentParser,
    model: type[BaseModel],
    *,
    skip: Sequence[str] = (),
    aliases: dict[str, Sequence[str]] | None = None,
    value_parsers: dict[str, Callable[[str], Any]] | None = None,
) -> list[str]:
    """One flag per field of `model` (minus `skip`); returns the field names it added.

    Flags default to "not given" (argparse.SUPPRESS), so a config built from them keeps the
    model's own defaults for everything the user did not type."""
    aliases = aliases or {}
    value_parsers = value_parsers or {}
    group = parser.add_argument_group(f"{model.__name__} (every field; also --set FIELD=VALUE)")
    added = []
    for name, info in model.model_fields.items():
        if name in skip or name in COMMON_FIELDS:
            continue
        flags = [flag_name(name), *aliases.get(name, ())]
        help_text = f"{(info.description or '').strip()} ({_describe_default(info)})".replace("%", "%%")
        kind = _plain_type(info.annotation)
        common: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_text}
        if name in value_parsers:
            group.add_argument(*flags, type=value_parsers[name], metavar="VALUE", **common)
        elif kind is bool:
            group.add_argument(*flags, action=argparse.BooleanOptionalAction, **common)
        elif kind in (int, float, str):
            group.add_argument(*flags, type=kind, metavar=kind.__name__.upper(), **common)
        elif typing.get_origin(kind) is Literal:
            choices = [str(c) for c in typing.get_args(kind)]
            group.add_argument(*flags, choices=choices, **common)
        else:
            group.add_argument(*flags, type=_yaml_value, metavar="YAML", **common)
        added.append(name)
    return added


def apply_set_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """`--set a.b=value` into a plain dict (values are YAML), the same syntax as `datagen run`."""
    for item in overrides:
        parts, value = parse_set(item, example="--set max_tokens=256")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return values


def config_from_args(args: argparse.Namespace, model: type[BaseModel], fields: Sequence[str],
                     extra: dict[str, Any] | None = None) -> BaseModel:
    """The stage config from the flags the user gave (+ `extra`, + `--set`), validated."""
    values = {name: getattr(args, name) for name in fields if hasattr(args, name)}
    values.update(extra or {})
    apply_set_overrides(values, getattr(args, "set_overrides", None) or [])
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        if not where:  # a check across fields: its message names the options itself
            raise ValueError(first["msg"].removeprefix("Value error, ")) from None
        raise ValueError(f"{flag_name(where)}: {first['msg']} (got {first.get('input')!r})") from None


def add_stage_command(subparsers: argparse._SubParsersAction, stage: Stage) -> argparse.ArgumentParser:
    """Register `datagen VERB` from a stage's registry entry: shared flags, one flag per config
    field, the stage's own extra flags, and the handler."""
    from datagen.cli_common import add_io_args, add_llm_args

    command = stage.command
    parser = subparsers.add_parser(command.verb, help=stage.help, description=command.description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    add_io_args(parser, input_required=command.input_required, input_aliases=command.input_aliases)
    fields = add_config_flags(parser, stage.config, skip=command.skip_fields, aliases=command.flag_aliases,
                              value_parsers=command.value_parsers)
    if command.add_flags:
        command.add_flags(parser)
    parser.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config field (YAML value), e.g. --set max_tokens=256")
    if stage.makes_llm_calls:
        add_llm_args(parser)
    else:  # the LLM flags bring these along; a stage without an LLM still needs them
        parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same result (default 0)")
        parser.add_argument("--no-progress", action="store_true", help="hide progress bars")

    def handler(args: argparse.Namespace) -> int:
        from datagen.cli_common import run_stage_cli

        extra = command.config_from_flags(args) if command.config_from_flags else None
        config = config_from_args(args, stage.config, fields, extra)
        records = command.records_from_args(args) if command.records_from_args else None
        return run_stage_cli(args, stage.run, config, records)

    parser.set_defaults(func=handler)
    return parser
