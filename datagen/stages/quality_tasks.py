"""What a task asks for, read from its instruction, input and answer: the context the quality
rules need so they judge an answer against its task, not against one idea of a "good" answer.

A one-word answer is right for a label, a number, a fill-in or the translation of one word and
wrong for "explain why"; a statement ending in `;` is finished SQL and an unfinished sentence;
"I'm sorry, but I can't come" is a refusal unless the task was to decline an invitation. Each
pattern covers English plus Chinese, Japanese, Korean, Spanish, German, Russian and Arabic.
"""

from __future__ import annotations

import re
from typing import Any

from datagen.records import Record
from datagen.text_units import length_in_words

Verdict = tuple[str, dict[str, Any]] | None


def verdict(reason: str, matched: str, why: str, **numbers: Any) -> tuple[str, dict[str, Any]]:
    """A drop with what triggered it (`matched`, cut to 120 characters) and why, in one line."""
    return reason, {"matched": matched[:120], "why": why, **numbers}


# Instructions that ask for a short answer: a label, a number, a word, yes/no, a fill-in.
_SHORT_TASK = re.compile(
    r"\b(?:one|single|a|1)[- ]word\b|\bone or two words\b|\bin (?:one|a few|two|three) words\b|\bshort answer\b"
    r"|\byes or no\b|\byes/no\b|\btrue or false\b|\btrue/false\b|\bfill in\b|\bfill-in\b|\bblank\b"
    r"|\bclassify\b|\bcategori[sz]e\b|\blabel\b|\bsentiment\b|\bpositive or negative\b|\bwhich (?:one|of)\b"
    r"|\bhow (?:many|much|old|long|far|tall)\b|\bcalculate\b|\bcompute\b|\bsolve\b|\bevaluate\b|\bconvert\b"
    r"|\bwhat is \d|\bwhat's \d|\bname (?:the|a|one)\b|\bidentify\b|\bextract\b|\bpick\b|\bchoose\b|\bselect\b"
    r"|\brate\b|\bscore\b|\btranslate\b|\bregex\b|\bregular expression\b|\bcommand\b|\babbreviat|\bacronym\b"
    r"|\bsynonym|\bantonym|\bplural\b|\bpast tense\b|\bcapital of\b|\bwho (?:wrote|painted|invented|is|was)\b"
    r"|\bwhen (?:did|was|is)\b|\bwhere is\b|\bcorrect (?:option|answer|word|spelling)\b|\bspell\b"
    r"|一个词|一个字|几个字|是否|是不是|判断|分类|类别|多少|几个|几岁|计算|翻译|填空|选择|哪(?:个|一)|提取|情感|正面|负面"
    r"|一語|単語|はい|いいえ|分類|いくつ|何人|計算|翻訳|選んで|抽出"
    r"|한 단어|예 또는 아니오|분류|몇|계산|번역|고르|추출"
    r"|\buna palabra\b|\bsí o no\b|\bclasifica|\bcuántos?\b|\bcuántas?\b|\bcalcula|\btraduce|\belige\b"
    r"|\bein wort\b|\bja oder nein\b|\bklassifizier|\bwie viele\b|\bberechne|\bübersetze|\bwähle\b"
    r"|одним словом|\bда или нет\b|классифицир|сколько|вычисли|посчитай|переведи|выбери"
    r"|بكلمة واحدة|نعم أو لا|صنف|كم|احسب|ترجم|اختر",
    re.I,
)
# Instructions that say outright they want reasoning or prose: these win over short cues ("Solve
# the puzzle and explain your answer", "What is a black hole?").
_EXPLAIN_TASK = re.compile(
    r"\b(?:explain|describe|justify|elaborate|discuss)\b|\bshow (?:your |the )?(?:work|steps|reasoning)\b"
    r"|\bstep[- ]by[- ]step\b|\bwhat (?:is|are) (?:a|an)\s|\bwhat does\b.*\b(?:mean|do)\b|\bdefine\b"
    r"|解释|说明|描述|过程|理由|説明|설명|\bexplica|\berkläre|\bbeschreibe|объясни|опиши|اشرح",
    re.I,
)
# Instructions that ask for extended text: an explanation, an essay, a story, a plan, a list.
_LONG_FORM_TASK = re.compile(
    r"\b(?:explain|describe|discuss|elaborate|compare|contrast|outline|argue|justify|analy[sz]e|brainstorm)\b"
    r"|\bwhy\b|\bhow (?:do|does|did|can|could|would|should|to|is|are|might)\b"
    r"|\b(?:write|compose|draft|create|generate|give|list|suggest|plan|propose)\b.{0,40}\b(?:essay|story|paragraph|"
    r"poem|letter|email|article|blog|speech|review|report|description|explanation|plan|steps|tips|ideas|reasons|"
    r"ways|examples|list|summary|dialogue|script|guide|instructions|advice|argument|pros and cons|itinerary|schedule|"
    r"recipe|feedback|message|outline|agenda|menu|routine)\b|\bcontinue\b|\bsentences\b"
    r"|解释|说明|描述|介绍|讨论|比较|分析|为什么|为何|如何|怎么|怎样|写一(?:篇|首|封|段|个故事)|列出|建议|解答|写出"
    r"|説明|なぜ|どうして|どのように|書いて|比較|紹介"
    r"|설명|왜|어떻게|작성|비교|소개"
    r"|\bexplica|\bdescribe\b|\bescribe\b|\bpor qué\b|\bcómo\b|\bcompara"
    r"|\berkläre|\bbeschreibe|\bschreibe\b|\bwarum\b|\bwie (?:funktioniert|kann|können)\b|\bvergleiche"
    r"|объясни|опиши|напиши|почему|как (?:работает|сделать|можно)|сравни"
    r"|اشرح|صف |اكتب|لماذا|كيف|قارن",
    re.I,
)
# Tasks whose good answer is code or a structured statement (SQL ends in `;`, Python in `:`-less lines).
_CODE_TASK = re.compile(
    r"\b(?:sql|query|python|javascript|typescript|java|c\+\+|c#|rust|golang|bash|shell|command|script|function|"
    r"program|code|regex|regular expression|html|css|json|yaml|class|method|snippet|algorithm|implement)\b"
    r"|代码|函数|程序|脚本|查询|正则|コード|関数|プログラム|코드|함수|프로그램|código|función|funktion|код|функци|برنامج|دالة",
    re.I,
)
_CODE_SHAPE = re.compile(
    r"```|^\s*(?:def |class |import |from \S+ import|return\b|for .+:|if .+:|while .+:|#include|public |"
    r"function |const |let |var |SELECT |INSERT |UPDATE |DELETE |CREATE |ALTER |WITH |\$ |sudo |git |pip )"
    r"|[;{}]\s*$|^\s*[\w.]+\(.*\)\s*;?\s*$",
    re.I | re.M,
)
# Tasks that ask for a refusal, an apology or a "no": the answer is meant to sound like one.
_DECLINE_TASK = re.compile(
    r"\b(?:declin\w*|refus\w*|reject\w*|apologi[sz]\w*|say no|turn down|sorry|regret\w*|cancel\w*|unable)\b"
    r"|拒绝|婉拒|道歉|断る|謝罪|お詫び|거절|사과|rechaz|disculp|ablehn|entschuldig|отказ|извин|رفض|اعتذ",
    re.I,
)
# Answers that are a value rather than prose: numbers, amounts, expressions, dates.
_VALUE_ANSWER = re.compile(r"^[\s$€£¥%+\-−×x*/=().,:\d]+[a-zA-Z%°]{0,6}\.?$")


