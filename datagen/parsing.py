"""Lenient parsing of model replies. Small models (and big ones) rarely obey formats exactly."""

from __future__ import annotations

import json
import re
from typing import Any

# Texts that mean "no input" in an input field: Alpaca's "<noinput>" and what models write
# instead of leaving it blank (Self-Instruct parsing and the quality filter share the list).
EMPTY_INPUT_MARKERS = frozenset({
    "", "none", "(none)", "<none>", "n/a", "na", "(n/a)", "null", "-", "nothing", "empty", "(empty)",
    "no input", "(no input)", "<noinput>", "<no input>", "not applicable", "(not applicable)",
    "\u65e0", "\uff08\u65e0\uff09",
})  # fmt: skip
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.S | re.I)
_SCORE_PATTERNS = [
    # "Score: 4", "score = 4.5", "Rating: 4/5", "**Score**: 4"
    re.compile(r"(?:score|rating|grade)\W{0,4}\s*[:=]?\s*\**\s*(-?\d+(?:\.\d+)?)\s*(?:/\s*(\d+))?", re.I),
    # "4/5", "4 out of 5"
    re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:/|out of)\s*(\d+)", re.I),
    # "I would give it a 7", "I rate this answer 8", "it deserves a 6"
    re.compile(
        r"\b(?:give|giving|rate|rating|rated|deserves?|assign|award)\s+(?:it|this|the\s+answer|this\s+answer)?\s*"
        r"(?:an?\s+)?(-?\d+(?:\.\d+)?)(?![\w%]|\s*(?:/|out of))()",
        re.I,
    ),
]


def extract_json(text: str) -> Any | None:
    """The first JSON object or array in `text` (fenced or bare), or None."""
    candidates = [m.group(1) for m in _FENCE.finditer(text)] + [text]
    decoder = json.JSONDecoder()
    for chunk in candidates:
        for start, char in enumerate(chunk):
            if char not in "{[":
                continue
            try:
                value, _ = decoder.raw_decode(chunk[start:])
            except json.JSONDecodeError:
                continue
            return value
    return None


def parse_score(text: str, low: float = 1, high: float = 5, key: str = "score") -> float | None:
    """A score in [low, high] from JSON (`{"score": 4}`), "Score: 4", "4/5", or a lone number.

    A fraction on another scale ("8/10") is rescaled into [low, high]. Returns None when no
    in-range number can be found rather than guessing.
    """
    data = extract_json(text)
    if isinstance(data, dict):
        for k, v in data.items():
            if k.lower() != key:
                continue
            # The JSON names its score: decide from that value alone. Scanning the rest of the
            # text would pick up stray numbers ("3 errors") when the value is out of range.
            if isinstance(v, bool) or not isinstance(v, (int, float, str)):
                return None
            if isinstance(v, str):
                return parse_score(v, low, high, key) if v.strip() and "{" not in v else None
            value = float(v)
            return value if low <= value <= high else None
    for pattern in _SCORE_PATTERNS:
        for match in pattern.finditer(text):
            value = float(match.group(1))
            scale = match.group(2)
            if scale:
                denom = float(scale)
                if denom <= 0:
                    continue
                if denom != high:
                    value = low + (value / denom) * (high - low)
            if low <= value <= high:
                return value
    numbers = [float(x) for x in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)(?!\.\d)", text)]
    in_range = [x for x in numbers if low <= x <= high]
    if len(in_range) == 1:
        return in_range[0]
    # Several numbers: trust one only when the reply *opens* with it as a verdict ("7 - clear,
    # but 2 typos"), not when it opens a numbered list ("1. good 2. bad").
    leading = _LEADING_NUMBER.match(text)
    if leading:
        value = float(leading.group(1))
        if low <= value <= high and not _opens_numbered_list(text, leading):
            return value
    return None


_LEADING_NUMBER = re.compile(r"\s*[*#\s]*(-?\d+(?:\.\d+)?)(?!\w)\s*\**\s*([.)]?)")


def _opens_numbered_list(text: str, leading: re.Match[str]) -> bool:
    """"1. ..." or "1) ..." followed later by "2." / "2)": a list marker, not a score."""
    number = leading.group(1)
    if not leading.group(2) or not number.isdigit():
        return False
    following = int(number) + 1
    return re.search(rf"(?<![\d.]){following}\s*[.)]\s", text[leading.end():]) is not None


def parse_yes_no(text: str) -> bool | None:
    """Yes/No from the first word that decides it; None when the reply says neither."""
    match = re.search(r"\b(yes|no|true|false)\b", text, re.I)
    if not match:
        return None
    return match.group(1).lower() in {"yes", "true"}
