"""3-turn dialogues through every export and back: ShareGPT, messages, records, parquet, HF folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen.io import read_records, write_records
from datagen.records import Message, Record, RecordMeta

TURNS = [("Plan a day in Lisbon.", "Morning: Alfama. Afternoon: Belém."),
         ("Make it rain-proof.", "Swap Belém for the Gulbenkian museum."),
         ("在哪里吃晚饭？", "Try a tasca in Mouraria.")]


def dialogue() -> Record:
    msgs = [Message(role="system", content="Be concise.")]
    for q, a in TURNS:
        msgs += [Message(role="user", content=q), Message(role="assistant", content=a)]
    return Record(id="d1", instruction=TURNS[0][0], output=TURNS[0][1], messages=msgs,
                  meta=RecordMeta(source="conversation", persona="A tour guide in Rome"))


@pytest.mark.parametrize(("fmt", "name"), [("sharegpt", "x.jsonl"), ("messages", "x.jsonl"), ("records", "x.jsonl"),
                                           ("records", "x.parquet"), ("messages", "hf_folder"),
                                           ("sharegpt", "x.json")])
def test_a_three_turn_dialogue_round_trips(tmp_path: Path, fmt: str, name: str) -> None:
    path = write_records([dialogue()], tmp_path / name, fmt)
    (back,) = read_records(path)
    assert [(m.role, m.content) for m in back.messages] == [(m.role, m.content) for m in dialogue().messages]
    assert (back.instruction, back.output) == TURNS[0]  # the first turn's view, whatever the layout
    if fmt == "records":
        assert back.meta.persona == "A tour guide in Rome"


def test_exported_rows_have_every_turn(tmp_path: Path) -> None:
    share = json.loads((write_records([dialogue()], tmp_path / "s.jsonl", "sharegpt")).read_text().split("\n")[0])
    assert [t["from"] for t in share["conversations"]] == ["system"] + ["human", "gpt"] * 3
    msgs = json.loads((write_records([dialogue()], tmp_path / "m.jsonl", "messages")).read_text().split("\n")[0])
    assert [m["role"] for m in msgs["messages"]] == ["system"] + ["user", "assistant"] * 3
    assert msgs["messages"][5]["content"] == "在哪里吃晚饭？"


def test_openai_and_sharegpt_inputs_read_into_the_same_shape(tmp_path: Path) -> None:
    turns = [{"role": r, "content": c} for q, a in TURNS for r, c in (("user", q), ("assistant", a))]
    names = {"user": "human", "assistant": "gpt"}
    (tmp_path / "in.jsonl").write_text(
        json.dumps({"messages": turns}, ensure_ascii=False) + "\n"
        + json.dumps({"conversations": [{"from": names[t["role"]], "value": t["content"]} for t in turns]},
                     ensure_ascii=False) + "\n", encoding="utf-8")
    first, second = read_records(tmp_path / "in.jsonl")
    assert first.messages == second.messages and len(first.messages) == 6
    assert (first.instruction, first.output) == (second.instruction, second.output) == TURNS[0]
