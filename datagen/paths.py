"""Where datagen keeps things on disk, and how a model folder is told apart from another.

A cache that outlives a run must know when a folder's model changed: fine-tuning into the
same `model/` folder again must never serve the old model's answers.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Bytes read from each end of a weight file: enough to tell retrained weights apart (the
# header and the first/last tensors change) without reading gigabytes on every run.
_EDGE_BYTES = 1 << 20
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".model")


def cache_root() -> Path:
    return Path(os.environ.get("DATAGEN_CACHE", Path.home() / ".cache" / "datagen"))


def folder_fingerprint(folder: str | Path) -> str:
    """A hash of a model folder's configs and weights (size, mtime and both ends of each file).

    A hub id or a path that does not exist fingerprints as its own name: the hub pins content
    by revision, and a missing folder fails later with its own clear error."""
    root = Path(folder)
    if not root.exists():
        return f"name:{folder}"
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        name = path.name
        is_config = name.endswith((".json", ".jinja", ".txt")) and path.stat().st_size < 8 * _EDGE_BYTES
        is_weight = name.endswith(_WEIGHT_SUFFIXES)
        if not (is_config or is_weight):
            continue
        stat = path.stat()
        digest.update(f"{path.relative_to(root) if root.is_dir() else name}\0{stat.st_size}\0".encode())
        if is_config:
            digest.update(path.read_bytes())
            continue
        digest.update(str(stat.st_mtime_ns).encode())
        with path.open("rb") as handle:
            digest.update(handle.read(_EDGE_BYTES))
            if stat.st_size > 2 * _EDGE_BYTES:
                handle.seek(-_EDGE_BYTES, os.SEEK_END)
                digest.update(handle.read(_EDGE_BYTES))
    return digest.hexdigest()
