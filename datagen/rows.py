"""What one row of public instruction data means, whatever its column names.

Real datasets spell the same thing many ways: Alpaca `instruction/input/output`, Dolly
`instruction/context/response`, `prompt/completion`, `question/answer`, ShareGPT
`conversations` of `from/value` turns, OpenAI `messages`, Self-Instruct tasks with
`instances`. One row becomes one `Record`; every key the mapping does not use is kept in
`meta.extra`, and the keys among those that hold text are returned so the reader can say so:
nothing that holds data disappears silently.

A Self-Instruct task (any row with `instances`) becomes one record: its first instance is
the record's input/output (what evolve, distill and fine-tuning see), and every instance is in
`meta.instances`, which the Self-Instruct stage reads to show seeds with all their examples.
"""

from __future__ import annotations

import datetime
import decimal
import json
from dataclasses import dataclass, field
from typing import Any

from datagen.records import Message, Record, RecordMeta, stable_id

INSTRUCTION_KEYS = ("instruction", "prompt", "question", "query", "problem")
INPUT_KEYS = ("input", "context")
OUTPUT_KEYS = ("output", "response", "completion", "answer", "solution")
SYSTEM_KEYS = ("system", "system_prompt")
CHAT_KEYS = ("messages", "conversations")
ROLES = {
    "user": "user", "human": "user", "prompter": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "bing": "assistant", "model": "assistant", "bot": "assistant",
    "system": "system",
}  # fmt: skip
# Keys a Record row of ours carries besides the text fields; never "unused".
_RECORD_KEYS = {"id", "meta"}


@dataclass
class ParsedRow:
    record: Record
    explicit_id: bool  # the row named its id (else it is derived from the content)
    unused_text_keys: set[str] = field(default_factory=set)
    not_kept: set[str] = field(default_factory=set)  # binary / non-JSON values, by key path


def row_to_record(row: dict[str, Any], where: str) -> ParsedRow:
    """One row of any supported shape -> a Record. `where` is `path:line` for errors."""
    row = _decode_json_columns(row)
    if isinstance(row.get("instances"), list):
        return _task_record(row, where)
    chat_key = next((k for k in CHAT_KEYS if isinstance(row.get(k), list)), None)
    if chat_key == "conversations" or (chat_key and not any(k in row for k in INSTRUCTION_KEYS)):
        return _chat_record(row, chat_key, where)
    return _instruction_record(row, where)


# ------------------------------------------------------------------ the three shapes


def _instruction_record(row: dict[str, Any], where: str) -> ParsedRow:
    used: set[str] = set(_RECORD_KEYS)
    key, instruction = _pick(row, INSTRUCTION_KEYS, where)
    input_keys = INPUT_KEYS
    if key is None and "input" in row:  # input/output rows: the input is what is asked
        key, instruction = _pick(row, ("input",), where)
        input_keys = tuple(k for k in INPUT_KEYS if k != "input")
    if key is None:
        keys = ", ".join(sorted(row)) or "none"
        raise ValueError(
            f"{where}: unknown record format (keys: {keys}); expected an instruction "
            f"({'/'.join(INSTRUCTION_KEYS)}) with optional {'/'.join(INPUT_KEYS)} and "
            f"{'/'.join(OUTPUT_KEYS)}, messages, conversations, or a Self-Instruct task with instances"
        )
    used.add(key)
    input_key, input_text = _pick(row, input_keys, where)
    output_key, output = _pick(row, OUTPUT_KEYS, where)
    system_key, system = _pick(row, SYSTEM_KEYS, where)
    used |= {k for k in (input_key, output_key, system_key) if k}
    messages, turn_extra = None, []
    if isinstance(row.get("messages"), list):  # our own records keep multi-turn chats here
        messages, turn_extra = _turns(row["messages"], "messages", where)
        used.add("messages")
    elif row.get("messages") is None and "messages" in row:
        used.add("messages")
    record = Record(id="", instruction=instruction, input=input_text, output=output)
    if messages is None and system.strip():
        messages = [Message(role="system", content=system)] + [
            Message(**m) for m in record.to_messages()
        ]
    record.messages = messages
    parsed = _finish(record, row, used, where, content=(instruction, input_text, output))
    return _keep_turn_extra(parsed, "messages", turn_extra)


