"""Readers and writers for the formats instruction data comes in.

Readers validate everything before returning anything and report `path:line: what is wrong`,
so a malformed file stops a run before it spends a single LLM call. Writers are atomic (temp
file + rename): a crash never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from datagen.jsonl import dumps_jsonl, parse_jsonl
from datagen.preference_io import PAIR_FORMATS, to_pair_row
from datagen.records import Record, RecordMeta, SeedTask
from datagen.rows import CHAT_KEYS, INPUT_KEYS, INSTRUCTION_KEYS, OUTPUT_KEYS, SYSTEM_KEYS, row_to_record
from datagen.unicode_text import checked_row, repairs_line

FORMATS = ("records", "alpaca", "sharegpt", "messages")


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "record"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def default_seeds_path() -> Path:
    """Our 175 Self-Instruct seed tasks, as shipped in the package."""
    from datagen.resources import SEEDS, resource_path

    return resource_path(SEEDS, "seed_tasks.jsonl")


def _warn(message: str) -> None:
    """Said once per file, on stderr: data the reader keeps but does not use, or did not read."""
    print(message, file=sys.stderr)


def _file_text(path: Path) -> str:
    """The file as text: UTF-8 (BOM or not), UTF-16 with a BOM, or gzip of those."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable gzip file ({exc})") from None
    if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not valid UTF-16 text at byte {exc.start}") from None
    nul = raw.find(b"\x00", 0, 8192)
    if nul >= 0:
        raise ValueError(
            f"{path}: not a text file (binary data at byte {nul}); expected JSON or JSONL text, "
            "a .parquet file or a dataset folder"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise ValueError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


_WS = re.compile(r"[ \t\n\r]*")
# A one-object file holding any of these is one row, not a wrapper around a list of rows.
_ROW_KEYS = {*INSTRUCTION_KEYS, *INPUT_KEYS, *OUTPUT_KEYS, *SYSTEM_KEYS, *CHAT_KEYS, "instances", "id", "meta"}


def _iter_json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed row) from JSON Lines, a JSON array, or one JSON object, whatever the
    suffix says: real files are often named for the other format. Locations are line numbers
    (the line an array item starts on), or `key[i]` inside a wrapping object."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    text = _file_text(path)
    start = _WS.match(text).end()
    if start == len(text):
        return
    if text[start] == "[":
        yield from _array_items(text, start, path)
        return
    try:
        document, end = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        first_line = text[start:].split("\n", 1)[0]
        if not _parses(first_line) and path.suffix != ".jsonl":  # a pretty-printed document
            raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        yield from _jsonl_rows(text, path)
        return
    if _WS.match(text, end).end() < len(text):
        yield from _jsonl_rows(text, path)
        return
    yield from _document_rows(document, path, text.count("\n", 0, start) + 1)


_DECODER = json.JSONDecoder()


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _jsonl_rows(text: str, path: Path) -> Iterator[tuple[str, Any]]:
    for lineno, row in parse_jsonl(text, path):
        yield str(lineno), row


def _array_items(text: str, start: int, path: Path) -> Iterator[tuple[str, Any]]:
    """Items of a top-level array one by one, each with the line it starts on."""
    pos = _WS.match(text, start + 1).end()
    line, counted = text.count("\n", 0, pos) + 1, pos
    while pos < len(text) and text[pos] != "]":
        line, counted = line + text.count("\n", counted, pos), pos
        try:
            item, end = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        yield str(line), item
        pos = _WS.match(text, end).end()
        if pos < len(text) and text[pos] == ",":
            pos = _WS.match(text, pos + 1).end()
        elif pos < len(text) and text[pos] != "]":
            where = text.count("\n", 0, pos) + 1
            raise ValueError(f"{path}:{where}: invalid JSON: expected ',' or ']' after an array item")
    if pos >= len(text):
        raise ValueError(f"{path}:{text.count(chr(10)) + 1}: invalid JSON: the array is never closed with ']'")
    rest = _WS.match(text, pos + 1).end()
    if rest < len(text):
        where = text.count("\n", 0, rest) + 1
        raise ValueError(f"{path}:{where}: invalid JSON: more data after the top-level array")


