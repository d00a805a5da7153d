"""The command line: help, one-off generation over a real socket, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen.cli import build_parser, main


def test_help_lists_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for command in ("generate", "self-instruct", "evolve", "distill", "dedup", "filter", "finetune", "run",
                    "report", "convert"):
        assert command in out


def test_every_stage_config_field_is_a_flag_with_its_description() -> None:
    """The stage commands are generated from the registry: each config field is a flag whose help
    is the field's own description, and every registered stage has its command."""
    from datagen.cli_config import COMMON_FIELDS, flag_name
    from datagen.registry import stages

    parser = build_parser()
    actions = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    commands = actions[0].choices
    for stage in stages().values():
        assert stage.command.verb in commands, stage.name
        sub = commands[stage.command.verb]
        flags = {option: action for action in sub._actions for option in action.option_strings}
        for field, info in stage.config.model_fields.items():
            if field in COMMON_FIELDS or field in stage.command.skip_fields:
                continue
            action = flags.get(flag_name(field))
            assert action is not None, f"{stage.command.verb}: no {flag_name(field)}"
            assert (info.description or "").replace("%", "%%") in action.help, f"{stage.command.verb} {field}"


def test_generate_against_openai_server(openai_server, tmp_path: Path, capsys) -> None:
    code = main(["generate", "--llm", "openai:test", "--base-url", openai_server.base_url, "--prompt",
                 "Name three fruits.", "--n", "2", "--cache", str(tmp_path / "c.sqlite")])
    assert code == 0
    captured = capsys.readouterr()
    assert "Name three fruits." in captured.out and "reply 2" in captured.out
    assert openai_server.stats.requests == 1
    assert main(["generate", "--llm", "openai:test", "--base-url", openai_server.base_url, "--prompt",
                 "Name three fruits.", "--n", "2", "--cache", str(tmp_path / "c.sqlite")]) == 0
    assert openai_server.stats.requests == 1  # the rerun came from the cache
    assert "(cached)" in capsys.readouterr().err


def test_bad_input_file_is_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"instruction": "ok"}) + "\n{not json\n")
    code = main(["dedup", "--input", str(bad), "--out", str(tmp_path / "o.jsonl"), "--no-semantic"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"datagen: error: {bad}:2: invalid JSON")
    assert not (tmp_path / "o.jsonl").exists()


def test_unknown_backend_is_clear(capsys) -> None:
    assert main(["generate", "--llm", "gpt4", "--prompt", "x", "--no-cache"]) == 2
    assert "unknown LLM backend 'gpt4'" in capsys.readouterr().err


def test_pipeline_typo_is_one_line(tmp_path: Path, capsys) -> None:
    config = tmp_path / "p.yaml"
    config.write_text("name: x\nstages:\n  - distill: {nn: 3}\n")
    assert main(["run", str(config)]) == 2
    assert "stages[0].distill.nn: unknown key (did you mean 'n'?)" in capsys.readouterr().err


def test_missing_backend_package_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """vLLM is not installed in the test venv: the run stops at once with one line, exit 3."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-m", "datagen.cli", "generate", "--llm", "vllm:some/model", "--prompt",
                           "hi", "--no-cache"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        import vllm  # noqa: F401
    except ImportError:
        assert proc.returncode == 3, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert lines[-1].startswith("datagen: error:") and "pip install 'datagen[vllm]'" in lines[-1]
    else:  # pragma: no cover - a venv with vLLM: the unknown model is the fatal line instead
        assert proc.returncode == 3 and "could not load model" in proc.stderr
