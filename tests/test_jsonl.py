"""One JSONL reader: records split at `\\n` only, and no `splitlines()` on JSON text anywhere."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from datagen.jsonl import dumps_jsonl, jsonl_lines, loads_jsonl, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("datagen", "finetune", "bench")

# `splitlines()` calls that never see JSON text: (file, enclosing function) -> why.
ALLOWED_SPLITLINES = {
    ("datagen/stages/quality_checks.py", "check_repetition"): "an answer's prose, checked for repeated lines",
    ("datagen/stages/quality_checks.py", "repeated_ngram_ratio"): "an answer's prose, list markers stripped per line",
    ("datagen/stages/quality_checks.py", "check_truncated"): "an answer's prose: its last line, a list item or not",
    ("datagen/stages/quality_checks.py", "_unfinished_last_sentence"): "an answer's prose, line by line",
    ("bench/filter_checkset.py", "plant"): "an answer's prose: one of its lines is repeated to plant a repetition",
    ("datagen/llm/vllm_engine.py", "_load"): "the first line of an exception message",
    ("datagen/io.py", "_table_rows"): "the first line of pyarrow's error message",
    ("datagen/commands_push.py", "_call"): "the first line of the Hub's error message",
    ("datagen/bundled.py", "first_comment_line"): "a YAML file's first comment, for a listing",
    ("finetune/distributed.py", "launch"): "a worker's stderr, searched for its one-line reason",
}

AWKWARD = ["\u2028", "\u2029", "\u0085", "\u001c", "\u001d", "\u001e", "\x0b", "\x0c", "\r", "\x00", "\U0001f600"]


class _SplitlinesFinder(ast.NodeVisitor):
    """Each `.splitlines()` call, named by the innermost function around it."""

    def __init__(self, where: str) -> None:
        self.where, self.stack, self.found = where, ["<module>"], set()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:  # noqa: N802
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # noqa: N815

    def visit_Call(self, node: ast.Call) -> None:  # noqa: N802
        if isinstance(node.func, ast.Attribute) and node.func.attr == "splitlines":
            self.found.add((self.where, self.stack[-1]))
        self.generic_visit(node)


def _splitlines_calls() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            finder = _SplitlinesFinder(path.relative_to(ROOT).as_posix())
            finder.visit(ast.parse(path.read_text(encoding="utf-8")))
            found |= finder.found
    return found


def test_no_splitlines_on_json_text() -> None:
    """A new `splitlines()` must either go through `datagen.jsonl` or be listed with its reason;
    a listed one that is gone must leave the list, so the list stays a true account."""
    calls = _splitlines_calls()
    unexplained = sorted(calls - set(ALLOWED_SPLITLINES))
    assert not unexplained, f"splitlines() splits JSON strings at U+2028/U+0085; use datagen.jsonl: {unexplained}"
    stale = sorted(set(ALLOWED_SPLITLINES) - calls)
    assert not stale, f"allow-list entries with no splitlines() any more: {stale}"


@pytest.mark.parametrize("char", AWKWARD)
def test_a_record_holding_a_separator_stays_one_record(char: str, tmp_path: Path) -> None:
    rows = [{"output": f"a{char}b", "n": 1}, {"output": char, "n": 2}, {"output": "", "n": 3}]
    text = dumps_jsonl(rows)
    assert text.count("\n") == 3  # NUL and the C0 controls escaped, the rest raw
    assert loads_jsonl(text, "x.jsonl") == rows
    (tmp_path / "x.jsonl").write_text(text, encoding="utf-8")
    assert read_jsonl(tmp_path / "x.jsonl") == rows


def test_crlf_and_blank_lines_and_missing_file(tmp_path: Path) -> None:
    assert loads_jsonl('{"a": 1}\r\n\r\n  \n{"a": "\u2028"}\r\n', "x") == [{"a": 1}, {"a": "\u2028"}]
    assert [n for n, _ in jsonl_lines('{"a": 1}\n\n{"a": 2}\n')] == [1, 3]
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_a_bad_line_names_the_file_and_line() -> None:
    with pytest.raises(ValueError, match=r"^runs/x/kept.jsonl:2: invalid JSON: .*\(column \d+\)$"):
        loads_jsonl('{"a": 1}\n{"a": \n', "runs/x/kept.jsonl")


def test_writer_output_is_plain_json_per_line() -> None:
    row = {"text": "漢字 \u202e RTL \u200d zwj e\u0301"}
    assert dumps_jsonl([row]) == json.dumps(row, ensure_ascii=False) + "\n"
