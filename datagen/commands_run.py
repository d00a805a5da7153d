"""`datagen run PIPELINE.yaml`: the command in front of the runner (`datagen/pipeline.py`)."""

from __future__ import annotations

import argparse
import json
import sys

from datagen.cli_common import add_cost_args, add_repair_unicode_arg, cost_overrides
from datagen.pipeline import Pipeline


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a whole YAML pipeline (resumable)",
        description=(
            "Run every stage of PIPELINE.yaml into a run directory (default runs/<name>). Rerunning the same\n"
            "command resumes: finished stages are skipped and finished LLM calls come from the run's cache.\n"
            "Example: datagen run pipelines/quickstart.yaml --set stages.self_instruct.num_instructions=10"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pipeline", help="pipeline YAML file, or the name of a bundled one (`datagen pipelines`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value; stages by name, e.g. stages.distill.n=4 or llm=openai:gpt-4o-mini")
    parser.add_argument("--run-dir", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--executor", choices=["local", "ray"], default=None,
                        help="where record-parallel work runs (default: the YAML's `executor`, else local)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join, e.g. 10.0.0.1:6379 (sets ray.address; implies --executor ray)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress output")
    parser.add_argument("--wait", action="store_true",
                        help="when another run holds this run directory, wait for it to end (default: stop, exit 2)")
    add_cost_args(parser)
    add_repair_unicode_arg(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print each stage's requests, tokens and dollars (upper bounds) without calling any LLM")
    parser.set_defaults(func=_run_cli)


def executor_overrides(executor: str | None, ray_address: str | None) -> list[str]:
    """`--executor` / `--ray-address` as `--set` overrides, so YAML and CLI meet in one place."""
    overrides = []
    if executor or ray_address:
        overrides.append(f"executor={executor or 'ray'}")
    if ray_address:
        overrides.append(f"ray.address={json.dumps(ray_address)}")  # quoted: YAML may read a:b as a number
    return overrides


def _run_cli(args: argparse.Namespace) -> int:
    from datagen.llm.budget import EXIT_BUDGET, BudgetExceeded

    pipeline = Pipeline.from_yaml(args.pipeline, overrides=[*args.overrides, *cost_overrides(args),
                                                      *executor_overrides(args.executor, args.ray_address),
                                                      *(["input.repair_unicode=true"] if args.repair_unicode else [])])
    if args.dry_run:
        from datagen.dryrun import print_plan

        print_plan(pipeline)
        return 0
    import time

    started = time.monotonic()
    try:
        result = pipeline.run(run_dir=args.run_dir, progress=not args.no_progress, wait=args.wait)
    except BudgetExceeded as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BUDGET
    print(f"finished: {len(result.records)} records in {time.monotonic() - started:.0f} s wall "
          f"({result.run_dir / 'export'})", file=sys.stderr)
    return 0

