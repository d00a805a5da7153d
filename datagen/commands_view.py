"""`datagen view RUN_DIR|FILE`: serve the viewer (datagen/viewer.py) on 127.0.0.1.

Another host is allowed only with `--host`, and then only with the random access token this
command prints in the URL: a run's data (and the review form) is never open to a network by
accident.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import threading
import time
from pathlib import Path

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "view", help="browse a run's records, lineage, candidates and LLM calls; review them",
        description="Index RUN_DIR (every stage's kept and dropped records) or one records FILE into SQLite once, "
        "then serve a local web app: the report's charts, filtered and searchable record lists, a page per "
        "record, and accept / reject / edit decisions appended to RUN_DIR/review.jsonl.")
    parser.add_argument("target", help="a run directory made by `datagen run`, or a .jsonl records file")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind; anything but loopback requires the printed access token")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the index even if the files are unchanged")
    parser.set_defaults(func=_view_cli)


def _view_cli(args: argparse.Namespace) -> int:
    import uvicorn

    from datagen.view_index import open_index
    from datagen.viewer import build_app

    target = Path(args.target)
    if not target.exists():
        raise FileNotFoundError(f"{target}: no such run directory or file")
    if target.is_dir() and not (target / "manifest.json").exists():
        raise FileNotFoundError(f"{target}: not a run directory (no manifest.json)")
    started = time.perf_counter()
    rows = open_index(target, rebuild=args.rebuild).execute("SELECT COUNT(*) FROM records").fetchone()[0]
    print(f"indexed {rows} records in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    token = None if args.host in LOOPBACK else secrets.token_urlsafe(18)
    app = build_app(target, access_token=token)
    url = f"http://{'127.0.0.1' if args.host in LOOPBACK else args.host}:{args.port}/"
    if token:
        url += f"?token={token}"
        print(f"serving on {args.host}: anyone who can reach it needs this URL (the token is its key)", file=sys.stderr)
    print(f"datagen view: {url}  (Ctrl-C to stop)", file=sys.stderr, flush=True)
    if not args.no_browser:
        import webbrowser

        threading.Timer(0.8, lambda: webbrowser.open(url)).start()
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
