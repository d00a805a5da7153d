"""Text that cannot be written: lone surrogates found on reading, and how to repair them.

A JSON string may spell half of a UTF-16 pair (`"\\ud800"`, common in chat dumps with broken
emoji); Python reads it as a lone surrogate, which no UTF-8 file, parquet column or SQLite
text can hold, so the first write of the run failed far from the cause. The reader checks
every row instead: by default a lone surrogate is an input error naming the file, the line
and the field; with `input.repair_unicode` / `--repair-unicode` it becomes U+FFFD and the
repairs are counted (the run's manifest, the command's summary).

NUL and the other control characters need no repair: every format datagen writes holds them
(JSON and JSONL as `\\u0000` escapes, parquet and the Arrow files of a dataset folder as
length-delimited UTF-8, SQLite as bound text). Only the HTML report cannot, so it shows them
as visible symbols (`datagen.report`), leaving the data untouched.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

LONE_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"
REPAIR_HINT = "fix the text, or pass --repair-unicode (YAML: input.repair_unicode: true) to replace it with U+FFFD"


def lone_surrogate(value: Any, field: str = "") -> tuple[str, str] | None:
    """(field path, character) of the first lone surrogate in a parsed row, keys included."""
    if isinstance(value, str):
        found = LONE_SURROGATE.search(value)
        return (field or "value", found.group()) if found else None
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{field}.{key}" if field else str(key)
            if isinstance(key, str) and LONE_SURROGATE.search(key):
                return path, LONE_SURROGATE.search(key).group()
            hit = lone_surrogate(item, path)
            if hit:
                return hit
    elif isinstance(value, list):
        for index, item in enumerate(value):
            hit = lone_surrogate(item, f"{field}[{index}]")
            if hit:
                return hit
    return None


def surrogate_error(where: str, field: str, char: str) -> ValueError:
    return ValueError(f"{where}: field {field!r} holds a lone surrogate (\\u{ord(char):04x}); {REPAIR_HINT}")


def repair_lone_surrogates(value: Any, counts: Counter[str], field: str = "") -> Any:
    """`value` with every lone surrogate replaced by U+FFFD; `counts[field]` += replacements.

    Fields are named as the row names them (`output`, `messages[1].content`), so the count
    says where a file is damaged."""
    if isinstance(value, str):
        repaired, number = LONE_SURROGATE.subn(REPLACEMENT, value)
        if number:
            counts[field or "value"] += number
        return repaired
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            path = f"{field}.{key}" if field else str(key)
            out[repair_lone_surrogates(key, counts, path) if isinstance(key, str) else key] = (
                repair_lone_surrogates(item, counts, path))
        return out
    if isinstance(value, list):
        return [repair_lone_surrogates(item, counts, f"{field}[{index}]") for index, item in enumerate(value)]
    return value


def checked_row(row: Any, where: str, repairs: Counter[str] | None) -> Any:
    """The row as the reader should use it: unchanged when clean; an error at `where` when it
    holds a lone surrogate and `repairs` is None; else repaired, with the repairs counted."""
    hit = lone_surrogate(row)
    if hit is None:
        return row
    if repairs is None:
        raise surrogate_error(where, *hit)
    return repair_lone_surrogates(row, repairs)


def repairs_line(path: object, repairs: Counter[str]) -> str:
    """One line for stderr: how many lone surrogates were replaced, by field."""
    fields = ", ".join(f"{field} {count}" for field, count in repairs.most_common())
    total = sum(repairs.values())
    return f"{path}: replaced {total} lone surrogate{'s' if total != 1 else ''} with U+FFFD ({fields})"


# Characters an HTML page cannot show as themselves: C0 controls but tab and line ends, DEL, C1.
_HTML_INVISIBLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _visible(char: str) -> str:
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # the Control Pictures block: NUL shows as ␀
    return "\u2421" if code == 0x7F else f"<U+{code:04X}>"


def html_text(value: object, limit: int) -> str:
    """Record text for the HTML report, which is a view: the data files keep every character.

    Cut to `limit` characters before escaping (so no `&amp;` is cut in half), controls HTML
    cannot hold shown as symbols (a browser drops NUL or turns it into U+FFFD), and wrapped in
    `<bdi>` so a right-to-left override in one cell cannot reorder the rest of the row."""
    import html

    return f"<bdi>{html.escape(visible_text(value, limit))}</bdi>"


def visible_text(value: object, limit: int) -> str:
    """`html_text` before escaping, for templates that autoescape: cut to `limit` characters
    first, controls shown as symbols."""
    text = str(value)
    cut = text[:limit] + ("…" if len(text) > limit else "")
    return _HTML_INVISIBLE.sub(lambda m: _visible(m.group()), cut)
