"""The files that ship inside the package: prompts, seed tasks, bundled pipelines.

pyproject maps the checkout's `prompts/`, `seeds/` and `pipelines/` folders to the packages
`datagen._prompts`, `datagen._seeds` and `datagen._pipelines`, so a wheel, an sdist install and
an editable checkout each put them somewhere else. They are read through `importlib.resources`
as traversables, and turned into a real file with `as_file` only where a caller needs a path;
never through `str()` of a traversable (that string can be a repr, e.g. of a `MultiplexedPath`,
not a folder: the bug that broke every installed wheel) nor from paths relative to this file.
"""

from __future__ import annotations

import atexit
from contextlib import ExitStack
from functools import cache
from importlib.resources import as_file, files
from importlib.resources.abc import Traversable
from pathlib import Path, PurePosixPath

PROMPTS = "datagen._prompts"
SEEDS = "datagen._seeds"
PIPELINES = "datagen._pipelines"

# The checkout folder a bundled pipeline names a shipped file by (`seeds/seed_tasks.jsonl`,
# `pipelines/data/heldout.jsonl`), and the package that folder installs as.
_FOLDERS = {"prompts": PROMPTS, "seeds": SEEDS, "pipelines": PIPELINES}

# Files `as_file` had to extract (a package imported from a zip) live until the process ends.
_extracted = ExitStack()
atexit.register(_extracted.close)


def package_files(package: str) -> Traversable:
    """The package's resource folder. A checkout put on PYTHONPATH and never installed (the
    vLLM test venv runs ours so) has no such package, only the folder pyproject maps it from."""
    try:
        return files(package)
    except ModuleNotFoundError:
        folder = next((name for name, mapped in _FOLDERS.items() if mapped == package), None)
        checkout = Path(__file__).resolve().parent.parent / folder if folder else None
        if checkout is None or not (checkout / "__init__.py").is_file():
            raise
        return checkout


def resource(package: str, name: str) -> Traversable:
    """`name` ("a.txt", "data/b.jsonl") inside `package`, which may not exist."""
    node = package_files(package)
    for part in PurePosixPath(name).parts:
        node = node / part
    return node


def listing(package: str, suffix: str) -> list[Traversable]:
    """The package's own files ending in `suffix`, by name."""
    return sorted((node for node in package_files(package).iterdir() if node.is_file() and node.name.endswith(suffix)),
                  key=lambda node: node.name)


@cache
def resource_path(package: str, name: str) -> Path:
    """A file on disk with the resource's bytes, for code that needs a path (readers that go by
    suffix, `shutil.copyfile`): the installed file itself, or an extracted copy."""
    node = resource(package, name)
    if not node.is_file():
        raise FileNotFoundError(f"{name} is not in the installed package {package}: reinstall datagen")
    return _extracted.enter_context(as_file(node))


def shipped_path(raw: str | Path) -> Path | None:
    """A path as the bundled pipelines write it (`seeds/…`, `pipelines/…`, `prompts/…`, relative
    to the checkout), as the installed file; None when it names no shipped file."""
    parts = PurePosixPath(Path(raw).as_posix()).parts
    if len(parts) < 2 or parts[0] not in _FOLDERS:
        return None
    package, name = _FOLDERS[parts[0]], "/".join(parts[1:])
    return resource_path(package, name) if resource(package, name).is_file() else None
