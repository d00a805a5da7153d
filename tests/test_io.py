"""Readers accept every supported format and reject malformed files with path:line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen.io import FORMATS, read_records, read_seed_tasks, write_records
from datagen.records import Record, RecordMeta


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


SEED = {"id": "s1", "name": "n", "instruction": "Say hi.", "instances": [{"input": "", "output": "hi"}],
        "is_classification": False}


def test_seed_file_ok(tmp_path: Path) -> None:
    path = _write(tmp_path / "s.jsonl", [json.dumps(SEED), json.dumps({**SEED, "id": "s2"})])
    tasks = read_seed_tasks(path)
    assert [t.id for t in tasks] == ["s1", "s2"]
    records = read_records(path)
    assert records[0].meta.source == "seed" and records[0].output == "hi"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "s3", "name": "n"', "invalid JSON"),
        (json.dumps({**SEED, "id": "s3", "instances": []}), "instances"),
        (json.dumps({**SEED, "id": "s3", "is_classification": "maybe"}), "is_classification"),
        (json.dumps({**SEED, "id": "s1"}), "duplicate id 's1'"),
        (json.dumps({**SEED, "id": "s3", "extra_key": 1}), "extra_key"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_malformed_seed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [json.dumps(SEED), "", line])
    with pytest.raises(ValueError) as info:
        read_seed_tasks(path)
    assert str(info.value).startswith(f"{path}:3:")
    assert message in str(info.value)


def test_missing_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_records(tmp_path / "nope.jsonl")


def test_alpaca_json_and_sharegpt_and_messages(tmp_path: Path) -> None:
    alpaca = tmp_path / "a.json"
    alpaca.write_text(json.dumps([{"instruction": "Add", "input": "1+1", "output": "2"}]))
    (rec,) = read_records(alpaca)
    assert (rec.instruction, rec.input, rec.output) == ("Add", "1+1", "2")

    share = _write(tmp_path / "s.jsonl", [json.dumps({"conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}]})])
    (rec,) = read_records(share)
    assert rec.instruction == "Hi?" and rec.output == "Hello."
    assert rec.to_messages()[0] == {"role": "system", "content": "Be brief."}

    multi = _write(tmp_path / "m.jsonl", [json.dumps({"messages": [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]})])
    (rec,) = read_records(multi)
    assert len(rec.to_messages()) == 4 and (rec.instruction, rec.output) == ("a", "b")  # the first turn's view


def test_unknown_format_and_bad_role(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.jsonl", [json.dumps({"text": "p", "label": 1})])
    with pytest.raises(ValueError, match=r"x.jsonl:1: unknown record format \(keys: label, text\)"):
        read_records(path)
    path = _write(tmp_path / "y.jsonl", [json.dumps({"messages": [{"role": "robot", "content": "x"}]})])
    with pytest.raises(ValueError, match=r"y.jsonl:1: .*unknown role 'robot'"):
        read_records(path)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ""])
def test_round_trip(tmp_path: Path, fmt: str, suffix: str) -> None:
    records = [
        Record(id="a", instruction="Translate", input="hola", output="hello",
               meta=RecordMeta(source="x", scores={"judge": 4.5}, candidates=[{"text": "hi"}])),
        Record(id="b", instruction="Count to 3", output="1 2 3"),
    ]
    out = write_records(records, tmp_path / f"out{suffix or '_ds'}", fmt=fmt)
    back = read_records(out)
    # Chat formats fold the input into the user turn; what a model sees must survive.
    assert [(r.prompt_text(), r.output) for r in back] == [(r.prompt_text(), r.output) for r in records]
    if fmt in {"records", "alpaca"}:
        assert [r.input for r in back] == [r.input for r in records]
    if fmt == "records":
        assert back == records


def test_write_is_atomic_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("finished\n")

    class Boom(Record):
        def model_dump(self, **kwargs):  # type: ignore[override]
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_records([Boom(id="x", instruction="i")], target)
    assert target.read_text() == "finished\n"
    assert list(tmp_path.iterdir()) == [target]


def test_our_seeds_load() -> None:
    from datagen.io import default_seeds_path

    assert len(read_seed_tasks(default_seeds_path())) == 175