def _document_rows(document: Any, path: Path, line: int) -> Iterator[tuple[str, Any]]:
    """One JSON document: a single row, or rows wrapped as `{"data": [...], ...}`."""
    if isinstance(document, dict) and not (_ROW_KEYS & set(document)):
        lists = [k for k, v in document.items() if isinstance(v, list) and v and all(isinstance(x, dict) for x in v)]
        if len(lists) == 1:
            key = lists[0]
            others = sorted(k for k in document if k != key)
            if others:
                _warn(f"{path}: read the rows under {key!r}; top-level keys not read: {', '.join(others)}")
            for index, item in enumerate(document[key]):
                yield f"{key}[{index}]", item
            return
    yield str(line), document


def read_seed_tasks(path: str | Path) -> list[SeedTask]:
    """Self-Instruct `seed_tasks.jsonl`, strictly: every line checked, ids must be unique."""
    path = Path(path)
    tasks: list[SeedTask] = []
    seen: dict[str, str] = {}
    for where, row in _iter_json_rows(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{where}: expected a JSON object, got {type(row).__name__}")
        checked_row(row, f"{path}:{where}", None)
        try:
            task = SeedTask.model_validate(row)
        except ValidationError as exc:
            raise ValueError(f"{path}:{where}: {_short(exc)}") from None
        if task.id in seen:
            raise ValueError(f"{path}:{where}: duplicate id {task.id!r} (first on line {seen[task.id]})")
        seen[task.id] = where
        tasks.append(task)
    if not tasks:
        raise ValueError(f"{path}:1: no seed tasks in file")
    return tasks


def seed_to_record(task: SeedTask) -> Record:
    first = task.instances[0]
    return Record(
        id=task.id,
        instruction=task.instruction,
        input=first.input,
        output=first.output,
        meta=RecordMeta(
            source="seed",
            is_classification=task.is_classification,
            name=task.name,
            instances=[i.model_dump() for i in task.instances],
        ),
    )


def _table_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a parquet file or a `save_to_disk` folder (its train split, or the only one)."""
    if not path.is_dir():
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
            number = 0
            for batch in batches:
                for row in batch.to_pylist():
                    number += 1
                    yield f"row {number}", row
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
        return
    import datasets

    if not any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
        raise FileNotFoundError(
            f"{path}: not a dataset folder written by save_to_disk (no dataset_dict.json or "
            "dataset_info.json); give a .parquet, .json or .jsonl file inside it instead"
        )
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds))
        others = [name for name in ds if name != split]
        if others:
            _warn(f"{path}: read split {split!r}; not read: {', '.join(others)}")
        ds = ds[split]
    for index, row in enumerate(ds):
        yield f"row {index + 1}", row


def _is_parquet(path: Path) -> bool:
    if path.suffix == ".parquet":
        return True
    with open(path, "rb") as handle:
        return handle.read(4) == b"PAR1"


def read_records(path: str | Path, repairs: Counter[str] | None = None) -> list[Record]:
    """Any supported file -> records, every row checked before anything is returned.

    A lone surrogate in a row is a `path:line:` error naming the field, unless `repairs` is
    given: then it becomes U+FFFD and `repairs[field]` counts it (`datagen.unicode_text`).

    The shape is detected per row from its keys (see `datagen.rows`). Rows without an id get
    a content id; a repeat of the same row gets that id plus `#occurrence`, so exact
    duplicates are read and left for the dedup stage to report. Two different rows that name
    the same id are an error: lineage and resume key on ids.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    rows = _table_rows(path) if path.is_dir() or _is_parquet(path) else _iter_json_rows(path)
    records: list[Record] = []
    first_at: dict[str, tuple[str, int]] = {}  # id -> (where, index in records)
    occurrences: dict[str, int] = {}
    unused: set[str] = set()
    not_kept: set[str] = set()
    repaired: Counter[str] | None = None if repairs is None else Counter()
    for location, row in rows:
        where = f"{path}:{location}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        row = checked_row(row, where, repaired)
        try:
            parsed = row_to_record(row, where)
        except ValidationError as exc:
            raise ValueError(f"{where}: {_short(exc)}") from None
        record = parsed.record
        if not record.instruction.strip() and not record.meta.drop_reason:  # a drop may lack one
            raise ValueError(f"{where}: instruction is empty")
        if record.id in first_at:
            first_where, index = first_at[record.id]
            if parsed.explicit_id and not _same_row(records[index], record):
                raise ValueError(
                    f"{where}: duplicate id {record.id!r} (first at {first_where}) on a different row; "
                    "ids must be unique (drop the id column to have ids derived from the content)"
                )
            base, number = record.id, occurrences.get(record.id, 1)
            while f"{base}#{number}" in first_at or number == 1:
                number += 1
            occurrences[base] = number
            record.id = f"{base}#{number}"
        first_at[record.id] = (where, len(records))
        unused |= parsed.unused_text_keys
        not_kept |= parsed.not_kept
        records.append(record)
    if not_kept:
        _warn(f"{path}: not kept (binary or not JSON): {', '.join(sorted(not_kept))}")
    if unused:
        _warn(f"{path}: unused keys: {', '.join(sorted(unused))} (kept in meta.extra)")
    if repaired:
        _warn(repairs_line(path, repaired))
        repairs.update(repaired)
    return records


def _same_row(a: Record, b: Record) -> bool:
    return a.model_dump(exclude={"id"}) == b.model_dump(exclude={"id"})


# ---------------------------------------------------------------- writing


def to_alpaca(record: Record) -> dict[str, str]:
    return {"instruction": record.instruction, "input": record.input, "output": record.output}


def to_messages(record: Record, system_prompt: str | None = None) -> dict[str, Any]:
    return {"id": record.id, "messages": record.to_messages(system_prompt)}


def to_sharegpt(record: Record, system_prompt: str | None = None) -> dict[str, Any]:
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return {
        "id": record.id,
        "conversations": [{"from": names[m["role"]], "value": m["content"]} for m in record.to_messages(system_prompt)],
    }


def to_row(record: Record, fmt: str) -> dict[str, Any]:
    if fmt == "records":
        return record.model_dump(mode="json")
    if fmt == "alpaca":
        return to_alpaca(record)
    if fmt == "sharegpt":
        return to_sharegpt(record)
    if fmt == "messages":
        return to_messages(record)
    if fmt in PAIR_FORMATS:
        return to_pair_row(record, fmt)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS + PAIR_FORMATS)}")


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_records(records: Iterable[Record], path: str | Path, fmt: str = "records") -> Path:
    """Write in `fmt`; the file type follows the suffix: .jsonl, .json, .parquet, or a folder (HF dataset)."""
    path = Path(path)
    rows = [to_row(r, fmt) for r in records]
    if path.suffix == ".parquet" or (path.suffix == "" and not path.name.endswith(".jsonl")):
        _write_table(rows, path)
        return path
    if path.suffix == ".json":
        atomic_write_text(path, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
    else:
        atomic_write_text(path, dumps_jsonl(rows))
    return path


def _write_table(rows: list[dict[str, Any]], path: Path) -> None:
    import shutil

    import datasets

    # Nested free-form dicts (meta, messages) do not have one Arrow schema across rows:
    # store them as JSON text; read_records decodes them back.
    flat = [
        {k: (json.dumps(v, ensure_ascii=False) if k in {"meta", "messages"} and v is not None else v) for k, v in r.items()}
        for r in rows
    ]
    ds = datasets.Dataset.from_list(flat) if flat else datasets.Dataset.from_dict({"id": []})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if path.suffix == ".parquet":
        ds.to_parquet(str(tmp))
        os.replace(tmp, path)
        return
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