def _chat_record(row: dict[str, Any], chat_key: str, where: str) -> ParsedRow:
    msgs, turn_extra = _turns(row[chat_key], chat_key, where)
    used = set(_RECORD_KEYS) | {chat_key}
    system_key, system = _pick(row, SYSTEM_KEYS, where)
    if system_key:
        used.add(system_key)
        if system.strip() and msgs[0].role != "system":
            msgs.insert(0, Message(role="system", content=system))
    last_user = max((i for i, m in enumerate(msgs) if m.role == "user"), default=-1)
    if last_user < 0:
        raise ValueError(f"{where}: conversation has no user turn")
    multi_turn = len([m for m in msgs if m.role != "system"]) > 2
    users = [m for m in msgs if m.role == "user"]
    # `messages` is a dialogue's truth; instruction / output are its first turn's view.
    first_user = next(i for i, m in enumerate(msgs) if m.role == "user")
    following = msgs[first_user + 1] if first_user + 1 < len(msgs) else None
    reply = following.content if following is not None and following.role == "assistant" else ""
    record = Record(
        id="",
        instruction=users[0].content,
        output=reply,
        messages=msgs if multi_turn or msgs[0].role == "system" else None,
    )
    parsed = _finish(record, row, used, where, content=tuple(m.role + m.content for m in msgs))
    return _keep_turn_extra(parsed, chat_key, turn_extra)


def _task_record(row: dict[str, Any], where: str) -> ParsedRow:
    key, instruction = _pick(row, INSTRUCTION_KEYS, where)
    if key is None:
        raise ValueError(f"{where}: a task with 'instances' needs an instruction")
    instances = []
    for k, item in enumerate(row["instances"]):
        if not isinstance(item, dict):
            raise ValueError(f"{where}: instances[{k}] must be an object with input and output")
        input_key, input_text = _pick(item, INPUT_KEYS, f"{where}: instances[{k}]")
        output_key, output = _pick(item, OUTPUT_KEYS, f"{where}: instances[{k}]")
        rest = {n: v for n, v in item.items() if n not in {input_key, output_key}}
        instances.append({"input": input_text, "output": output, **rest})
    first = instances[0] if instances else {"input": "", "output": ""}
    meta: dict[str, Any] = {"source": "seed", "instances": instances}
    used = set(_RECORD_KEYS) | {key, "instances"}
    if row.get("name") is not None:
        meta["name"] = _text(row["name"], "name", where)
        used.add("name")
    if "is_classification" in row:
        meta["is_classification"] = _flag(row["is_classification"], "is_classification", where)
        used.add("is_classification")
    record = Record(id="", instruction=instruction, input=first["input"], output=first["output"])
    return _finish(record, row, used, where, content=(instruction, first["input"], first["output"]), meta=meta)


# ------------------------------------------------------------------ shared pieces


def _finish(
    record: Record,
    row: dict[str, Any],
    used: set[str],
    where: str,
    content: tuple[str, ...],
    meta: dict[str, Any] | None = None,
) -> ParsedRow:
    """Id, meta and the keys nobody used (kept in meta.extra, the text-bearing ones reported)."""
    meta = {"source": "file", **(meta or {})}
    if isinstance(row.get("meta"), dict):
        meta.update(row["meta"])
    elif row.get("meta") is not None:  # a foreign column that happens to be called meta
        used = used - {"meta"}
    not_kept: set[str] = set()
    extra = {k: _json_safe(v, k, not_kept) for k, v in row.items() if k not in used}
    if extra:
        meta["extra"] = {**(meta.get("extra") or {}), **extra}
    record.meta = RecordMeta.model_validate(meta)
    rid = _text(row["id"], "id", where).strip() if row.get("id") is not None else ""
    record.id = rid or stable_id(*content)
    return ParsedRow(record, bool(rid), {k for k, v in extra.items() if _holds_text(v)}, not_kept)


