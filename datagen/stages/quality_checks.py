"""The quality filter's rule checks: each a small pure function returning `(reason, detail)`
or None, so each can be tested and reused alone, and the filter stays cheap: nothing pays for
a judge call on a record a rule already rejected.

Besides the classic ones (empty, too short/long, refusal, degenerate repetition, truncation,
copying the instruction), the context checks catch what AlpacaDataCleaned found by hand in
Alpaca's 52k: an instruction pointing at material it does not come with, placeholder inputs,
answers pointing at links or images they cannot have, answers that only restate the question.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

from datagen.records import Record

if TYPE_CHECKING:
    from datagen.stages.quality import QualityConfig

Verdict = tuple[str, dict[str, Any]] | None

DEFAULT_REFUSAL_PHRASES = [
    "as an ai language model",
    "as a language model",
    "as an ai assistant, i",
    "i am an ai language model",
    "i'm an ai language model",
    "i don't have personal opinions",
    "i do not have personal opinions",
    "i'm not able to provide",
    "i am not able to provide",
]
# Phrases that are refusals only when the answer opens with them ("I cannot stress enough..."
# in the middle of a good answer is not a refusal).
DEFAULT_REFUSAL_OPENERS = [
    "i cannot",
    "i can't",
    "i can not",
    "i'm sorry, but",
    "i am sorry, but",
    "i'm sorry, i",
    "sorry, but i",
    "sorry, i can",
    "i apologize, but",
    "i apologise, but",
    "i'm unable to",
    "i am unable to",
    "i'm not able to",
    "i am not able to",
    "i won't be able to",
    "unfortunately, i cannot",
    "unfortunately, i can't",
    "unfortunately, as an ai",
]
# A long answer whose last word is one of these, with no closing punctuation, was cut off.
# Only words that (almost) never end an English sentence: "come in", "that's that" are fine.
_DANGLING_WORDS = frozenset(
    "the a an and or nor but of to with from into onto because than whose their its my your our".split()
)


# ---------------------------------------------------------------------------------------------
# heuristics: each returns (reason, detail) or None


def _words(text: str) -> list[str]:
    return text.split()


def _norm_words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def _fold_quotes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def check_empty(output: str) -> Verdict:
    if not output.strip():
        return "empty_output", {}
    return None


def check_length(output: str, min_words: int, max_words: int, exempt_short: bool = False) -> Verdict:
    count = len(_words(output))
    if count < min_words and not exempt_short:
        return "output_too_short", {"words": count, "min_words": min_words}
    if count > max_words:
        return "output_too_long", {"words": count, "max_words": max_words}
    return None


def check_refusal(output: str, phrases: list[str], openers: list[str], window: int = 120) -> Verdict:
    text = " ".join(_fold_quotes(output).casefold().split())
    for phrase in phrases:
        if phrase.casefold() in text:
            return "refusal", {"phrase": phrase}
    head = text[: window + 40]
    for opener in openers:
        pos = head.find(opener.casefold())
        if 0 <= pos <= window:
            return "refusal", {"phrase": opener}
    return None


def repeated_ngram_ratio(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0 = all distinct, ->1 = a loop)."""
    words = _norm_words(text)
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def check_repetition(
    output: str,
    n: int = 4,
    max_ratio: float = 0.5,
    min_words: int = 40,
    max_line_repeats: int = 3,
    min_line_chars: int = 16,
) -> Verdict:
    """Degenerate loops: many repeated n-grams, or one substantial line over and over."""
    if len(_words(output)) >= min_words:
        ratio = repeated_ngram_ratio(output, n)
        if ratio > max_ratio:
            return "repetitive_output", {"signal": "ngram", "ratio": round(ratio, 3), "n": n}
    lines = [" ".join(line.split()) for line in output.splitlines()]
    counts = Counter(line for line in lines if len(line) >= min_line_chars)
    if counts:
        line, times = counts.most_common(1)[0]
        if times > max_line_repeats:
            return "repetitive_output", {"signal": "line", "times": times, "line": line[:80]}
    return None


