"""Reading Self-Instruct replies: a numbered list of new tasks, and a task's instances.

Weak and strong models alike number items every which way, repeat labels, add examples or
chatter, and get cut off; everything here is lenient on purpose and has no side effects, so the
stage file can read as the algorithm, top to bottom, and these rules can be tested alone.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from datagen.parsing import EMPTY_INPUT_MARKERS

# ------------------------------------------------------------------ parsing task lists

def reply_lines(text: str) -> list[str]:
    """The lines of a model's reply, broken at `\n`, `\r\n` and `\r` only: `splitlines()` also
    breaks at U+2028, U+0085, U+001C and form feeds, which cut a task in two and lose the
    character from the text kept."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


_NUMBERED = re.compile(
    r"""^\s*(?:[*_]{1,2}\s*)?(?:
          (?:task|instruction|prompt|question|item|new\s+task)\s*\#?\s*(?P<n1>\d{1,3})
          \s*(?:[.):\uff1a\uff0e-]|(?=\s))
        | \#\s*(?P<n2>\d{1,3})\s*[.):\uff1a-]?
        | (?P<n3>\d{1,3})\s*(?:\.(?!\d)|[)\uff1a\uff0e\u3001]|:(?!\d)|\s-\s)
        | \((?P<n4>\d{1,3})\)
        )\s*(?:[*_]{1,2})?""",
    re.X | re.I,
)
_BULLET = re.compile(r"^\s*[-*\u2022\u00b7+]\s+")
# A label repeated inside the item: "9. Instruction: Write ..." / "Task: ..." / "**Task 3:**"
_INNER_LABEL = re.compile(
    r"^\s*(?:[*_]{1,2})?\s*(?:new\s+)?(?:task|instruction|prompt)\s*\#?\s*\d{0,3}\s*(?:[*_]{1,2})?"
    r"\s*[:\uff1a]\s*(?:[*_]{1,2})?\s*",
    re.I,
)
# Lines that end the instruction text of an item (a model adding an example or an answer).
_FIELD_LINE = re.compile(
    r"^\s*(?:[*_]{1,2})?\s*"
    r"(?:input|output|answer|response|solution|example(?:\s+(?:input|output))?|class\s*label)"
    r"\s*(?:[*_]{1,2})?\s*[:\uff1a]",
    re.I,
)
_CHATTER = re.compile(
    r"^\s*(?:sure|certainly|of course|absolutely|okay|ok|great|here\s+(?:are|is)|i\s+hope|let me know|"
    r"these\s+tasks|note\b|feel free)",
    re.I,
)
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`", "\u300c": "\u300d"}


def _clean_item(lines: list[str]) -> str:
    text = "\n".join(line.strip() for line in lines).strip()
    text = _INNER_LABEL.sub("", text, count=1)
    text = text.replace("**", "").replace("__", "")
    text = re.sub(r"[ \t]+", " ", text).strip()
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1] and text.count(text[0]) <= 2:
        text = text[1:-1].strip()
    return text


def has_list_markers(text: str) -> bool:
    """Whether any line of `text` starts like a numbered or bulleted list item."""
    return any(_NUMBERED.match(line) or _BULLET.match(line) for line in reply_lines(text))


def parse_task_list(text: str) -> list[str]:
    """Items of a (numbered) list reply, lenient about how the model formats it.

    Handles "1.", "1)", "(1)", "#1", "Task 1:", "**Task 1:**", "9. Instruction: ...", bullets
    (only when nothing is numbered), items spanning several lines, a preamble and closing
    chatter. An item ends at a blank line, the next item, or an "Input:"/"Output:" line.
    With no list markers at all, each line that is not chatter is taken as one item (if there
    are at least two such lines).
    """
    lines = reply_lines(text)
    numbered = any(_NUMBERED.match(line) for line in lines)
    items: list[list[str]] = []
    current: list[str] | None = None
    closed = False  # current item stopped accepting continuation lines

    def flush() -> None:
        nonlocal current
        if current is not None and any(part.strip() for part in current):
            items.append(current)
        current = None

    for line in lines:
        match = _NUMBERED.match(line) if numbered else _BULLET.match(line)
        if match:
            flush()
            current, closed = [line[match.end() :]], False
            continue
        if not line.strip():
            if current is not None and any(part.strip() for part in current):
                closed = True
            continue
        if current is None or closed:
            continue
        if _FIELD_LINE.match(line) or _CHATTER.match(line):
            closed = True
            continue
        current.append(line)
    flush()
    if not items and not numbered:
        # No list markers: one task per line, but a lone paragraph is commentary, not a list.
        plain = [
            line
            for line in lines
            if line.strip() and not line.rstrip().endswith(":") and not _CHATTER.match(line)
        ]
        items = [[line] for line in plain] if len(plain) >= 2 else []
    return [cleaned for cleaned in (_clean_item(item) for item in items) if cleaned]


# ------------------------------------------------------------------ parsing instances

_EXAMPLE_HEADER = re.compile(
    r"^\s*(?:[*_#]+\s*)?(?:example|instance|sample)\s*#?\s*\d*\s*(?:[*_]+\s*)?[:.)\uff1a-]?\s*"
    r"(?:[*_]+\s*)?(?P<rest>.*)$",
    re.I,
)
_INSTANCE_FIELD = re.compile(
    r"^\s*(?:[*_#>-]+\s*)?(?P<label>class\s*labels?|labels?|class|category|input|output|answer|response)"
    r"\s*\d{0,2}\s*(?:[*_]+\s*)?[:\uff1a]\s*(?:[*_]+)?\s*(?P<rest>.*)$",
    re.I,
)
_EMPTY_INPUTS = EMPTY_INPUT_MARKERS  # shared with the quality filter's placeholder_input check


def _label_kind(label: str) -> str:
    """input / output / answer / response, or "class" for Class label, Label, Class, Category."""
    label = label.lower()
    if label in {"input", "output", "answer", "response"}:
        return label
    return "class"


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


def has_instance_fields(text: str) -> bool:
    """Whether any line looks like an "Input:" / "Output:" / "Class label:" field."""
    return any(_INSTANCE_FIELD.match(line) for line in reply_lines(text))


def _field_value(lines: list[str]) -> str:
    value = "\n".join(lines).strip()
    value = value.strip("*_ ").strip() if value.startswith(("*", "_")) else value
    return value


def parse_instances(text: str, output_first: bool = False, truncated: bool = False) -> list[Instance]:
    """(input, output) pairs from an instances reply, in reply order, deduplicated.

    Understands "Example N" headers (optional), "Input:" / "Output:" fields in either order,
    "Class label:" (or Label/Class/Category) as the output of a classification example,
    multi-line values (code, lists), markdown bold around labels, and "(none)"-style empty
    inputs. When the reply was cut off (`truncated`) the last example is dropped.
    """
    lines = reply_lines(text)
    if output_first:
        output_labels = {"output", "answer", "class"}
    else:
        # "Answer:"/"Response:" stand in for "Output:" only when the reply has no "Output:"
        # line: inside a real output they are just text (e.g. "Answer: 42" after a derivation).
        has_output = any(
            (m := _INSTANCE_FIELD.match(x)) and m.group("label").lower() == "output" for x in lines
        )
        output_labels = {"output"} if has_output else {"output", "answer", "response"}
    examples: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    last_key: str | None = None

    def flush() -> None:
        nonlocal current, last_key
        if current:
            examples.append(current)
        current, last_key = {}, None

    for line in lines:
        header = _EXAMPLE_HEADER.match(line)
        if header and (not header.group("rest") or _INSTANCE_FIELD.match(header.group("rest"))):
            flush()
            line = header.group("rest")
            if not line:
                continue
        field_match = _INSTANCE_FIELD.match(line)
        label = _label_kind(field_match.group("label")) if field_match else None
        if field_match and (label == "input" or label in output_labels):
            key = "input" if label == "input" else "output"
            if key in current:  # the same field again: a new example started without a header
                flush()
            current[key] = [field_match.group("rest")]
            last_key = key
            continue
        if last_key is not None:
            current[last_key].append(line)
    flush()
    if truncated and examples:
        examples.pop()
    seen: set[tuple[str, str]] = set()
    result: list[Instance] = []
    for ex in examples:
        output = _field_value(ex.get("output", []))
        inp = _field_value(ex.get("input", []))
        if inp.strip().strip(".").lower() in _EMPTY_INPUTS:
            inp = ""
        if not output or output.strip().lower() in _EMPTY_INPUTS or output == inp:
            continue
        key = (inp, output)
        if key not in seen:
            seen.add(key)
            result.append(Instance(inp, output))
    return result
