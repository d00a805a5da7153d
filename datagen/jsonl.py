"""The one reader and writer of JSON Lines text in datagen.

JSON allows U+2028, U+2029, U+0085 and the C0 separators U+001C..U+001E raw inside a string,
and `str.splitlines()` splits at every one of them, so a JSONL file split that way breaks a
record in two (one such character in a paid batch result once failed the whole run after
its exports were written). JSON Lines ends a record at `\\n` only (a `\\r` before it is JSON
whitespace), so every JSONL text in datagen is split here, with `split("\\n")`, and
`tests/test_jsonl.py` fails when `splitlines()` appears anywhere else without a reason.

Writers use `ensure_ascii=False`: text stays readable and byte-for-byte what it was, and the
JSON encoder still escapes what JSON cannot hold raw (NUL and other C0 controls, quotes).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def jsonl_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) for each non-blank line of JSONL text, split at `\\n` only."""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip(" \t\r"):
            yield number, line


def parse_jsonl(text: str, source: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each record; a bad line is `source:line: invalid JSON: ...`."""
    for number, line in jsonl_lines(text):
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{source}:{number}: invalid JSON: {exc.msg} (column {exc.colno})") from None


def loads_jsonl(text: str, source: str | Path) -> list[Any]:
    """Every record of JSONL text, in order."""
    return [value for _, value in parse_jsonl(text, source)]


def read_jsonl(path: str | Path) -> list[Any]:
    """Every record of a UTF-8 JSONL file; a missing file is no records (a stage that kept none)."""
    path = Path(path)
    if not path.exists():
        return []
    return loads_jsonl(path.read_text(encoding="utf-8"), path)


def dumps_jsonl(rows: Iterable[Any]) -> str:
    """JSONL text: one compact JSON value per line, each line ended by `\\n`."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
