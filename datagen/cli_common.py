"""Options and plumbing every stage sub-command shares, so each stage adds only its own."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from datagen.records import Record, StageResult
from datagen.stages.context import StageContext

OUTPUT_FORMATS = ("records", "alpaca", "sharegpt", "messages")


def add_llm_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--llm",
        default=default,
        help="backend spec: local (embedded SmolLM2, default), local:PATH, openai:MODEL, vllm:MODEL",
    )
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible base URL (else $OPENAI_BASE_URL)")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help="in-flight requests for openai:* (default: the backend's, 64)")
    parser.add_argument(
        "--cache",
        default=None,
        help="SQLite response cache; reruns with the same requests cost nothing (default: ~/.cache/datagen/llm_cache.sqlite)",
    )
    parser.add_argument("--no-cache", action="store_true", help="call the backend even for requests seen before")
    parser.add_argument("--seed", type=int, default=0, help="random seed: same seed, same dataset (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument("--max-error-rate", type=float, default=0.02,
                        help="fail (exit 3, nothing written) when more than this share of LLM requests failed "
                        "(default 0.02); finished calls stay cached, so a rerun re-sends only the failures")


def add_io_args(parser: argparse.ArgumentParser, input_required: bool = True,
                input_aliases: tuple[str, ...] | list[str] = ()) -> None:
    parser.add_argument(
        "--input",
        *input_aliases,
        dest="input",
        required=input_required,
        help="records to read: our records / Alpaca / ShareGPT / messages (.json, .jsonl), parquet or a HF dataset folder",
    )
    parser.add_argument("--out", required=True, help="where to write the kept records (.jsonl, .json, .parquet or a folder)")
    parser.add_argument(
        "--format",
        choices=OUTPUT_FORMATS,
        default="records",
        help="output format (default records: keeps lineage, scores and all candidates)",
    )
    parser.add_argument("--dropped", default=None, help="also write dropped records with their reasons here")


def context_from_args(args: argparse.Namespace) -> StageContext:
    from datagen.llm import ResponseCache
    from datagen.llm.local import cache_root

    cache = None
    if not getattr(args, "no_cache", False):
        cache = ResponseCache(args.cache or (cache_root() / "llm_cache.sqlite"))
    options: dict[str, dict[str, Any]] = {}
    openai_opts: dict[str, Any] = {}
    if getattr(args, "max_concurrency", None):
        openai_opts["max_concurrency"] = args.max_concurrency
    if getattr(args, "base_url", None):
        openai_opts["base_url"] = args.base_url
    options["openai"] = openai_opts
    return StageContext(
        llm_spec=getattr(args, "llm", None) or os.environ.get("DATAGEN_LLM", "local"),
        cache=cache,
        seed=getattr(args, "seed", 0),
        progress=not getattr(args, "no_progress", False),
        llm_options=options,
    )


def read_input(path: str) -> list[Record]:
    from datagen.io import read_records

    return read_records(path)


def write_result(result: StageResult, args: argparse.Namespace, ctx: StageContext | None = None) -> None:
    from datagen.io import write_records

    write_records(result.kept, args.out, fmt=args.format)
    if getattr(args, "dropped", None):
        write_records(result.dropped, args.dropped, fmt="records")
    summary: dict[str, Any] = {"kept": len(result.kept), "dropped": len(result.dropped), "drop_reasons": result.drop_counts()}
    if ctx is not None:
        summary["llm_usage"] = ctx.usage()
    print(json.dumps(summary, indent=2, ensure_ascii=False), file=sys.stderr)
    print(f"wrote {len(result.kept)} records to {Path(args.out)}", file=sys.stderr)


def options_from_args(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    """Only the options the user actually gave; the rest keep the config model's defaults."""
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def run_stage_cli(args: argparse.Namespace, run: Any, config: Any, records: list[Record] | None = None) -> int:
    """Read --input, run one stage with a context built from the flags, write --out/--dropped."""
    if records is None:
        records = read_input(args.input)
    from datagen.errors import check_error_rate

    ctx = context_from_args(args)
    try:
        result = run(records, ctx, config)
        check_error_rate(getattr(args, "command", "stage"), ctx.usage(), getattr(args, "max_error_rate", 0.02))
        write_result(result, args, ctx)
    finally:
        ctx.close()
    return 0
