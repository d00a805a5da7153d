"""Context rules: records that need something they cannot have (AlpacaDataCleaned's list for
Alpaca's 52k): an instruction pointing at material it does not come with, a placeholder input,
an answer pointing at a link, image or attachment, an answer that only restates the question.

Each returns a `Verdict` (reason, detail with `matched` and `why`) or None. The references an
instruction makes are read in English, Chinese, Japanese, Korean, Spanish, German, Russian and
Arabic; a reference counts only as a pointer to material ("the following text", "this
paragraph", "given table"), never as any relative clause ("a command that lists files").
"""

from __future__ import annotations

import re

from datagen.records import Record
from datagen.stages.quality_tasks import Verdict, verdict
from datagen.text_units import CJK_CHARS, word_units

# Nouns that name material an instruction can point at.
_MATERIAL = (
    r"passages?|texts?|paragraphs?|articles?|sentences?|tables?|data(?:set)?|code|snippets?|lists?|documents?|"
    r"essays?|poems?|story|stories|emails?|letters?|reviews?|excerpts?|statements?|inputs?|tweets?|"
    r"conversations?|dialogues?|equations?|programs?|functions?|words?|phrases?|numbers?|array|"
    r"string|json|csv|query|recipe|song|lyrics|report|summary|description|quotes?|questions?|paragraph|lines?|"
    r"messages?|headlines?|claims?|evidence|opening|titles?|products?|sequence|passage|argument|riddle|puzzle"
)
# "that" is left out on purpose: "a command that lists files" is a relative clause, not a pointer.
_POINTS_AT_INPUT = re.compile(
    rf"\b(?:following|given|above|below|provided|attached|accompanying|this|these|said)\s+(?:(?!an?\s)[\w'\u2019-]+\s+){{0,2}}"
    rf"(?:{_MATERIAL})\b(?!\s+(?:that|which|who)\b)"
    rf"|\bthe\s+(?:passage|paragraph|excerpt|text|table|snippet|article|headline)\b(?!\s+(?:of|about|on)\b)"
    rf"|\b(?:{_MATERIAL})\s+(?:below|above|given|provided)\b"
    r"|(?:下面|下列|以下|上面|上述|给定|给出|所给|提供)的?(?:这)?(?:段|篇|句|首|个|封|份)?(?:文字|文章|话|句子|段落|文本|诗|"
    r"代码|表格|数据|内容|邮件|评论|短文|材料|对话|列表)"
    r"|这(?:段|篇|句|首|封|份)(?:文字|文章|话|句子|段落|文本|诗|代码|表格|数据|内容|邮件|评论|短文|材料|对话)"
    r"|(?:次の|以下の|上記の|この|与えられた)(?:文章|文|テキスト|段落|表|コード|記事|詩|メール|リスト|データ)"
    r"|(?:다음|아래|위의|주어진|이)\s*(?:문장|글|텍스트|단락|표|코드|기사|시|이메일|목록|데이터)"
    r"|\b(?:el|la|los|las)\s+(?:siguientes?|dad[oa]s?)\s+(?:texto|párrafo|frase|oración|tabla|código|artículo|lista|poema)"
    r"|\b(?:este|esta|estos|estas)\s+(?:texto|párrafo|frase|oración|tabla|código|artículo|poema)\b"
    r"|\b(?:texto|párrafo|frase|oración|tabla)\s+(?:siguiente|anterior|de abajo)\b"
    r"|\b(?:den|die|das|dem|der)\s+(?:folgenden?|obigen?|gegebenen?)\s+(?:Text|Absatz|Satz|Tabelle|Code|Artikel|Gedicht|Liste)"
    r"|\b(?:diesen|diese|dieses|diesem)\s+(?:Text|Absatz|Satz|Tabelle|Code|Artikel|Gedicht)\b"
    r"|(?:следующ|данн|приведённ|приведенн)\w*\s+(?:текст|абзац|предложени|таблиц|код|стать|стихотворени|спис)\w*"
    r"|(?:этот|эту|этого|этом|эти)\s+(?:текст|абзац|предложени|таблиц|код|стать|стихотворени)\w*"
    r"|(?:النص|الفقرة|الجملة|الجدول|المقال|الكود)\s+(?:التالي|التالية|أدناه|أعلاه|المعطى|المعطاة)",
    re.I,
)
# Material given inline makes the reference fine: "Rewrite the following sentence: I am happy."
_INLINE_AFTER_COLON = re.compile(rf"[:：\n]\s*(?:\S+(?:\s+\S+){{2,}}|[{CJK_CHARS}\uac00-\ud7af]{{4,}})")
_INLINE_QUOTED = re.compile(
    r"[\"\u201c\u2018'`]\S+(?:\s+\S+){2,}?[\"\u201d\u2019'`]|[「『《“][^」』》”]{4,}[」』》”]"
)
_UNREACHABLE = [
    ("image", re.compile(r"!\[[^\]]*\]|<img\b|\[(?:image|picture|photo|figure)[^\]]*\]|\b(?:as )?(?:shown|seen|depicted) "
                         r"(?:in|on) the (?:image|picture|photo|figure|diagram|screenshot|chart)\b"
                         r"|如图所示|见下图|見下圖|図のように", re.I)),
    ("attachment", re.compile(r"\b(?:see|find|check|open|refer to) (?:the )?attach(?:ed|ment)|\battached (?:is|are|you will"
                              r" find|please find)\b|\bplease find attached\b|\b(?:i have|i've) attached\b|见附件|請見附件"
                              r"|添付(?:ファイル)?をご覧|첨부(?:파일)?를 참고|\bver (?:el )?adjunto\b|\bsiehe anhang\b"
                              r"|\bсм\. вложение\b", re.I)),
    ("link", re.compile(r"https?://|\bwww\.[\w-]+\.\w+|\[[^\]]+\]\([^)]+\)|\bclick (?:here|the link|on the link)\b"
                        r"|点击(?:这里|链接)", re.I)),
]
# An answer may carry a link when the task asks where to find something.
_ASKS_FOR_LINK = re.compile(
    r"\b(?:url|urls|link|links|website|web ?site|web address|markdown|html|source|sources|resource|resources|cite|"
    r"citation|reference|references|where (?:can|could|should|do) (?:i|one|we|you))\b|网址|链接|网站|リンク|링크",
    re.I,
)
_RESTATE_FILLER = frozenset(
    "sure here is are the a an okay ok certainly of course following below it this these i will ill let me you your "
    "s answer response".split()
)
# Instructions that offer options or carry their material: an answer from their own words is right.
_OFFERS_CHOICES = re.compile(r"\bor\b|\bwhich\b|\bchoose\b|\bselect\b|\bpick\b|\btrue\b|\bfalse\b|还是|或者|哪", re.I)


