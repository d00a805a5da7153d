"""Readers and writers for the formats instruction data comes in.

Readers validate everything before returning anything and report `path:line: what is wrong`,
so a malformed file stops a run before it spends a single LLM call. Writers are atomic (temp
file + rename): a crash never leaves a half-written file that looks finished.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from datagen.records import Message, Record, RecordMeta, SeedTask, stable_id

FORMATS = ("records", "alpaca", "sharegpt", "messages")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "system": "system", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant"}


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "record"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def default_seeds_path() -> Path:
    repo = Path(__file__).resolve().parent.parent / "seeds" / "seed_tasks.jsonl"
    if repo.exists():
        return repo
    from importlib.resources import files

    return Path(str(files("datagen._seeds") / "seed_tasks.jsonl"))


def _iter_json_rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for .jsonl, or (index+1, item) for a .json array."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if path.suffix == ".json" or (stripped.startswith("[") and path.suffix != ".jsonl"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
        if isinstance(data, dict):
            for key in ("data", "records", "rows"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
            else:
                data = [data]
        if not isinstance(data, list):
            raise ValueError(f"{path}:1: expected a JSON array of objects")
        for index, item in enumerate(data):
            yield index + 1, item
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None


def read_seed_tasks(path: str | Path) -> list[SeedTask]:
    """Self-Instruct `seed_tasks.jsonl`; every line checked, ids must be unique."""
    path = Path(path)
    tasks: list[SeedTask] = []
    seen: dict[str, int] = {}
    for lineno, row in _iter_json_rows(path):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        try:
            task = SeedTask.model_validate(row)
        except ValidationError as exc:
            raise ValueError(f"{path}:{lineno}: {_short(exc)}") from None
        if task.id in seen:
            raise ValueError(f"{path}:{lineno}: duplicate id {task.id!r} (first on line {seen[task.id]})")
        seen[task.id] = lineno
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


def _row_to_record(row: dict[str, Any], where: str) -> Record:
    """One row of any supported format -> Record. `where` is `path:line` for errors."""
    if "meta" in row and isinstance(row["meta"], str):  # parquet/HF rows keep meta as JSON text
        row = {**row, "meta": json.loads(row["meta"])}
    if "messages" in row and isinstance(row["messages"], str):
        row = {**row, "messages": json.loads(row["messages"])}
    if "instances" in row and "is_classification" in row:  # Self-Instruct seed task
        return seed_to_record(SeedTask.model_validate(row))
    if "conversations" in row:  # ShareGPT
        turns = row["conversations"]
        if not isinstance(turns, list) or not turns:
            raise ValueError(f"{where}: 'conversations' must be a non-empty list")
        messages = []
        for k, turn in enumerate(turns):
            if not isinstance(turn, dict) or "value" not in turn or "from" not in turn:
                raise ValueError(f"{where}: conversations[{k}] needs 'from' and 'value'")
            role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
            if role is None:
                raise ValueError(f"{where}: conversations[{k}]: unknown speaker {turn['from']!r}")
            messages.append({"role": role, "content": turn["value"]})
        return _messages_record(messages, row.get("id"), where)
    if "messages" in row and "instruction" not in row:
        return _messages_record(row["messages"], row.get("id"), where)
    if "instruction" not in row:
        keys = ", ".join(sorted(row)) or "none"
        raise ValueError(
            f"{where}: unknown record format (keys: {keys}); expected instruction/input/output, "
            "messages, conversations or a Self-Instruct seed task"
        )
    data = dict(row)
    data.setdefault("input", "")
    data.setdefault("output", "")
    for key in ("input", "output"):
        if data[key] is None:
            data[key] = ""
    if not data.get("id"):
        data["id"] = stable_id(str(data["instruction"]), str(data["input"]), str(data["output"]))
    meta = data.pop("meta", None) or {}
    extra = {k: data.pop(k) for k in list(data) if k not in Record.model_fields}
    if extra:
        meta = {**meta, "extra": extra}
    data.setdefault("messages", None)
    return Record.model_validate({**data, "meta": {"source": "file", **meta}})


def _messages_record(messages: Any, record_id: Any, where: str) -> Record:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    msgs = [Message.model_validate(m) for m in messages]
    users = [m for m in msgs if m.role == "user"]
    if not users:
        raise ValueError(f"{where}: conversation has no user turn")
    last_assistant = next((m.content for m in reversed(msgs) if m.role == "assistant"), "")
    multi_turn = len([m for m in msgs if m.role != "system"]) > 2
    rid = record_id or stable_id(*(m.role + m.content for m in msgs))
    return Record(
        id=str(rid),
        instruction=users[0].content if not multi_turn else users[-1].content,
        output=last_assistant,
        messages=msgs if multi_turn or msgs[0].role == "system" else None,
        meta=RecordMeta(source="file"),
    )


def _rows_from_table(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import datasets

    if path.is_dir():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"] if "train" in ds else next(iter(ds.values()))
    else:
        ds = datasets.Dataset.from_parquet(str(path))
    for index, row in enumerate(ds):
        yield index + 1, row


def read_records(path: str | Path) -> list[Record]:
    """Any supported file -> records. Format is detected per row from its keys."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    rows: Iterable[tuple[int, Any]]
    if path.is_dir() or path.suffix == ".parquet":
        rows = _rows_from_table(path)
    else:
        rows = _iter_json_rows(path)
    records: list[Record] = []
    seen: dict[str, str] = {}
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
        try:
            record = _row_to_record(row, where)
        except ValidationError as exc:
            raise ValueError(f"{where}: {_short(exc)}") from None
        if not record.instruction.strip():
            raise ValueError(f"{where}: instruction is empty")
        if record.id in seen:
            raise ValueError(f"{where}: duplicate id {record.id!r} (first at {seen[record.id]})")
        seen[record.id] = where
        records.append(record)
    return records


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
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


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
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
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


# ---------------------------------------------------------------- CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert between record formats (and validate a file)",
        description="Read any supported file (records, Alpaca, ShareGPT, messages, Self-Instruct seeds, "
        "parquet, HF dataset folder), validate it, and write it in another format.",
    )
    parser.add_argument("--input", required=True)
    parser.add_argument("--out", required=True, help=".jsonl, .json, .parquet, or a folder for a HF dataset")
    parser.add_argument("--format", choices=FORMATS, default="records")
    parser.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    records = read_records(args.input)
    write_records(records, args.out, fmt=args.format)
    print(f"wrote {len(records)} records to {args.out} ({args.format})", file=sys.stderr)
    return 0
