"""Lenient parsing of model replies (datagen.parsing)."""

from __future__ import annotations

import pytest

from datagen.parsing import extract_json, parse_score, parse_yes_no


@pytest.mark.parametrize(
    "text, low, high, expected",
    [
        ('{"score": 4}', 1, 5, 4.0),
        ('{"Score": 4.5, "reason": "ok"}', 1, 5, 4.5),
        ('{"score": 9, "reason": "has 3 issues"}', 1, 5, None),  # the JSON decides; no stray numbers
        ('{"score": "4/5"}', 1, 5, 4.0),
        ('{"score": true}', 1, 5, None),
        ("Score: 4", 1, 5, 4.0),
        ("**Score**: 3", 1, 5, 3.0),
        ("Rating: 8/10", 1, 5, 4.2),  # rescaled to [1, 5]
        ("8 out of 10", 1, 10, 8.0),
        ("I'd give it a 4 even though 2 steps are missing", 1, 5, 4.0),
        ("rate it 75%", 1, 10, None),
        ("3", 1, 5, 3.0),
        ("4 - clear, but 2 typos", 1, 5, 4.0),
        ("**7**\nIt has 2 errors", 1, 10, 7.0),
        ("1. good 2. bad", 1, 5, None),  # numbered list, not a score of 1
        ("1) good\n2) bad", 1, 5, None),
        ("4. Mostly correct, 2 small slips.", 1, 5, 4.0),
        ("Both 2 and 3 apply", 1, 5, None),
        ("no number here", 1, 5, None),
        ("7", 1, 5, None),
    ],
)
def test_parse_score(text, low, high, expected):
    assert parse_score(text, low, high) == expected


def test_extract_json():
    assert extract_json('blah ```json\n{"a": 1}\n``` blah') == {"a": 1}
    assert extract_json('prefix {"a": [1, 2]} suffix') == {"a": [1, 2]}
    assert extract_json("no json") is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Yes.", True),
        ("no, they are equal", False),
        ("The answer is yes", True),
        ("TRUE", True),
        ("maybe", None),
    ],
)
def test_parse_yes_no(text, expected):
    assert parse_yes_no(text) is expected
