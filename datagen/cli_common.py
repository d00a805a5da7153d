"""Options and plumbing every stage sub-command shares, so each stage adds only its own."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from datagen.context import StageContext
from datagen.llm.budget import EXIT_BUDGET, BudgetExceeded
from datagen.llm.endpoint_options import DEFAULT_MAX_CONCURRENCY
from datagen.records import Record, StageResult

OUTPUT_FORMATS = ("records", "alpaca", "sharegpt", "messages", "dpo", "dpo_text")

def add_cost_args(parser: argparse.ArgumentParser) -> None:
    """Limits and a spending cap for paid endpoints (openai:*); see README "Cost control"."""
    parser.add_argument("--budget", type=float, default=None, metavar="USD",
                        help="stop cleanly before spending more than this (needs a price for the backend); "
                             "exit code 75 when reached, rerun with a higher cap to resume")
    parser.add_argument("--max-requests-per-minute", type=float, default=None, metavar="RPM",
                        help="openai:* request rate limit (default: none, or what the server announces)")
    parser.add_argument("--max-tokens-per-minute", type=float, default=None, metavar="TPM",
                        help="openai:* token rate limit: prompt estimate + max_tokens, corrected by usage")
    parser.add_argument("--batch", action="store_true", default=None,
                        help="send openai:* requests through the Batch API (/v1/batches): slower, about half the price")


def cost_overrides(args: argparse.Namespace) -> list[str]:
    """The cost flags of `datagen run` as `--set` overrides of the pipeline config."""
    sets = []
    if getattr(args, "budget", None) is not None:
        sets.append(f"budget_usd={args.budget}")
    for flag in ("max_requests_per_minute", "max_tokens_per_minute", "batch"):
        if getattr(args, flag, None) is not None:
            sets.append(f"llm_options.openai.{flag}={getattr(args, flag)}")
    return sets


def add_llm_args(parser: argparse.ArgumentParser, default: str | None = None) -> None:
    parser.add_argument(
        "--llm",
        default=default,
        help="backend spec: local (embedded SmolLM2, default), local:PATH, openai:MODEL, vllm:MODEL",
    )
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible base URL (else $OPENAI_BASE_URL)")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help=f"in-flight requests for openai:* (default {DEFAULT_MAX_CONCURRENCY})")
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
    add_cost_args(parser)
    parser.add_argument("--price", default=None, metavar="IN,OUT",
                        help="USD per 1M prompt and completion tokens, e.g. 0.15,0.60 (for --budget)")


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
    add_repair_unicode_arg(parser)


def add_repair_unicode_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repair-unicode", action="store_true", default=None,
                        help="replace lone surrogates in the input (broken UTF-16 halves such as \\ud800) with "
                             "U+FFFD and count them, instead of stopping at the first one with its file and line")


def read_input(path: str, repair_unicode: bool | None = False) -> list[Record]:
    from collections import Counter

    from datagen.io import read_records

    return read_records(path, Counter() if repair_unicode else None)


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
        records = read_input(args.input, getattr(args, "repair_unicode", False))
    from datagen.errors import check_error_rate

    ctx = StageContext.from_args(args)
    try:
        result = run(records, ctx, config)
        check_error_rate(getattr(args, "command", "stage"), ctx.usage(), getattr(args, "max_error_rate", 0.02))
        write_result(result, args, ctx)
    except BudgetExceeded as exc:  # answers so far are in the cache; nothing written half
        print(str(exc), file=sys.stderr)
        return EXIT_BUDGET
    finally:
        ctx.close()
    return 0
