"""Every text survives: awkward Unicode through every reader, every stage, the cache, the Batch
API, every export and the report.

Hypothesis writes records holding line and paragraph separators, NUL, C0/C1 controls, RTL
overrides, ZWJ emoji, combining marks, CJK and mixed scripts, empty strings (and one 100k-
character text). They are written and read back in every input format, then run through every
stage on the loopback server, whose replies echo the awkward text back (so it travels through
HTTP bodies, the SQLite cache and, on half the examples, Batch API result files), exported to
every format and read back. Checked: each format gives back its own rows byte for byte; each
filter stage's records are kept or dropped with a reason, never lost; the answers carry the
prompts' text unchanged; a rerun from the cache alone writes byte-identical exports.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from datagen.io import FORMATS, read_records, to_row, write_records
from datagen.pipeline import Pipeline, validate_config
from datagen.records import Record

PIECES = [
    "\u2028", "\u2029", "\u0085", "\u001c", "\u001d", "\u001e", "\u001f",  # separators JSON allows raw
    "\x00", "\x01", "\x07", "\x0b", "\x0c", "\r", "\r\n", "\t", "\x7f", "\x80", "\x9f",  # C0 / C1 controls
    "\u202e", "\u202d", "\u2066", "\u2069", "\u200f",  # bidi overrides and isolates
    "\U0001f469\u200d\U0001f469\u200d\U0001f467", "\U0001f44d\U0001f3fd", "\u2764\ufe0f",  # ZWJ, skin tone, VS16
    "e\u0301", "a\u0338\u0327", "\ufeff", "\u200b",  # combining marks, BOM, zero-width space
    "漢字", "日本語のテキスト", "한국어", "مرحبا بالعالم", "שלום", "हिन्दी", "Ελληνικά", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    " ", "\n", "plain words", '"quoted" \\back\\slash', "&lt;<b>tag</b>",
]
STEMS = ["Explain", "Describe", "Translate", "Summarize", "Compare", "List"]
LONG_TEXT = ("長い\u2028text\x00 \u202e" * 12500)[:100_000]

awkward_text = st.lists(st.sampled_from(PIECES), max_size=6).map("".join)


@st.composite
def fuzz_records(draw: st.DrawFn) -> list[Record]:
    count = draw(st.integers(1, 3))
    records = []
    for index in range(count):
        # A stem keeps the instruction non-blank (a blank one is an input error by design).
        instruction = f"{draw(awkward_text)}{draw(st.sampled_from(STEMS))} item {index} {draw(awkward_text)}"
        records.append(Record(id=f"fz{index}", instruction=instruction, input=draw(awkward_text),
                              output=draw(awkward_text)))
    return records


def _awkward_part(text: str, limit: int = 120) -> str:
    """The characters of a prompt that are not plain ASCII text, for replies that must stay short."""
    return "".join(ch for ch in text if not (ch.isascii() and (ch.isprintable() or ch == "\n")))[:limit]


def fuzz_reply(messages: list[dict[str, str]], choice: int, seed: int | None) -> str:
    """The scripted model (tests/pipeline_responder.py) with the prompt's own text echoed back:
    whole into free answers, its awkward characters into new instructions and judge reasons."""
    from pipeline_responder import reply

    prompt = messages[-1]["content"] if messages else ""
    text = reply(messages, choice, seed)
    if text.startswith("{"):  # a judge's JSON verdict: the reason carries the text
        verdict = json.loads(text)
        verdict["reason"] += " " + _awkward_part(prompt)
        return json.dumps(verdict, ensure_ascii=False)
    if text.startswith("Here is a careful answer."):
        return f"{text}\n{prompt}"
    if text.startswith("Explain in three steps"):
        return f"{text} {_awkward_part(prompt)}"
    if "Now invent" in prompt:  # new tasks carry the seed tasks' characters on
        return "\n".join(line.replace(" the ", f" the {_awkward_part(prompt, 400)} ", 1) for line in text.split("\n"))
    return text


@pytest.fixture(scope="module")
def fuzz_server(_openai_server_session) -> Iterator[object]:
    _openai_server_session.reset()
    _openai_server_session.responder = fuzz_reply
    yield _openai_server_session
    _openai_server_session.responder = None
    _openai_server_session.reset()


def _same_rows(fmt: str, got: list[Record], want: list[Record]) -> bool:
    drop_id = fmt == "alpaca"  # Alpaca rows have no id: the reader derives one from the content
    rows = [{k: v for k, v in to_row(r, fmt).items() if not (drop_id and k == "id")} for r in got]
    return rows == [{k: v for k, v in to_row(r, fmt).items() if not (drop_id and k == "id")} for r in want]


def _check_input_formats(records: list[Record], folder: Path) -> Path:
    """Every input format and file type gives back its own rows byte for byte."""
    for fmt in FORMATS:
        for name in (f"{fmt}.jsonl", f"{fmt}.json", f"{fmt}.parquet", f"{fmt}_hf"):
            path = write_records(records, folder / name, fmt=fmt)
            assert _same_rows(fmt, read_records(path), records), (fmt, name)
    return folder / "records.jsonl"


def _config(base_url: str, data: Path, held_out: Path, batch: bool) -> dict:
    options = {"base_url": base_url, "max_concurrency": 8, "batch": batch,
               "batch_options": {"poll_initial": 0.02, "poll_max": 0.1}}
    return {
        "name": "fuzz", "llm": "openai:test", "llm_options": {"openai": options},
        "input": {"path": str(data)},
        "stages": [
            {"self_instruct": {"num_instructions": 2, "request_batch_size": 1, "new_per_request": 2,
                               "num_prompt_tasks": 3, "num_human": 3, "num_machine": 0}},  # every seed shown
            {"evol_instruct": {"rounds": 1}},
            {"distill": {"n": 2}},
            {"dedup": {"semantic": False}},
            {"quality": {"min_judge_score": 1.0}},
            {"decontaminate": {"held_out": [str(held_out)], "semantic": False}},
        ],
        "export": {"formats": ["alpaca", "sharegpt", "messages", "records", "hf"]},
    }


EXPORT_FILES = {"alpaca": "alpaca.json", "sharegpt": "sharegpt.jsonl", "messages": "messages.jsonl",
                "records": "records.jsonl", "hf": "hf_dataset"}
FILTER_STAGES = {"distill", "dedup", "quality", "decontaminate"}


def _check_run(run_dir: Path) -> list[Record]:
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "finished" and (run_dir / "report.html").exists()
    for stage in manifest["stages"]:
        dropped = read_records(run_dir / stage["label"] / "dropped.jsonl")
        assert len(dropped) == stage["dropped"] and all(r.meta.drop_reason for r in dropped), stage["label"]
        if stage["stage"] in FILTER_STAGES:  # each record kept or dropped with a reason, none lost
            assert stage["in"] == stage["out"] + stage["dropped"], stage["label"]
    final = read_records(run_dir / manifest["stages"][-1]["label"] / "kept.jsonl")
    assert final, "every record was dropped: the checks below would be empty"
    for fmt, name in EXPORT_FILES.items():
        back = read_records(run_dir / "export" / name)
        assert _same_rows("messages" if fmt == "hf" else fmt, back, final), fmt
    for record in final:  # distill's answer echoes its prompt: the text came back through the wire
        assert record.prompt_text() in record.output, record.id
    return final


def _export_bytes(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "export").iterdir()) if p.is_file()}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(records=fuzz_records(), batch=st.booleans())
@example(records=[Record(id="long", instruction="Explain\u2028this \u202e漢字", input=LONG_TEXT, output="")],
         batch=True)
@example(records=[Record(id="e", instruction="List \x00\u0085 things", input="", output="")], batch=False)
def test_awkward_text_survives_every_format_and_stage(fuzz_server, records: list[Record], batch: bool) -> None:
    fuzz_server.reset()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = _check_input_formats(records, folder / "inputs")
        held_out = write_records([Record(id="h", instruction="An unrelated held-out question about tides")],
                                 folder / "held_out.jsonl")
        config = validate_config(_config(fuzz_server.base_url, data, held_out, batch), "fuzz.yaml")
        Pipeline(config).run(run_dir=folder / "run", progress=False)
        final = _check_run(folder / "run")
        for char in ("\u2028", "\u0085", "\x00"):  # carried from the seeds through every stage's replies
            if any(char in r.instruction.strip() for r in records):  # prompts trim the ends, as is right
                assert any(char in r.output for r in final), repr(char)
        assert fuzz_server.stats.batches_created > 0 if batch else fuzz_server.stats.requests > 0

        # The same run from the cache alone: no request, byte-identical exports.
        (folder / "again").mkdir()
        for part in (folder / "run").glob("llm_cache.sqlite*"):  # with its write-ahead log
            shutil.copy(part, folder / "again" / part.name)
        fuzz_server.reset()
        Pipeline(config).run(run_dir=folder / "again", progress=False)
        assert fuzz_server.stats.requests == 0 and fuzz_server.stats.batches_created == 0
        assert _export_bytes(folder / "again") == _export_bytes(folder / "run")
        assert read_records(folder / "again" / "export" / "records.jsonl") == final
