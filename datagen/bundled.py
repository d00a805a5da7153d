"""The pipelines that ship inside the package, usable from any folder.

`datagen run quickstart` must work right after `pip install datagen`, with no checkout at
hand (as torchtune's bundled configs do); `datagen init NAME` copies one out to edit.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from datagen.resources import PIPELINES, listing, resource_path


def bundled_pipelines() -> dict[str, Path]:
    """Name -> the installed YAML file."""
    return {node.name[: -len(".yaml")]: resource_path(PIPELINES, node.name) for node in listing(PIPELINES, ".yaml")}


def first_comment_line(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def resolve_pipeline(name_or_path: str | Path) -> Path:
    """A YAML path as given when it exists, else a bundled pipeline by name (`quickstart`,
    `quickstart.yaml` or `pipelines/quickstart.yaml` from another folder)."""
    path = Path(name_or_path)
    if path.exists():
        return path
    bundled = bundled_pipelines()
    stem = path.name[: -len(".yaml")] if path.name.endswith(".yaml") else path.name
    if stem in bundled and (path.parent == Path(".") or path.parent.name == "pipelines"):
        return bundled[stem]
    known = ", ".join(bundled) or "(none)"
    raise FileNotFoundError(f"{name_or_path}: no such pipeline file, and no bundled pipeline of that name "
                            f"(bundled: {known}; `datagen pipelines` lists them)")


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    listing = subparsers.add_parser("pipelines", help="list the bundled pipelines (run one with `datagen run NAME`)")
    listing.set_defaults(func=_list_cli)
    init = subparsers.add_parser(
        "init", help="copy a bundled pipeline into a file you can edit",
        description="Copy a bundled pipeline (see `datagen pipelines`) to DEST (default ./NAME.yaml), then\n"
        "edit it and run it with `datagen run DEST`.", formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("name", help="bundled pipeline name, e.g. quickstart")
    init.add_argument("dest", nargs="?", default=None, help="where to write it (default ./NAME.yaml)")
    init.add_argument("--force", action="store_true", help="overwrite DEST if it exists")
    init.set_defaults(func=_init_cli)


def _list_cli(args: argparse.Namespace) -> int:
    for name, path in bundled_pipelines().items():
        print(f"{name:12s} {first_comment_line(path)}")
    return 0


def _init_cli(args: argparse.Namespace) -> int:
    bundled = bundled_pipelines()
    if args.name not in bundled:
        raise FileNotFoundError(f"no bundled pipeline {args.name!r} (bundled: {', '.join(bundled)})")
    dest = Path(args.dest or f"{args.name}.yaml")
    if dest.is_dir():
        dest = dest / f"{args.name}.yaml"
    if dest.exists() and not args.force:
        raise FileExistsError(f"{dest} exists; pass --force to overwrite it")
    shutil.copyfile(bundled[args.name], dest)
    print(f"wrote {dest}; run it with: datagen run {dest}", file=sys.stderr)
    return 0
