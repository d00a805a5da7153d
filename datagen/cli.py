"""`datagen` command line: one sub-command per stage, `run` for a whole pipeline."""

from __future__ import annotations

import argparse
import os
import sys

from datagen import (
    __version__,
    bundled,
    commands_convert,
    commands_eval,
    commands_generate,
    commands_push,
    commands_run,
    commands_view,
    registry,
    report,
    study,
)
from datagen.cli_config import add_stage_command
from datagen.errors import EXIT_BAD_INPUT, DatagenError
from datagen.plugins import load_plugins
from datagen.quiet import quiet_library_bars


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
    # Each command module adds its sub-command(s) with `func(args) -> int` as the handler; heavy
    # libraries are imported inside handlers so `datagen --help` stays instant. Stage commands
    # come from the registry, in pipeline order, between `generate` and the whole-run commands.
    commands_generate.register_cli(subparsers)
    for stage in registry.stages().values():
        add_stage_command(subparsers, stage)
    for module in (commands_eval, study, commands_run, bundled, report, commands_convert, commands_push,
                   commands_view):
        module.register_cli(subparsers)
    # Plugins (the `finetune` package's `datagen finetune`) add their own commands.
    for loaded in load_plugins():
        if hasattr(loaded, "register_cli"):
            loaded.register_cli(subparsers)
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
    quiet_library_bars()
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
