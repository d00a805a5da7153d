"""`datagen push RUN_DIR REPO_ID`: publish a run's export folder, card included, to the Hub.

Everything goes through `huggingface_hub` (create the dataset repo, then one commit with every
file of `export/`), so the Hub's own auth, chunking and endpoint rules apply; `HF_ENDPOINT`
points it at a mirror or at the tests' loopback server. What we add: the card is written
first if the run has none, a dry run lists what would go, a dropped connection is retried
(creating a repo with `exist_ok` and committing the same files are both safe to repeat), and
a refused token is one line, not a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from datagen.errors import DatagenError

EXIT_PUSH_FAILED = 3


class PushFailed(DatagenError):
    exit_code = EXIT_PUSH_FAILED


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "push", help="upload a run's export folder and dataset card to the Hugging Face Hub",
        description="Create the dataset repo REPO_ID (if needed) and upload RUN_DIR/export, with its README.md "
        "dataset card, in one commit. Token: HF_TOKEN or `hf auth login`; HF_ENDPOINT selects the Hub.")
    parser.add_argument("run_dir", help="a run directory made by `datagen run`")
    parser.add_argument("repo_id", help="namespace/name of the dataset repo")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--dry-run", action="store_true", help="list the files and sizes that would be uploaded")
    parser.add_argument("--retries", type=int, default=4, help="attempts per Hub call on a dropped connection")
    parser.set_defaults(func=_push_cli)


def export_files(export_dir: Path) -> list[tuple[str, int]]:
    """Every file the commit would hold, as (path inside the repo, bytes)."""
    return sorted((p.relative_to(export_dir).as_posix(), p.stat().st_size)
                  for p in export_dir.rglob("*") if p.is_file() and not p.name.startswith("."))


def _push_cli(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    export_dir = run_dir / "export"
    if not export_dir.is_dir():
        raise FileNotFoundError(f"{export_dir}: no export folder (run `datagen run` first)")
    if not (export_dir / "README.md").exists() and (run_dir / "manifest.json").exists():
        from datagen.card import write_card

        write_card(run_dir)
    files = export_files(export_dir)
    if "/" not in args.repo_id.strip("/"):
        raise ValueError(f"{args.repo_id}: expected NAMESPACE/NAME")
    if args.dry_run:
        for path, size in files:
            print(f"{size:>12,d}  {path}")
        print(f"{sum(s for _, s in files):>12,d}  total, {len(files)} files -> datasets/{args.repo_id}"
              f"{' (private)' if args.private else ''}")
        return 0
    url = push_folder(export_dir, args.repo_id, private=args.private, attempts=max(1, args.retries),
                      message=f"datagen: {run_dir.name} ({len(files)} files)")
    print(f"pushed {len(files)} files to {url}", file=sys.stderr)
    return 0


def push_folder(export_dir: Path, repo_id: str, *, private: bool, attempts: int, message: str) -> str:
    """Create the repo and upload the folder in one commit; returns the commit's URL."""
    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise PushFailed("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    _call(lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True),
          api.endpoint, attempts)
    info = _call(lambda: api.upload_folder(folder_path=str(export_dir), repo_id=repo_id, repo_type="dataset",
                                           commit_message=message), api.endpoint, attempts)
    return str(getattr(info, "commit_url", info))


def _call(step: Any, endpoint: str, attempts: int) -> Any:
    """One Hub call, repeated with backoff on a dropped connection; an HTTP error is one line."""
    from huggingface_hub.errors import HfHubHTTPError
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

    try:
        for attempt in Retrying(retry=retry_if_exception_type(_transport_errors()), reraise=True,
                                stop=stop_after_attempt(attempts), wait=wait_exponential(0.2, max=5)):
            with attempt:
                return step()
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        server = (exc.server_message or str(exc)).strip().splitlines()[0]
        hint = " (set HF_TOKEN to a token with write access)" if status in (401, 403) else ""
        raise PushFailed(f"{endpoint}: {status}: {server}{hint}") from None
    except _transport_errors() as exc:
        raise PushFailed(f"{endpoint}: connection failed after {attempts} attempts: {exc}") from None


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level failures of whichever HTTP client this huggingface_hub uses."""
    errors: list[type[BaseException]] = [ConnectionError]
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"),
                         ("requests", "ConnectionError")):
        try:
            errors.append(getattr(__import__(module), name))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)
