"""`datagen` command line: one sub-command per stage, `run` for a whole pipeline."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from datagen import __version__
from datagen.errors import EXIT_BAD_INPUT, DatagenError

# Each module exposes `register_cli(subparsers)`; it adds its sub-command(s) and sets
# `func(args) -> int` as the handler. Imports of heavy libraries stay inside handlers so
# `datagen --help` is instant.
COMMAND_MODULES = [
    "datagen.commands_generate",
    "datagen.stages.self_instruct",
    "datagen.stages.evol_instruct",
    "datagen.stages.distill",
    "datagen.stages.dedup",
    "datagen.stages.quality",
    "datagen.stages.decontaminate",
    "datagen.eval",
    "datagen.study",
    "datagen.pipeline",
    "datagen.bundled",
    "datagen.report",
    "datagen.io",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="datagen",
        description=(
            "Turn a few seed tasks into a curated instruction-tuning dataset and fine-tune a model on it.\n"
            "Run a whole pipeline with `datagen run pipelines/quickstart.yaml`, or one stage at a time.\n"
            "Backends (--llm): local (embedded SmolLM2-135M, CPU, nothing to configure), "
            "openai:MODEL (any OpenAI-compatible endpoint), vllm:MODEL (in-process vLLM)."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"datagen {package_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        module.register_cli(subparsers)
    # Plugins (the `finetune` package's `datagen finetune`) add their own commands.
    from datagen.plugins import plugin, plugin_names

    for name in plugin_names():
        registered = plugin(name)
        if hasattr(registered, "register_cli"):
            registered.register_cli(subparsers)
    return parser


def package_version() -> str:
    """The installed distribution's version (what pip reports); `__version__` when the code runs
    from a folder that was never installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("datagen")
    except PackageNotFoundError:
        return __version__


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: finished LLM calls are in the cache; rerun the same command to resume", file=sys.stderr)
        return 130
    except DatagenError as exc:
        # A failure we expect and explain: the LLM endpoint, a stage that mostly failed.
        print(f"datagen: error: {_one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except (ValueError, FileNotFoundError, FileExistsError, UnicodeDecodeError) as exc:
        # Bad input: one clear line, no traceback.
        print(f"datagen: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (RuntimeError, OSError, ImportError) as exc:
        # A missing package or model, a full disk: still one line (DATAGEN_DEBUG=1 shows the traceback).
        if os.environ.get("DATAGEN_DEBUG"):
            raise
        print(f"datagen: error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
