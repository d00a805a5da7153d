"""`datagen convert`: read any supported file, validate it, write it in another format."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from datagen.cli_common import add_repair_unicode_arg
from datagen.io import FORMATS, read_records, write_records
from datagen.preference_io import PAIR_FORMATS


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert between record formats (and validate a file)",
        description="Read any supported file (records, Alpaca, ShareGPT, messages, Self-Instruct seeds, "
        "parquet, HF dataset folder), validate it, and write it in another format.",
    )
    parser.add_argument("--input", required=True)
    parser.add_argument("--out", required=True, help=".jsonl, .json, .parquet, or a folder for a HF dataset")
    parser.add_argument("--format", choices=FORMATS + PAIR_FORMATS, default="records")
    add_repair_unicode_arg(parser)
    parser.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    records = read_records(args.input, Counter() if args.repair_unicode else None)
    write_records(records, args.out, fmt=args.format)
    print(f"wrote {len(records)} records to {args.out} ({args.format})", file=sys.stderr)
    return 0