def check_truncated(output: str, finish_reason: str | None = None, min_words: int = 8) -> Verdict:
    """Cut-off answers. Conservative on purpose: lists, code and labels often end without a
    full stop, so text alone only counts when the end is unmistakably mid-sentence."""
    if finish_reason == "length":
        return "truncated_output", {"signal": "finish_reason_length"}
    if output.count("```") % 2 == 1:
        return "truncated_output", {"signal": "unclosed_code_block"}
    tail = output.rstrip()
    if len(_words(tail)) < min_words:
        return None
    last = tail[-1]
    if last in ",;:(":
        return "truncated_output", {"signal": "ends_mid_sentence", "tail": tail[-40:]}
    if last.isalpha():
        last_word = re.findall(r"[A-Za-z']+$", tail)
        if last_word and last_word[0].casefold() in _DANGLING_WORDS:
            return "truncated_output", {"signal": "ends_mid_sentence", "tail": tail[-40:]}
    return None


def overlap_f1(a: str, b: str) -> float:
    """F1 of shared word bigrams (unigrams for texts under 2 words): 1 = same words in order."""
    wa, wb = _norm_words(a), _norm_words(b)
    n = 2 if min(len(wa), len(wb)) >= 2 else 1
    ga = Counter(tuple(wa[i : i + n]) for i in range(len(wa) - n + 1))
    gb = Counter(tuple(wb[i : i + n]) for i in range(len(wb) - n + 1))
    if not ga or not gb:
        return 0.0
    common = sum((ga & gb).values())
    if not common:
        return 0.0
    precision, recall = common / sum(ga.values()), common / sum(gb.values())
    return 2 * precision * recall / (precision + recall)


def check_copies_instruction(instruction: str, output: str, max_overlap: float = 0.8) -> Verdict:
    """An answer that restates the instruction instead of answering it. Compared with the
    instruction only: echoing the *input* is right for tasks like "fix the grammar"."""
    score = overlap_f1(output, instruction)
    if score >= max_overlap:
        return "copies_instruction", {"overlap": round(score, 3), "max_overlap": max_overlap}
    return None


def heuristic_verdict(record: Record, config: QualityConfig) -> Verdict:
    """The first heuristic that rejects `record`, or None when it passes them all."""
    output = record.output
    verdict = check_empty(output)
    if verdict:
        return verdict
    exempt = bool(record.meta.is_classification) and config.short_ok_for_classification
    verdict = check_length(output, config.min_output_words, config.max_output_words, exempt)
    verdict = verdict or check_refusal(
        output, config.refusal_phrases, config.refusal_openers, config.refusal_window_chars
    )
    verdict = verdict or check_repetition(
        output,
        config.repetition_ngram,
        config.max_repeated_ngram_ratio,
        config.repetition_min_words,
        config.max_line_repeats,
        config.min_repeated_line_chars,
    )
    if config.check_truncation and not verdict:
        finish = record.meta.answer_finish_reason
        verdict = check_truncated(
            output, finish if isinstance(finish, str) else None, config.truncation_min_words
        )
    return verdict or check_copies_instruction(record.instruction, output, config.max_instruction_overlap)


# ---------------------------------------------------------------------------------------------
# context heuristics: records that need something they cannot have (AlpacaDataCleaned's list)

