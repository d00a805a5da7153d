"""finetune.data: records -> chat examples, and the train/eval split. No model needed."""

from __future__ import annotations

import json

import pytest

from datagen.records import Message, Record
from finetune.data import (
    eval_count,
    load_records,
    prompt_messages,
    record_to_example,
    records_to_examples,
    reference_answer,
    split_examples,
)


def _rec(i: int, output: str = "out", inp: str = "") -> Record:
    return Record(id=f"r{i}", instruction=f"instruction {i}", input=inp, output=output)


def test_single_turn_user_is_instruction_plus_input_and_assistant_is_output() -> None:
    ex = record_to_example(_rec(1, output="  the answer \n", inp="some input"))
    assert ex == {
        "id": "r1",
        "messages": [
            {"role": "user", "content": "instruction 1\n\nsome input"},
            {"role": "assistant", "content": "the answer"},
        ],
    }


def test_system_prompt_is_added_only_when_given() -> None:
    ex = record_to_example(_rec(1), system_prompt="Be brief.")
    assert ex["messages"][0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in record_to_example(_rec(1))["messages"]] == ["user", "assistant"]


def test_multi_turn_messages_are_kept_and_own_system_turn_wins() -> None:
    msgs = [
        Message(role="system", content="own system"),
        Message(role="user", content="q1"),
        Message(role="assistant", content="a1"),
        Message(role="user", content="q2"),
        Message(role="assistant", content="a2"),
        Message(role="user", content="unanswered"),
    ]
    rec = Record(id="m", instruction="q1", messages=msgs)
    ex = record_to_example(rec, system_prompt="ignored")
    roles = [m["role"] for m in ex["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]  # trailing user turn dropped
    assert ex["messages"][0]["content"] == "own system"
    assert prompt_messages(ex) == ex["messages"][:4]
    assert reference_answer(ex) == "a2"


def test_records_without_assistant_text_are_skipped_and_counted() -> None:
    examples, stats = records_to_examples([_rec(1), _rec(2, output="   "), _rec(3, output="")])
    assert [e["id"] for e in examples] == ["r1"]
    assert stats.as_dict() == {"records": 3, "examples": 1, "multi_turn": 0, "skipped": {"no_assistant_text": 2}}


def test_load_records_reads_files_via_datagen_io(tmp_path) -> None:
    path = tmp_path / "alpaca.jsonl"
    rows = [{"instruction": "Say hi", "input": "", "output": "hi"}, {"instruction": "Add", "input": "1+1", "output": "2"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = load_records(path)
    examples, _ = records_to_examples(records)
    assert [e["messages"][0]["content"] for e in examples] == ["Say hi", "Add\n\n1+1"]


@pytest.mark.parametrize(
    ("n", "fraction", "expected"),
    [(0, 0.05, 0), (3, 0.5, 0), (4, 0.05, 1), (8, 0.05, 1), (100, 0.05, 5), (100, 0.0, 0), (5, 0.99, 4)],
)
def test_eval_count(n: int, fraction: float, expected: int) -> None:
    assert eval_count(n, fraction) == expected


def test_split_is_seeded_deterministic_and_independent_of_input_order() -> None:
    examples, _ = records_to_examples([_rec(i) for i in range(40)])
    train, held = split_examples(examples, 0.1, seed=7)
    assert len(held) == 4 and len(train) == 36
    assert {e["id"] for e in train}.isdisjoint({e["id"] for e in held})
    again_train, again_held = split_examples(list(reversed(examples)), 0.1, seed=7)
    assert {e["id"] for e in again_held} == {e["id"] for e in held}
    _, other_held = split_examples(examples, 0.1, seed=8)
    assert {e["id"] for e in other_held} != {e["id"] for e in held}
    # order within each side follows the input
    assert [e["id"] for e in train] == [e["id"] for e in examples if e["id"] not in {h["id"] for h in held}]
