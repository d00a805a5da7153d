"""Which language a short text is in, without a model: by script, then by common words.

Magpie's language filter and the report's language mix need a guess that is cheap, offline and
right on the texts we make (instructions of a sentence or two). The script decides most cases:
Han without kana is Chinese, any kana is Japanese, Hangul Korean, and so on. Latin-script text
is told apart by its most frequent function words; a Latin text with none of them is `und`
(undetermined), never guessed. A detector library would do better on long prose, but none
is installed and none is needed for the filter's job (drop a Chinese query from an English run).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

# Script of a letter by its Unicode name's first word (HIRAGANA, KATAKANA, HANGUL, CJK, ...).
_SCRIPT_LANGUAGE = {
    "HIRAGANA": "ja", "KATAKANA": "ja", "HANGUL": "ko", "CYRILLIC": "ru", "ARABIC": "ar", "HEBREW": "he",
    "GREEK": "el", "THAI": "th", "DEVANAGARI": "hi", "BENGALI": "bn", "TAMIL": "ta",
}
_FUNCTION_WORDS = {
    "en": "the a an and of to is are in for you your how what which with this that be can write give me".split(),
    "es": "el la los las de que y en un una para por es con cómo qué".split(),
    "fr": "le la les des de du et est un une pour que dans avec comment quel quelle".split(),
    "de": "der die das und ist ein eine zu mit für nicht wie was ich sie".split(),
    "pt": "o os as de que e em um uma para com não como qual você".split(),
    "it": "il lo gli di che e è un una per con non come quale della".split(),
    "nl": "de het een en van is dat voor met niet hoe wat".split(),
}
_WORD = re.compile(r"[^\W\d_]+")


def script_counts(text: str) -> Counter[str]:
    """Letters per script: `han`, `ja`/`ko`/... for scripts that name their language, `latin`."""
    counts: Counter[str] = Counter()
    for ch in text:
        if not ch.isalpha():
            continue
        name = unicodedata.name(ch, "")
        first = name.split(" ", 1)[0]
        if first == "CJK" or "IDEOGRAPH" in name:
            counts["han"] += 1
        elif first == "LATIN" or ch.isascii():
            counts["latin"] += 1
        else:
            counts[_SCRIPT_LANGUAGE.get(first, "other")] += 1
    return counts


def language_of(text: str) -> str:
    """An ISO 639-1 code, `und` when the text has no letters or no telling words, `other` for a
    script we do not name. A Han character weighs 4 Latin letters (a Chinese word is ~1.5 characters,
    an English one ~5 letters): mixed text such as `写一个 Python 函数 to sort a list` is Chinese."""
    counts = script_counts(text)
    if not counts:
        return "und"
    if counts["ja"]:  # any kana: Japanese (it mixes in Han; Chinese never uses kana)
        counts["ja"] += counts.pop("han", 0)
    if "han" in counts:
        counts["zh"] = counts.pop("han") * 4
    script, _ = counts.most_common(1)[0]
    if script != "latin":
        return script
    words = _WORD.findall(text.casefold())
    votes = Counter({lang: sum(1 for w in words if w in vocab) for lang, vocab in _FUNCTION_WORDS.items()})
    best, hits = votes.most_common(1)[0]
    return best if hits else "und"


def language_mix(texts: list[str]) -> dict[str, int]:
    """How many texts are in each language, most common first (the report's language table)."""
    return dict(Counter(language_of(text) for text in texts).most_common())
