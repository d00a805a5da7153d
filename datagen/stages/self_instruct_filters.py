"""Self-Instruct's filters on a candidate task: length, blacklisted keywords, "Write a program",
leading punctuation, and the keyword fallback when a model never says whether a task is a
classification. Pure functions of the text, so each rule is tested alone; novelty (ROUGE-L)
lives in `datagen.novelty`.
"""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from datagen.stages.self_instruct_config import SelfInstructConfig

_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]+")


def count_words(text: str) -> int:
    """Words in `text`; a run of CJK characters counts ceil(len/2) (about two characters per word),
    so Chinese tasks meet the same 3 < words <= 150 window as English ones."""
    total = sum((len(run) + 1) // 2 for run in _CJK_RUN.findall(text))
    rest = _CJK_RUN.sub(" ", text)
    return total + sum(1 for word in rest.split() if any(ch.isalnum() for ch in word))


def blacklist_pattern(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(w.strip()).replace(r"\ ", r"\s+") for w in words if w.strip())
    return re.compile(rf"\b(?:{alternatives})(?:s|es)?\b", re.I) if alternatives else None


def filter_reason(
    instruction: str, config: SelfInstructConfig, blacklist: re.Pattern[str] | None = None
) -> tuple[str, dict[str, Any]] | None:
    """Why a candidate task is dropped before the novelty check, or None when it passes."""
    words = count_words(instruction)
    if words <= config.min_words:
        return "too_short", {"words": words}
    if words > config.max_words:
        return "too_long", {"words": words}
    if blacklist is None and config.blacklist:
        blacklist = blacklist_pattern(config.blacklist)
    if blacklist is not None:
        hit = blacklist.search(instruction)
        if hit:
            return "blacklisted_keyword", {"keyword": hit.group(0).lower()}
    if config.drop_write_a_program and instruction.lower().startswith("write a program"):
        return "write_a_program", {}
    if instruction[0] in string.punctuation:
        return "leading_punctuation", {"char": instruction[0]}
    if config.require_ascii_start and not instruction[0].isascii():
        return "non_ascii_start", {"char": instruction[0]}
    return None


_CLASSIFICATION_HINT = re.compile(
    r"\b(?:classif\w*|categori[sz]\w*|sentiment|label\w*|positive or negative|true or false|yes or no|"
    r"fact or opinion|(?:decide|determine|tell|identify|check|say) (?:whether|if)|"
    r"which (?:category|class|type)|"
    r"is (?:it|this|the \w+) (?:a|an)\b)",
    re.I,
)


def guess_is_classification(instruction: str) -> bool:
    """Keyword heuristic (seed style) for when the model's yes/no reply cannot be parsed, or a
    seed file lacks the flag: classification tasks name their labels or ask to decide between them."""
    return bool(_CLASSIFICATION_HINT.search(instruction))
