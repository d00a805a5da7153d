"""Words for every script: what a length, an n-gram or an overlap is counted in.

Splitting on whitespace makes a whole Chinese or Japanese paragraph one "word" (they write no
spaces), so a 60-character answer once counted as one word and was dropped as too short, and
Chinese texts shared no n-grams with anything. Here each CJK character (Han, kana) is a unit of
its own and every other script keeps its words (runs of letters and digits); Korean writes
spaces between words, so Hangul stays in words.
"""

from __future__ import annotations

import math
import re

# Han (unified, extension A, compatibility), hiragana, katakana, half-width katakana.
CJK_CHARS = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
CJK_CHAR = re.compile(f"[{CJK_CHARS}]")
_UNIT = re.compile(rf"[{CJK_CHARS}]|(?:(?![{CJK_CHARS}])\w)+")
# Chinese words average about 1.5 characters (Japanese is close): a CJK text of 300 characters
# is as long as an English one of about 200 words.
CJK_CHARS_PER_WORD = 1.5


def word_units(text: str) -> list[str]:
    """Case-folded units: one per CJK character, one per word of any other script."""
    return _UNIT.findall(text.casefold())


def cjk_share(text: str) -> float:
    """Share of the word units that are CJK characters (0 for English, ~1 for Chinese)."""
    units = word_units(text)
    if not units:
        return 0.0
    return sum(1 for unit in units if CJK_CHAR.fullmatch(unit)) / len(units)


def length_in_words(text: str) -> int:
    """Length in words for any script: words of spaced scripts plus CJK characters / 1.5."""
    units = word_units(text)
    cjk = sum(1 for unit in units if CJK_CHAR.fullmatch(unit))
    return len(units) - cjk + math.ceil(cjk / CJK_CHARS_PER_WORD)

