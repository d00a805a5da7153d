"""`datagen generate`: a one-off chat with any backend, handy for checking that it works."""

from __future__ import annotations

import argparse
import sys

from datagen.cli_common import add_llm_args
from datagen.context import StageContext


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="one-off chat with a backend (check that --llm works)",
        description="Send one prompt to a backend and print the reply(ies). Cached like every other call.",
    )
    parser.add_argument("--prompt", required=True, help="the user message")
    parser.add_argument("--system", default=None, help="optional system message")
    parser.add_argument("--n", type=int, default=1, help="number of replies (default 1)")
    parser.add_argument("--max-tokens", type=int, default=256, help="(default 256)")
    parser.add_argument("--temperature", type=float, default=0.7, help="(default 0.7)")
    add_llm_args(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from datagen.llm import ChatRequest, generate_sync

    ctx = StageContext.from_args(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": args.prompt}
    ]
    request = ChatRequest.chat(
        messages, n=args.n, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    (completion,) = generate_sync(ctx.llm(), [request])
    if completion.error:
        print(f"datagen: error: {completion.error}", file=sys.stderr)
        return 1
    for k, text in enumerate(completion.texts):
        if args.n > 1:
            print(f"--- reply {k + 1} ({completion.finish_reasons[k]}) ---")
        print(text)
    usage = ctx.llm().usage
    print(
        f"[{ctx.llm().name}] prompt {completion.prompt_tokens} + completion {completion.completion_tokens} tokens"
        f"{' (cached)' if completion.cached else ''}; calls made: {usage.calls}",
        file=sys.stderr,
    )
    ctx.close()
    return 0
