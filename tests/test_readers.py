"""Readers on the shapes real public instruction data comes in.

Each test writes a file the way the public dataset ships it (Alpaca json, Dolly jsonl,
ShareGPT, OpenAI messages, Self-Instruct seed and machine-generated tasks, parquet, HF
folders), with the warts real files have (duplicate rows, BOM, CRLF, blank lines, wrong
suffix, non-UTF-8 bytes), and checks that nothing holding data is lost or dropped silently.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datagen.io import read_records
from datagen.records import stable_id


def _jsonl(path: Path, rows: list[Any], newline: str = "\n") -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + newline for r in rows), encoding="utf-8", newline="")
    return path


# --------------------------------------------------------------------------- duplicates


def test_duplicate_rows_without_id_all_read_with_unique_stable_ids(tmp_path: Path) -> None:
    row = {"instruction": "Name a colour.", "input": "", "output": "Blue."}
    other = {"instruction": "Name a fruit.", "input": "", "output": "Apple."}
    path = _jsonl(tmp_path / "alpaca.jsonl", [row, other, row, row])
    records = read_records(path)
    assert [r.instruction for r in records] == ["Name a colour.", "Name a fruit.", "Name a colour.", "Name a colour."]
    ids = [r.id for r in records]
    assert len(set(ids)) == 4
    # The first occurrence keeps the plain content id (resume hashes stay as they were);
    # repeats are numbered by occurrence, so a reread gives the same ids.
    base = stable_id("Name a colour.", "", "Blue.")
    assert ids[0] == base and ids[2] == f"{base}#2" and ids[3] == f"{base}#3"
    assert [r.id for r in read_records(path)] == ids


def test_duplicate_rows_reach_dedup_as_exact_duplicates(tmp_path: Path, capsys) -> None:
    from datagen.cli import main

    rows = [{"instruction": f"Task {i}: add {i} and {i}.", "input": "", "output": str(2 * i)} for i in range(5)]
    path = _jsonl(tmp_path / "dups.jsonl", rows + [rows[1], rows[3], rows[1]])
    out, drop = tmp_path / "out.jsonl", tmp_path / "dropped.jsonl"
    code = main(["dedup", "--input", str(path), "--no-semantic", "--out", str(out), "--dropped", str(drop), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    gone = [json.loads(line) for line in drop.read_text().splitlines()]
    assert [r["instruction"] for r in kept] == [r["instruction"] for r in rows]
    assert [r["meta"]["drop_reason"] for r in gone] == ["exact_duplicate"] * 3
    kept_ids = {r["id"] for r in kept}
    assert all(r["meta"]["drop_detail"]["kept_id"] in kept_ids for r in gone)


def test_explicit_duplicate_ids(tmp_path: Path) -> None:
    row = {"id": "a1", "instruction": "Say hi.", "output": "hi"}
    same = _jsonl(tmp_path / "same.jsonl", [row, {"id": "b", "instruction": "x"}, row])
    # The same row twice is an exact duplicate: it is read, numbered, and left to dedup.
    assert [r.id for r in read_records(same)] == ["a1", "b", "a1#2"]
    clash = _jsonl(tmp_path / "clash.jsonl", [row, {"id": "b", "instruction": "x"}, {**row, "output": "hello"}])
    with pytest.raises(ValueError) as info:
        read_records(clash)
    message = str(info.value)
    assert message.startswith(f"{clash}:3: duplicate id 'a1'") and f"{clash}:1" in message


def test_our_dropped_records_read_back_even_with_an_empty_instruction(tmp_path: Path) -> None:
    """A generation request that failed leaves a drop with no instruction text; the file of
    drops is ours and must read back (report, inspection), while input rows still need one."""
    from datagen.io import write_records
    from datagen.records import Record, RecordMeta, dropped

    path = write_records([dropped(Record(id="x", instruction="", meta=RecordMeta(source="self_instruct")),
                                  "llm_error", error="http_500")], tmp_path / "dropped.jsonl")
    (back,) = read_records(path)
    assert back.meta.drop_reason == "llm_error" and back.meta.drop_detail == {"error": "http_500"}
    plain = _jsonl(tmp_path / "in.jsonl", [{"instruction": " ", "output": "x"}])
    with pytest.raises(ValueError, match="instruction is empty"):
        read_records(plain)


# --------------------------------------------------------------------------- Self-Instruct tasks


def test_task_rows_without_name_or_flag_keep_their_instances(tmp_path: Path, capsys) -> None:
    from datagen.stages.self_instruct_tasks import seed_task as _seed_task

    task = {
        "id": "t1",
        "instruction": "Sort the numbers in ascending order.",
        "instances": [{"input": "3, 1, 2", "output": "1, 2, 3"}, {"input": "9, 7", "output": "7, 9"}],
        "motivation_app": "calculator",
    }
    (record,) = read_records(_jsonl(tmp_path / "tasks.jsonl", [task]))
    assert (record.id, record.input, record.output) == ("t1", "3, 1, 2", "1, 2, 3")
    assert record.meta.source == "seed"
    assert record.meta.instances == task["instances"]  # type: ignore[attr-defined]
    assert record.meta.extra == {"motivation_app": "calculator"}  # type: ignore[attr-defined]
    seed = _seed_task(record)  # the Self-Instruct stage sees every instance
    assert [(i.input, i.output) for i in seed.instances] == [("3, 1, 2", "1, 2, 3"), ("9, 7", "7, 9")]
    assert "unused keys: motivation_app" in capsys.readouterr().err


def test_machine_generated_self_instruct_rows(tmp_path: Path, capsys) -> None:
    """The shape of Self-Instruct's machine_generated_instances.jsonl: no id, instances plus
    generation metadata; the metadata is kept and named, never a reason to lose the instances."""
    row = {
        "instruction": "Give an antonym.",
        "instances": [{"input": "hot", "output": "cold"}],
        "raw_instances": "Input: hot\nOutput: cold",
        "instance_metadata": {"finish_reason": "stop"},
        "most_similar": {"Give a synonym.": 0.6},
        "avg_similarity_score": 0.41,
    }
    path = _jsonl(tmp_path / "machine_generated_instances.jsonl", [row, row])
    first, second = read_records(path)
    assert (first.input, first.output) == ("hot", "cold")
    assert first.id != second.id
    assert first.meta.extra["avg_similarity_score"] == 0.41  # type: ignore[attr-defined]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"{path}: unused keys: instance_metadata, raw_instances (kept in meta.extra)"]


def test_bundled_seed_tasks_read_as_before() -> None:
    from datagen.io import default_seeds_path

    records = read_records(default_seeds_path())
    assert len(records) == 175 and all(r.output and r.meta.instances for r in records)  # type: ignore[attr-defined]
    assert records[0].meta.name == "explain_rainbow_formation"  # type: ignore[attr-defined]
    assert all(r.meta.is_classification is not None for r in records)


# --------------------------------------------------------------------------- key names


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        ({"instruction": "Add.", "input": "1+1", "response": "2"}, ("Add.", "1+1", "2")),
        ({"prompt": "Say hi.", "completion": " hi"}, ("Say hi.", "", " hi")),
        ({"question": "What is 2+2?", "answer": "4"}, ("What is 2+2?", "", "4")),
        ({"query": "Capital of France?", "response": "Paris"}, ("Capital of France?", "", "Paris")),
        ({"problem": "Solve x+1=2.", "solution": "x=1"}, ("Solve x+1=2.", "", "x=1")),
        ({"instruction": "Sum.", "input": None, "output": 3}, ("Sum.", "", "3")),
        ({"input": "Translate: bonjour", "output": "hello"}, ("Translate: bonjour", "", "hello")),
    ],
)
def test_common_key_names(tmp_path: Path, capsys, row: dict, expected: tuple[str, str, str]) -> None:
    (record,) = read_records(_jsonl(tmp_path / "x.jsonl", [row]))
    assert (record.instruction, record.input, record.output) == expected
    assert capsys.readouterr().err == ""  # every key was used: nothing to warn about


def test_dolly_rows(tmp_path: Path, capsys) -> None:
    row = {"instruction": "Who wrote it?", "context": "Hamlet is a play by Shakespeare.", "response": "Shakespeare.",
           "category": "closed_qa"}
    path = _jsonl(tmp_path / "databricks-dolly-15k.jsonl", [row])
    (record,) = read_records(path)
    assert (record.instruction, record.input, record.output) == ("Who wrote it?", row["context"], "Shakespeare.")
    assert record.meta.extra == {"category": "closed_qa"}  # type: ignore[attr-defined]
    assert capsys.readouterr().err == f"{path}: unused keys: category (kept in meta.extra)\n"


def test_unused_text_keys_warned_once_per_file_and_kept(tmp_path: Path, capsys) -> None:
    rows = [{"instruction": f"Q{i}", "output": f"A{i}", "target": f"T{i}", "score": i} for i in range(3)]
    path = _jsonl(tmp_path / "t.jsonl", rows)
    records = read_records(path)
    assert [r.meta.extra for r in records] == [{"target": f"T{i}", "score": i} for i in range(3)]  # type: ignore[attr-defined]
    assert capsys.readouterr().err == f"{path}: unused keys: target (kept in meta.extra)\n"


def test_system_field_becomes_the_system_turn(tmp_path: Path, capsys) -> None:
    row = {"system": "Answer in French.", "instruction": "Say thanks.", "output": "Merci."}
    (record,) = read_records(_jsonl(tmp_path / "s.jsonl", [row]))
    assert record.to_messages() == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Say thanks."},
        {"role": "assistant", "content": "Merci."},
    ]
    assert capsys.readouterr().err == ""


def test_chat_rows_in_every_common_spelling(tmp_path: Path, capsys) -> None:
    rows = [
        {"id": "sg1", "conversations": [{"from": "human", "value": "Hi?"}, {"from": "gpt", "value": "Hello."}],
         "model": "gpt-4"},
        {"conversations": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"from": "human", "value": "Name a cat."}, {"from": "gpt", "value": "Tom."}]},
        {"messages": [{"role": "system", "content": "Be brief."},
                      {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text", "text": "rain."}]},
                      {"role": "assistant", "content": "Wet."}]},
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "model", "content": "Hey."}]},
    ]
    path = _jsonl(tmp_path / "chat.jsonl", rows)
    records = read_records(path)
    assert [(r.instruction, r.output) for r in records] == [
        ("Hi?", "Hello."), ("2+2?", "4"), ("Name a cat.", "Tom."), ("Describe\nrain.", "Wet."), ("Hi", "Hey.")
    ]
    assert records[0].id == "sg1" and records[0].meta.extra == {"model": "gpt-4"}  # type: ignore[attr-defined]
    assert records[3].to_messages()[0] == {"role": "system", "content": "Be brief."}
    assert capsys.readouterr().err == f"{path}: unused keys: model (kept in meta.extra)\n"


def test_other_keys_of_chat_turns_are_kept_and_named(tmp_path: Path, capsys) -> None:
    row = {"conversations": [{"from": "human", "value": "Hi?", "markdown": "**Hi?**"},
                             {"from": "gpt", "value": "Hello.", "weight": 1}]}
    path = _jsonl(tmp_path / "sharegpt.jsonl", [row])
    (record,) = read_records(path)
    assert record.meta.extra == {"conversations_extra": [{"markdown": "**Hi?**"}, {"weight": 1}]}  # type: ignore[attr-defined]
    assert capsys.readouterr().err == f"{path}: unused keys: conversations[].markdown (kept in meta.extra)\n"


def test_unreadable_rows_name_what_is_wrong(tmp_path: Path) -> None:
    cases = [
        ({"text": "### Human: hi ### Assistant: hello"}, "unknown record format (keys: text)"),
        ({"messages": [{"role": "tool", "content": "{}"}]}, "messages[0]: unknown role 'tool'"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
         "messages[0]: content part of type 'image_url'"),
        ({"instruction": ["a", "b"], "output": "x"}, "'instruction' must be text, got list"),
    ]
    for k, (row, message) in enumerate(cases):
        path = _jsonl(tmp_path / f"bad{k}.jsonl", [{"instruction": "ok", "output": "fine"}, row])
        with pytest.raises(ValueError) as info:
            read_records(path)
        assert str(info.value).startswith(f"{path}:2: "), info.value
        assert message in str(info.value)


# --------------------------------------------------------------------------- bytes on disk


def test_bom_crlf_blank_lines_and_line_separators(tmp_path: Path) -> None:
    rows = [{"instruction": "Split\u2028here\u0085and\x0chere", "output": "ok\r\nfine"}, {"instruction": "Two", "output": "2"}]
    body = "\r\n".join(json.dumps(r, ensure_ascii=False) for r in rows)
    path = tmp_path / "win.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + ("\r\n" + body + "\r\n\r\n   \r\n").encode("utf-8"))
    records = read_records(path)
    assert [(r.instruction, r.output) for r in records] == [(r["instruction"], r["output"]) for r in rows]


def test_json_array_and_jsonl_whatever_the_suffix(tmp_path: Path) -> None:
    rows = [{"instruction": "A", "output": "1"}, {"instruction": "B", "output": "2"}]
    expected = [("A", "1"), ("B", "2")]
    variants = {
        "array.jsonl": json.dumps(rows, indent=2),
        "lines.json": "\n".join(json.dumps(r) for r in rows),
        "bom_array.json": "\ufeff" + json.dumps(rows),
        "wrapped.json": json.dumps({"version": 1, "data": rows}),
        "noext": "\n".join(json.dumps(r) for r in rows),
    }
    for name, text in variants.items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        assert [(r.instruction, r.output) for r in read_records(path)] == expected, name
    gz = tmp_path / "rows.jsonl.gz"
    gz.write_bytes(gzip.compress(variants["lines.json"].encode()))
    assert [(r.instruction, r.output) for r in read_records(gz)] == expected


def test_pretty_json_array_errors_name_the_line_of_the_item(tmp_path: Path) -> None:
    rows = [{"instruction": "A", "output": "1"}, {"instruction": "", "output": "2"}]
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    with pytest.raises(ValueError, match=r"alpaca_data.json:6: instruction is empty"):
        read_records(path)
    path.write_text('[\n  {"instruction": "A"},\n  {"instruction": "B",}\n]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"alpaca_data.json:3: invalid JSON"):
        read_records(path)


def test_non_utf8_and_binary_files_are_one_clear_line(tmp_path: Path, capsys) -> None:
    from datagen.cli import main

    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes(b'{"instruction": "ok", "output": "1"}\n{"instruction": "caf\xe9", "output": "2"}\n')
    with pytest.raises(ValueError, match=rf"^{latin}:2: not UTF-8 text \(byte 0xe9"):
        read_records(latin)

    binary = tmp_path / "weights.json"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=rf"^{binary}: not a text file"):
        read_records(binary)

    for bad in (latin, binary):
        assert main(["convert", "--input", str(bad), "--out", str(tmp_path / "o.jsonl")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(bad) in err and "Traceback" not in err


def test_utf16_reads_and_broken_containers_are_one_line(tmp_path: Path) -> None:
    utf16 = tmp_path / "excel_export.jsonl"
    utf16.write_text(json.dumps({"instruction": "Caf\u00e9?", "output": "Oui."}, ensure_ascii=False) + "\n", encoding="utf-16")
    assert [(r.instruction, r.output) for r in read_records(utf16)] == [("Caf\u00e9?", "Oui.")]
    for name, data, message in [
        ("cut.jsonl.gz", gzip.compress(b'{"instruction": "x"}\n')[:-6], "not a readable gzip file"),
        ("cut.parquet", b"PAR1" + b"\x01" * 40, "not a readable parquet file"),
        ("renamed_parquet.jsonl", b"PAR1" + b"\x01" * 40, "not a readable parquet file"),
    ]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ValueError) as info:
            read_records(path)
        assert str(info.value).startswith(f"{path}: {message}") and "\n" not in str(info.value)


def test_parquet_with_foreign_columns_and_parquet_under_another_name(tmp_path: Path, capsys) -> None:
    import datasets

    rows = [
        {"instruction": "Who?", "context": "Ada wrote code.", "response": "Ada.", "category": "closed_qa"},
        {"instruction": "Why?", "context": None, "response": "Because.", "category": "open_qa"},
    ]
    path = tmp_path / "dolly.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(path))
    records = read_records(path)
    assert [(r.instruction, r.input, r.output) for r in records] == [("Who?", "Ada wrote code.", "Ada."), ("Why?", "", "Because.")]
    renamed = tmp_path / "train-00000-of-00001"
    renamed.write_bytes(path.read_bytes())
    assert [r.id for r in read_records(renamed)] == [r.id for r in records]
    assert capsys.readouterr().err.count("unused keys: category") == 2


def test_binary_and_date_columns_are_named_and_the_records_still_write(tmp_path: Path, capsys) -> None:
    """A multimodal or logged table: image bytes cannot travel in JSON records, so they are
    named as not kept; dates become ISO text. Writing the records back must work."""
    import datetime

    import pyarrow as pa
    import pyarrow.parquet as pq

    from datagen.io import write_records

    table = pa.table({
        "prompt": ["Describe it."], "response": ["A cat."],
        "image": [{"bytes": b"\xff\xd8\xff", "path": "cat.jpg"}],
        "created": [datetime.datetime(2024, 5, 1, 12, 0)],
    })
    path = tmp_path / "llava.parquet"
    pq.write_table(table, path)
    (record,) = read_records(path)
    assert record.meta.extra == {"image": {"bytes": None, "path": "cat.jpg"}, "created": "2024-05-01T12:00:00"}  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert f"{path}: not kept (binary or not JSON): image.bytes" in err
    assert f"{path}: unused keys: created, image (kept in meta.extra)" in err
    out = write_records([record], tmp_path / "out.jsonl")
    assert read_records(out)[0].meta.extra == record.meta.extra  # type: ignore[attr-defined]


def test_dataset_dict_folder_says_which_split_it_read(tmp_path: Path, capsys) -> None:
    import datasets

    folder = tmp_path / "hf"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([{"instruction": "T", "output": "1"}]),
        "test": datasets.Dataset.from_list([{"instruction": "E", "output": "2"}]),
    }).save_to_disk(str(folder))
    assert [r.instruction for r in read_records(folder)] == ["T"]
    assert f"{folder}: read split 'train'; not read: test" in capsys.readouterr().err
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(FileNotFoundError, match=rf"^{plain}: not a dataset folder"):
        read_records(plain)


# --------------------------------------------------------------------------- properties

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
_row = st.fixed_dictionaries(
    {"instruction": _text.filter(lambda s: s.strip())},
    optional={"input": _text, "output": _text, "category": _text, "id": st.sampled_from(["x", "y"])},
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_row, max_size=8), layout=st.sampled_from(["jsonl", "crlf", "bom", "array", "array.jsonl"]))
def test_property_every_row_read_nothing_lost(tmp_path: Path, rows: list[dict], layout: str) -> None:
    # Explicit ids here are unique: clashing explicit ids are a separate, tested error.
    seen_ids: set[str] = set()
    rows = [r for r in rows if r.get("id") is None or not (r["id"] in seen_ids or seen_ids.add(r["id"]))]
    path = tmp_path / ("rows.json" if layout == "array" else "rows.jsonl")
    if layout.startswith("array"):
        data = json.dumps(rows, ensure_ascii=False, indent=1).encode("utf-8")
    else:
        newline = "\r\n" if layout == "crlf" else "\n"
        data = "".join(json.dumps(r, ensure_ascii=False) + newline for r in rows).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if layout == "bom" else b"") + data)
    records = read_records(path)
    assert [(r.instruction, r.input, r.output) for r in records] == [
        (r["instruction"], r.get("input", ""), r.get("output", "")) for r in rows
    ]
    assert len({r.id for r in records}) == len(records)
    assert [r.id for r in read_records(path)] == [r.id for r in records]
    for record, row in zip(records, rows, strict=True):
        if "category" in row:
            assert record.meta.extra["category"] == row["category"]  # type: ignore[attr-defined]


_KNOWN_KEYS = ("instruction", "prompt", "question", "input", "context", "output", "response", "answer",
               "completion", "system", "id", "name", "category", "target", "meta", "messages", "instances")
_row_of_text = st.dictionaries(
    st.sampled_from(_KNOWN_KEYS) | st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=12),
    max_size=7,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(row=_row_of_text)
def test_property_no_text_value_is_lost_or_unnamed(tmp_path: Path, capsys, row: dict[str, str]) -> None:
    """Any row: either one clear `path:line:` error, or every text value is used as a field
    or kept under its key in meta.extra, and the unused ones are named on stderr."""
    path = _jsonl(tmp_path / "rows.jsonl", [row])
    capsys.readouterr()
    try:
        (record,) = read_records(path)
    except ValueError as exc:
        assert str(exc).startswith(f"{path}:1: "), exc
        return
    used = {record.instruction, record.input, record.output, record.id}
    used |= {m.content for m in record.messages or []}
    extra = record.meta.extra or {}
    err = capsys.readouterr().err
    for key, value in row.items():
        if not value.strip():
            continue
        assert value in used or value.strip() == record.id or extra.get(key) == value, (key, value)
        if key in extra:
            assert key in err
    assert set(extra) <= set(row)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=200) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
       suffix=st.sampled_from([".jsonl", ".json", ".txt", ".parquet"]))
def test_property_any_bytes_read_or_one_clear_error(tmp_path: Path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"f{suffix}"
    path.write_bytes(data)
    try:
        read_records(path)
    except ValueError as exc:
        message = str(exc)
        assert message.startswith(f"{path}:") or message.startswith(f"{path} "), message
        assert "\n" not in message