def check_missing_input(instruction: str, input_text: str) -> Verdict:
    """Catches: an instruction pointing at material ("the following passage", "this
    paragraph", "下面这段文字") with no input and no material in the instruction itself (after a
    colon, or quoted). Must not: relative clauses ("a command that lists files"), task
    descriptions ("given a list of numbers, return ..."), or records whose input is there."""
    if input_text.strip():
        return None
    match = _POINTS_AT_INPUT.search(instruction)
    if not match:
        return None
    if _carries_material(instruction, match.end()) or _INLINE_QUOTED.search(instruction):
        return None
    return verdict("missing_input", match.group(0), f"the instruction points at {match.group(0)!r} but the input "
                   "is empty")


def _carries_material(instruction: str, pointer_end: int) -> bool:
    """Material follows the pointer: a colon (or line break) within five words of it, then text
    that is not just a list of options ("...these lines: joyful, tense, or calm" has none)."""
    after = instruction[pointer_end:]
    colon = re.search(r"[:：\n]", after)
    if not colon or len(after[: colon.start()].split()) > 5 or not _INLINE_AFTER_COLON.search(after):
        return False
    material = after[colon.end() :].strip()
    parts = [p for p in re.split(r",|\bor\b|/|、|，", material) if p.strip()]
    is_options = len(parts) >= 2 and all(len(p.split()) <= 3 for p in parts) and bool(re.search(r"\bor\b|/", material))
    return not is_options


def check_placeholder_input(input_text: str, placeholders: list[str]) -> Verdict:
    """Catches: an input that only says there is none ("<noinput>", "N/A", "无") or is blank.
    Must not: an absent input (many tasks have none) or a real one, however short ("0")."""
    if not input_text:
        return None
    folded = " ".join(input_text.casefold().split()).strip(" .:;\"'")
    if not folded or folded in {p.casefold() for p in placeholders}:
        return verdict("placeholder_input", input_text, "the input is a placeholder for 'no input'")
    return None


def check_unreachable_reference(instruction: str, output: str) -> Verdict:
    """Catches: an answer pointing at a link, an image or an attachment the reader cannot have.
    Must not: a link when the task asks for one, or where to find something."""
    asks_for_link = _ASKS_FOR_LINK.search(instruction)
    for kind, pattern in _UNREACHABLE:
        if kind == "link" and asks_for_link:
            continue
        match = pattern.search(output)
        if match:
            return verdict("unreachable_reference", match.group(0), f"the answer points at a {kind} the reader "
                           "cannot see", kind=kind)
    return None


def check_restates_instruction(record: Record, min_words: int = 3) -> Verdict:
    """Catches: an answer made only of the instruction's own words ("Sure! Here is a poem about
    cats:"): with conversational filler removed, every word already occurs in the instruction.
    Must not: labels, answers picked from options the instruction offers ("Paris or Lyon?"),
    or transformations of material the instruction carries ("Sort: pear, apple, fig")."""
    instruction, output = record.instruction, record.output
    if record.meta.is_classification or _OFFERS_CHOICES.search(instruction):
        return None
    if _INLINE_AFTER_COLON.search(instruction) or _INLINE_QUOTED.search(instruction):
        return None
    words = [w for w in word_units(output) if w not in _RESTATE_FILLER]
    if len(words) < min_words:
        return None
    if set(words) <= set(word_units(instruction)):
        return verdict("restates_instruction", output, "every word of the answer is already in the instruction",
                       words=len(words))
    return None
