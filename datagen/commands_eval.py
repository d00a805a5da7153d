"""`datagen eval`: the command in front of `datagen.eval` (pairwise judging on held-out prompts,
held-out pair accuracy of local models)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from datagen.context import StageContext
from datagen.eval import EvalConfig, run_eval, summary_table
from datagen.llm.endpoint_options import DEFAULT_MAX_CONCURRENCY


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    defaults = EvalConfig(data="-")
    pair_help = EvalConfig.model_fields
    parser = subparsers.add_parser(
        "eval",
        help="compare models on held-out prompts: pairwise judge both ways, win-rates with CIs, loss",
        description=(
            "Every model answers every prompt of --data (cached); a judge compares the answers pairwise in both\n"
            "orders (a verdict that flips with the order is a tie). Prints win-rates with bootstrap 95% intervals,\n"
            "mean answer lengths and a length-controlled win-rate; local models also get the teacher-forced loss\n"
            "on the reference answers. With --pairs (preference pairs), every local model but the reference also\n"
            "gets its held-out pair accuracy by implicit reward (no judge, no generation). Writes OUT/eval.json.\n"
            "Example: datagen eval --models local local:runs/quickstart/model --data heldout.jsonl --judge local\n"
            "         datagen eval --models local local:runs/pref/model local:runs/pref/model_dpo \\\n"
            "             --pairs runs/pref/model_dpo/held_out_pairs.jsonl"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", required=True, help="model specs, baseline first")
    parser.add_argument("--data", "--input", dest="data", default=None,
                        help="held-out prompts (reference answers optional); --data, --pairs or both")
    parser.add_argument("--pairs", default=None, help=pair_help["pairs"].description)
    parser.add_argument("--reference", "--reference-model", dest="reference", default=None,
                        help=f"--pairs: {pair_help['reference'].description}")
    parser.add_argument("--beta", type=float, default=defaults.beta,
                        help=f"{pair_help['beta'].description} (default {defaults.beta})")
    parser.add_argument("--judge", default=None, help="judge backend spec (default: $DATAGEN_LLM or local)")
    parser.add_argument("--out", default="runs/eval", help="folder for eval.json (default runs/eval)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    parser.add_argument("--max-tokens", type=int, default=defaults.max_tokens,
                        help=f"answer length budget (default {defaults.max_tokens})")
    parser.add_argument("--no-loss", action="store_true", help="skip the teacher-forced loss of local models")
    parser.add_argument("--no-reference", action="store_true", help="do not judge models against the references")
    parser.add_argument("--require-decontaminated", action="store_true",
                        help="refuse when a tuned model's run did not decontaminate against --data")
    parser.add_argument("--base-url", default=None, help="OpenAI-compatible base URL (else $OPENAI_BASE_URL)")
    parser.add_argument("--max-concurrency", type=int, default=None,
                        help=f"in-flight requests for openai:* (default {DEFAULT_MAX_CONCURRENCY})")
    parser.add_argument("--cache", default=None, help="SQLite response cache (default: OUT/llm_cache.sqlite)")
    parser.add_argument("--seed", type=int, default=0, help="seed of answers and bootstrap (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_eval_cli)


def _eval_cli(args: argparse.Namespace) -> int:
    from rich.console import Console

    if args.data is None and args.pairs is None:
        raise ValueError("eval: give --data (held-out prompts), --pairs (held-out preference pairs), or both")
    config = EvalConfig(
        data=args.data, pairs=args.pairs, reference=args.reference, beta=args.beta, models=args.models, judge=args.judge, limit=args.limit, max_tokens=args.max_tokens,
        loss=not args.no_loss, compare_reference=not args.no_reference,
        require_decontaminated=args.require_decontaminated, seed=args.seed,
    )
    args.llm = args.judge
    args.cache = args.cache or str(Path(args.out) / "llm_cache.sqlite")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    ctx = StageContext.from_args(args)
    try:
        report = run_eval(config, args.out, ctx)
    finally:
        ctx.close()
    Console(width=None if sys.stdout.isatty() else 160).print(summary_table(report))  # logs keep full specs
    print(f"wrote {Path(args.out) / 'eval.json'}")
    return 0