def _json_safe(value: Any, key: str, not_kept: set[str]) -> Any:
    """A value records can carry as JSON: dates become ISO text; bytes (images, audio) and
    other objects cannot travel, so they become null and their key path is reported."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {k: _json_safe(v, f"{key}.{k}", not_kept) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, f"{key}[]", not_kept) for v in value]
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    not_kept.add(key)
    return None


def _keep_turn_extra(parsed: ParsedRow, chat_key: str, turn_extra: list[dict[str, Any]]) -> ParsedRow:
    """Other keys of chat turns (ShareGPT `markdown`, OpenAI `name`) go to meta.extra too."""
    if turn_extra:
        extra = dict(parsed.record.meta.extra or {})
        extra[f"{chat_key}_extra"] = turn_extra
        parsed.record.meta.extra = extra
        parsed.unused_text_keys |= {
            f"{chat_key}[].{k}" for turn in turn_extra for k, v in turn.items() if _holds_text(v)
        }
    return parsed


def _turns(turns: list[Any], key: str, where: str) -> tuple[list[Message], list[dict[str, Any]]]:
    """Chat turns in role/content or ShareGPT from/value spelling -> Messages (+ their other keys)."""
    if not turns:
        raise ValueError(f"{where}: '{key}' must be a non-empty list")
    messages, extras = [], []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f"{where}: {key}[{k}] must be an object")
        role_key = "role" if "role" in turn else "from"
        content_key = "content" if "content" in turn else "value"
        if role_key not in turn or content_key not in turn:
            raise ValueError(f"{where}: {key}[{k}] needs 'role' and 'content' (or ShareGPT's 'from' and 'value')")
        role = ROLES.get(str(turn[role_key]).strip().lower())
        if role is None:
            raise ValueError(
                f"{where}: {key}[{k}]: unknown role {turn[role_key]!r} (expected system, user or assistant)"
            )
        messages.append(Message(role=role, content=_content(turn[content_key], f"{where}: {key}[{k}]")))
        rest = {n: v for n, v in turn.items() if n not in {role_key, content_key}}
        extras.append(rest)
    return messages, extras if any(extras) else []


def _content(value: Any, where: str) -> str:
    """Message content: text, or OpenAI's list of parts (text parts only)."""
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(f"{where}: content part of type {kind!r} is not supported (text only)")
        return "\n".join(texts)
    return _text(value, "content", where)


def _pick(row: dict[str, Any], keys: tuple[str, ...], where: str) -> tuple[str | None, str]:
    """The first of `keys` the row fills (a null value counts as absent), as text."""
    for key in keys:
        if row.get(key) is not None:
            return key, _text(row[key], key, where)
    present = next((k for k in keys if k in row), None)
    return present, ""


def _text(value: Any, key: str, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    raise ValueError(f"{where}: {key!r} must be text, got {type(value).__name__}")


def _flag(value: Any, key: str, where: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "yes", "1"}:
        return True
    if text in {"false", "no", "0"}:
        return False
    raise ValueError(f"{where}: {key!r} must be true or false, got {value!r}")


def _holds_text(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip())
    if isinstance(value, list | tuple):
        return any(_holds_text(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_text(v) for v in value.values())
    return False


def _decode_json_columns(row: dict[str, Any]) -> dict[str, Any]:
    """Parquet/HF tables we write keep `meta` and `messages` as JSON text; decode them back."""
    decoded = {}
    for key in ("meta", "messages", "conversations"):
        value = row.get(key)
        if isinstance(value, str) and value[:1] in "[{":
            try:
                decoded[key] = json.loads(value)
            except json.JSONDecodeError:
                continue  # foreign text column of that name: kept as it is
    return {**row, **decoded} if decoded else row