# An instruction pointing at material it should come with: "the following text", "this
# passage", "the given table". "the" alone only with nouns that are almost always such material.
_MATERIAL = (
    r"passages?|texts?|paragraphs?|articles?|sentences?|tables?|data(?:set)?|code|snippets?|lists?|documents?|"
    r"essays?|poems?|story|stories|emails?|letters?|reviews?|excerpts?|statements?|inputs?|tweets?|"
    r"conversations?|dialogues?|equations?|programs?|functions?|paragraph|words?|phrases?|numbers?|array|"
    r"string|json|csv|query|recipe|song|lyrics|report|summary|description"
)
_POINTS_AT_INPUT = re.compile(
    rf"\b(?:following|given|above|below|provided|attached|accompanying|this|these|that|said)\s+(?:(?!an?\s)\w+\s+)?"
    rf"(?:{_MATERIAL})\b|\bthe\s+(?:passage|paragraph|excerpt|text|table|snippet|article)\b(?!\s+(?:of|about|on)\b)",
    re.I,
)
# Material given inline makes the reference fine: "Rewrite the following sentence: I am happy."
_INLINE_AFTER_COLON = re.compile(r"[:\n]\s*\S+(?:\s+\S+){2,}")
_INLINE_QUOTED = re.compile(r"[\"\u201c\u2018'`]\S+(?:\s+\S+){2,}?[\"\u201d\u2019'`]")
_UNREACHABLE = [
    ("image", re.compile(r"!\[[^\]]*\]|<img\b|\[(?:image|picture|photo|figure)[^\]]*\]|\b(?:as )?(?:shown|seen|depicted) "
                         r"(?:in|on) the (?:image|picture|photo|figure|diagram|screenshot|chart)\b", re.I)),
    ("attachment", re.compile(r"\b(?:see|find|check|open|refer to) (?:the )?attach(?:ed|ment)|\battached (?:is|are|you will"
                              r" find|please find)\b|\bplease find attached\b|\b(?:i have|i've) attached\b", re.I)),
    ("link", re.compile(r"https?://|\bwww\.[\w-]+\.\w+|\[[^\]]+\]\([^)]+\)|\bclick (?:here|the link|on the link)\b", re.I)),
]
_RESTATE_FILLER = frozenset(
    "sure here is are the a an okay ok certainly of course following below it this these i will ill let me you your "
    "s answer response".split()
)


def check_missing_input(instruction: str, input_text: str) -> Verdict:
    """The instruction points at material ("the following passage") but there is no input and
    the instruction does not carry the material itself (after a colon, or quoted)."""
    if input_text.strip():
        return None
    match = _POINTS_AT_INPUT.search(instruction)
    if not match:
        return None
    rest = instruction[match.start() :]
    if _INLINE_AFTER_COLON.search(rest) or _INLINE_QUOTED.search(instruction):
        return None
    return "missing_input", {"phrase": match.group(0)}


def check_placeholder_input(input_text: str, placeholders: list[str]) -> Verdict:
    """An input that only says "there is no input" ("<noinput>", "N/A"), or one of blanks only."""
    if not input_text:
        return None  # no input at all is normal: many tasks have none
    folded = " ".join(input_text.casefold().split()).strip(" .:;\"'")
    if not folded or folded in {p.casefold() for p in placeholders}:
        return "placeholder_input", {"input": input_text[:40]}
    return None


def check_unreachable_reference(instruction: str, output: str) -> Verdict:
    """The answer points at a link, an image or an attachment the reader cannot have. A link is
    fine when the instruction asks for one."""
    asks_for_link = re.search(r"\b(?:url|link|website|web ?site|web address|markdown|html)\b", instruction, re.I)
    for kind, pattern in _UNREACHABLE:
        if kind == "link" and asks_for_link:
            continue
        match = pattern.search(output)
        if match:
            return "unreachable_reference", {"kind": kind, "match": match.group(0)[:80]}
    return None


def check_restates_instruction(instruction: str, output: str, min_words: int = 3) -> Verdict:
    """An answer made only of the instruction's own words ("Sure! Here is a poem about cats:"):
    with the conversational filler removed, every word already occurs in the instruction."""
    words = [w for w in _norm_words(output) if w not in _RESTATE_FILLER]
    if len(words) < min_words:
        return None
    known = set(_norm_words(instruction))
    if all(w in known for w in words):
        return "restates_instruction", {"words": len(words)}
    return None


def context_verdict(record: Record, config: QualityConfig) -> Verdict:
    """The first context heuristic that rejects `record` (see QualityConfig.check_context)."""
    if not config.check_context:
        return None
    verdict = check_placeholder_input(record.input, config.placeholder_inputs)
    verdict = verdict or check_missing_input(record.instruction, record.input)
    verdict = verdict or check_unreachable_reference(record.instruction, record.output)
    if not verdict and not record.meta.is_classification:
        verdict = check_restates_instruction(record.instruction, record.output)
    return verdict
