"""Preference pairs as files: TRL's preference layouts out, checked pairs in.

Written (`datagen.io.write_records` with `fmt="dpo"` / `"dpo_text"`):

* `dpo`: TRL's conversational preference layout, what `DPOTrainer` takes as is:
  `{"id", "prompt": [messages up to the last user turn], "chosen": [{"role": "assistant", ...}],
  "rejected": [...], "score_chosen", "score_rejected", "ranked_by"}`.
* `dpo_text`: the plain-text variant (`prompt`, `chosen`, `rejected` as strings) for trainers
  without a chat template.

Read (`read_pairs`): either layout, one pair per line, every pair checked, because a DPO step
on a bad pair silently learns nothing (identical sides) or the wrong thing (a missing side):
a missing or blank `chosen`/`rejected`, identical sides, or an empty prompt is a
`path:line: what is wrong` error, and nothing is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datagen.jsonl import parse_jsonl
from datagen.records import Record

PAIR_FORMATS = ("dpo", "dpo_text")


@dataclass(frozen=True)
class PreferencePair:
    """One checked pair: the prompt as chat messages, and the two answers' text."""

    id: str
    prompt: list[dict[str, str]]
    chosen: str
    rejected: str


def prompt_messages(record: Record) -> list[dict[str, str]]:
    """The conversation the two answers continue: the record's messages without the final answer."""
    msgs = record.to_messages()
    while msgs and msgs[-1]["role"] == "assistant":
        msgs.pop()
    return msgs


def prompt_text(messages: list[dict[str, str]]) -> str:
    """A prompt as plain text: the user turn alone when there is one, else "Role: text" turns."""
    if len(messages) == 1 and messages[0]["role"] == "user":
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def record_pair(record: Record) -> PreferencePair:
    """The pair a preference record carries; a ValueError naming the record when it has none."""
    meta = record.meta
    if meta.chosen is None or meta.rejected is None:
        raise ValueError(f"record {record.id}: no preference pair (meta.chosen / meta.rejected); "
                         "run the preference stage before a dpo export")
    return PreferencePair(record.id, prompt_messages(record), meta.chosen, meta.rejected)


def checked_record_pairs(records: list[Record]) -> list[PreferencePair]:
    """The pair of every record, each checked like a file's line (the error names the record)."""
    pairs = []
    for record in records:
        pair = record_pair(record)
        where = f"record {record.id}"
        if not any(m["content"].strip() for m in pair.prompt if m["role"] != "system"):
            raise ValueError(f"{where}: prompt is empty")
        for side in ("chosen", "rejected"):
            if not getattr(pair, side).strip():
                raise ValueError(f"{where}: {side} is empty")
        if pair.chosen.strip() == pair.rejected.strip():
            raise ValueError(f"{where}: chosen and rejected are identical (the pair teaches nothing)")
        pairs.append(pair)
    return pairs


def to_pair_row(record: Record, fmt: str) -> dict[str, Any]:
    """One export row in `fmt` ("dpo" or "dpo_text")."""
    pair = record_pair(record)
    meta = record.meta
    extra = {"score_chosen": meta.chosen_score, "score_rejected": meta.rejected_score, "ranked_by": meta.ranked_by}
    if fmt == "dpo_text":
        return {"id": pair.id, "prompt": prompt_text(pair.prompt), "chosen": pair.chosen, "rejected": pair.rejected,
                **extra}
    return {
        "id": pair.id,
        "prompt": pair.prompt,
        "chosen": [{"role": "assistant", "content": pair.chosen}],
        "rejected": [{"role": "assistant", "content": pair.rejected}],
        **extra,
    }


def _side(row: dict[str, Any], key: str, where: str) -> str:
    value = row.get(key)
    if isinstance(value, list):  # conversational: the assistant turn(s) after the prompt
        turns = [m for m in value if isinstance(m, dict)]
        if len(turns) != len(value) or any("content" not in m for m in turns):
            raise ValueError(f"{where}: {key}: expected a list of {{role, content}} messages")
        value = "\n".join(str(m["content"]) for m in turns if m.get("role", "assistant") == "assistant")
    if value is None:
        raise ValueError(f"{where}: {key} is missing")
    if not isinstance(value, str):
        raise ValueError(f"{where}: {key}: expected text or a list of messages, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: {key} is empty")
    return value


def _prompt(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    value = row.get("prompt")
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    if not isinstance(value, list) or not all(isinstance(m, dict) and "content" in m for m in value):
        raise ValueError(f"{where}: prompt is missing (text or a list of {{role, content}} messages)")
    messages = [{"role": str(m.get("role", "user")), "content": str(m["content"])} for m in value]
    if not any(m["content"].strip() for m in messages if m["role"] != "system"):
        raise ValueError(f"{where}: prompt is empty")
    return messages


def read_pairs(path: str | Path) -> list[PreferencePair]:
    """Every pair of a `dpo` / `dpo_text` JSONL file, checked; the first bad line is a `path:line:` error."""
    path = Path(path)
    pairs: list[PreferencePair] = []
    for line, row in parse_jsonl(path.read_text(encoding="utf-8"), path):
        where = f"{path}:{line}"
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object with prompt, chosen and rejected")
        prompt = _prompt(row, where)
        chosen, rejected = _side(row, "chosen", where), _side(row, "rejected", where)
        if chosen.strip() == rejected.strip():
            raise ValueError(f"{where}: chosen and rejected are identical (the pair teaches nothing)")
        pairs.append(PreferencePair(str(row.get("id") or f"pair_{line}"), prompt, chosen, rejected))
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    return pairs