def asks_for_short_answer(record: Record) -> bool:
    """A label, a number, a word, yes/no, a fill-in, a short transformation, a factual question:
    short is right. An instruction that asks outright for reasoning or prose is never short."""
    if record.meta.is_classification:
        return True
    if _EXPLAIN_TASK.search(record.instruction):
        return False
    if _SHORT_TASK.search(record.instruction):
        return True
    if record.instruction.rstrip().endswith(("?", "\uff1f", "\u061f")) and not asks_for_long_form(record):
        return True
    if _VALUE_ANSWER.match(record.output.strip()):
        return True
    # A transformation of a short input (translate "Thank you", correct one word) is short too.
    return bool(record.input.strip()) and length_in_words(record.input) <= 12 and not asks_for_long_form(record)


def asks_for_long_form(record: Record) -> bool:
    """An explanation, an essay, a story, a plan or a list of several items."""
    return bool(_LONG_FORM_TASK.search(record.instruction))


def is_code_answer(record: Record) -> bool:
    """The task asks for code / SQL / a command, or the answer is shaped like one."""
    return bool(_CODE_TASK.search(record.instruction) or _CODE_SHAPE.search(record.output))


def asks_to_decline(record: Record) -> bool:
    """The task is to write a refusal, an apology or a decline: such an answer is no refusal."""
    return bool(_DECLINE_TASK.search(record.instruction) or _DECLINE_TASK.search(record.input))
