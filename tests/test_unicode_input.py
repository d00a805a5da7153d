"""Bad Unicode is an input error with a place, or a counted repair; a failure after the export
says the data is safe; a run over text holding U+2028 finishes with its report."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from datagen.cli import main
from datagen.errors import EXIT_AFTER_EXPORT, EXIT_BAD_INPUT
from datagen.io import read_records, read_seed_tasks
from datagen.unicode_text import html_text

# JSON text spelling half of a UTF-16 pair, as chat dumps with broken emoji do.
BROKEN = '{"instruction": "Say hi", "output": "smile \\ud83d!"}'


def _write(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_lone_surrogate_is_an_error_with_file_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "chat.jsonl", '{"instruction": "fine", "output": "ok"}', BROKEN)
    with pytest.raises(ValueError) as info:
        read_records(path)
    assert str(info.value).startswith(f"{path}:2: field 'output' holds a lone surrogate (\\ud83d); ")
    assert "--repair-unicode" in str(info.value)


def test_nested_field_and_json_array_are_located(tmp_path: Path) -> None:
    row = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x\\udc00"}]}'
    path = tmp_path / "rows.json"
    path.write_text('[\n  {"instruction": "a", "output": "b"},\n  ' + row + "\n]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows.json:3: field 'messages\[1\].content' holds a lone surrogate \(\\udc00\)"):
        read_records(path)


def test_seed_tasks_are_checked_too(tmp_path: Path) -> None:
    seed = {"id": "s1", "name": "n", "instruction": "Do it", "is_classification": False,
            "instances": [{"input": "", "output": "fine"}]}
    text = json.dumps(seed).replace('"fine"', '"\\ud800"')
    with pytest.raises(ValueError, match=r"seeds.jsonl:1: field 'instances\[0\].output' holds a lone surrogate"):
        read_seed_tasks(_write(tmp_path / "seeds.jsonl", text))


def test_repair_replaces_with_fffd_and_counts_by_field(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path / "chat.jsonl", BROKEN, '{"instruction": "\\udfff two \\ud800", "output": "fine"}')
    repairs: Counter[str] = Counter()
    records = read_records(path, repairs)
    assert [r.output for r in records] == ["smile \ufffd!", "fine"]
    assert records[1].instruction == "\ufffd two \ufffd"
    assert repairs == {"output": 1, "instruction": 2}
    assert "replaced 3 lone surrogates with U+FFFD (instruction 2, output 1)" in capsys.readouterr().err


def test_convert_cli_error_and_repair(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path / "chat.jsonl", BROKEN)
    out = tmp_path / "out.parquet"
    assert main(["convert", "--input", str(path), "--out", str(out)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err == (f"datagen: error: {path}:1: field 'output' holds a lone surrogate (\\ud83d); fix the text, or pass "
                   "--repair-unicode (YAML: input.repair_unicode: true) to replace it with U+FFFD")
    assert not out.exists()
    assert main(["convert", "--input", str(path), "--out", str(out), "--repair-unicode"]) == 0
    assert read_records(out)[0].output == "smile \ufffd!"


def _pipeline(tmp_path: Path, base_url: str, data: Path, **extra: object) -> Path:
    config = {
        "name": "u", "llm": "openai:test",
        "llm_options": {"openai": {"base_url": base_url, "max_concurrency": 4}},
        "input": {"path": str(data)},
        "stages": [{"distill": {"n": 1}}, {"dedup": {"semantic": False}}],
        "export": {"formats": ["alpaca", "messages", "records"]},
        **extra,
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_run_over_u2028_exits_0_with_report(tmp_path: Path, openai_server, capsys) -> None:
    """The public-data case: separators JSON allows raw, in the input and (echoed) in every reply."""
    rows = [{"instruction": f"Line one\u2028line two {i}", "output": "a\u0085b\u001cc\u2029d"} for i in range(3)]
    data = tmp_path / "in.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    run_dir = tmp_path / "run"
    code = main(["run", str(_pipeline(tmp_path, openai_server.base_url, data)), "--run-dir", str(run_dir),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert "Line one\u2028line two" in (run_dir / "report.html").read_text(encoding="utf-8")
    exported = read_records(run_dir / "export" / "records.jsonl")
    assert sorted(r.instruction for r in exported) == sorted(r["instruction"] for r in rows)
    assert all("\u2028" in r.output for r in exported)  # the echo carried it through the reply


def test_run_with_repair_counts_in_manifest(tmp_path: Path, openai_server) -> None:
    data = _write(tmp_path / "in.jsonl", BROKEN, '{"instruction": "Other", "output": "\\ud800\\ud800"}')
    pipeline = _pipeline(tmp_path, openai_server.base_url, data)
    assert main(["run", str(pipeline), "--run-dir", str(tmp_path / "a"), "--no-progress"]) == EXIT_BAD_INPUT
    assert main(["run", str(pipeline), "--run-dir", str(tmp_path / "b"), "--no-progress", "--repair-unicode"]) == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["input"]["unicode_repairs"] == {"output": 3}
    yaml_key = _pipeline(tmp_path, openai_server.base_url, data, input={"path": str(data), "repair_unicode": True})
    assert main(["run", str(yaml_key), "--run-dir", str(tmp_path / "c"), "--no-progress"]) == 0


def test_report_failure_after_export_says_the_data_is_safe(tmp_path: Path, openai_server, monkeypatch,
                                                           capsys) -> None:
    import datagen.report

    def broken_report(run_dir: object) -> None:
        raise ValueError("Unterminated string starting at: line 1 column 42 (char 41)")

    monkeypatch.setattr(datagen.report, "write_report", broken_report)
    data = _write(tmp_path / "in.jsonl", '{"instruction": "Hello", "output": ""}')
    run_dir = tmp_path / "run"
    code = main(["run", str(_pipeline(tmp_path, openai_server.base_url, data)), "--run-dir", str(run_dir),
                 "--no-progress"])
    assert code == EXIT_AFTER_EXPORT
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"datagen: error: report failed writing {run_dir / 'report.html'}: Unterminated string starting "
                   f"at: line 1 column 42 (char 41); the exports in {run_dir / 'export'} are complete, and "
                   "rerunning the same command skips every finished stage")
    assert read_records(run_dir / "export" / "records.jsonl")[0].instruction == "Hello"


def test_report_cells_show_controls_and_isolate_direction() -> None:
    assert html_text("a\x00b\x1c\x85<&>\u202eevil", 100) == "<bdi>a␀b␜&lt;U+0085&gt;&lt;&amp;&gt;\u202eevil</bdi>"
    assert html_text("&" * 5, 3) == "<bdi>&amp;&amp;&amp;…</bdi>"


def test_reply_with_half_an_emoji_is_written_as_fffd(tmp_path: Path, openai_server, capsys, request) -> None:
    """A model cut off mid-emoji: the server escapes half a UTF-16 pair in its JSON reply. The run
    must not crash on its first write; the half becomes U+FFFD, cached that way, so a rerun agrees."""
    openai_server.responder = lambda messages, index, seed: "smile \ud83d then more"
    request.addfinalizer(lambda: setattr(openai_server, "responder", None))
    data = _write(tmp_path / "in.jsonl", '{"instruction": "Say hi", "output": "hello"}')
    run_dir = tmp_path / "run"
    pipeline = _pipeline(tmp_path, openai_server.base_url, data, stages=[{"distill": {"n": 1, "ranker": "none"}}])
    assert main(["run", str(pipeline), "--run-dir", str(run_dir), "--no-progress"]) == 0, capsys.readouterr().err
    exported = (run_dir / "export" / "records.jsonl").read_text(encoding="utf-8")
    assert "smile \ufffd then more" in json.loads(exported.splitlines()[0])["output"]
    sent = openai_server.stats.requests
    assert main(["run", str(pipeline), "--run-dir", str(run_dir), "--no-progress"]) == 0
    assert openai_server.stats.requests == sent  # served from the cache, not asked again
