"""The quality filter's options (the one place their defaults live) and the default refusal
patterns they start from; the rules in `quality_checks` read this config, the stage runs them.
`RULE_NAMES` is the rules table's names, written out so that this module needs nothing from the
rules (tests/test_quality_checkset.py checks the two agree)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datagen.parsing import EMPTY_INPUT_MARKERS

RULE_NAMES: tuple[str, ...] = (
    "empty_output", "output_too_short", "output_too_long", "refusal", "addresses_judge", "repetitive_output", "truncated_output", "copies_instruction", "placeholder_input", "missing_input", "unreachable_reference", "restates_instruction",
)

# A refusal or an AI disclaimer opening any sentence ("Sure. As an AI language model, I ...").
DEFAULT_REFUSAL_PHRASES = [
    "as an ai language model", "as a language model", "as an ai assistant", "as an artificial intelligence",
    "i am an ai language model", "i'm an ai language model", "i don't have personal opinions",
    "i do not have personal opinions", "作为一个ai语言模型", "作为一个人工智能", "作为ai语言模型", "作为人工智能语言模型",
    "aiアシスタントとして", "ai言語モデルとして", "ai 언어 모델로서", "como modelo de lenguaje", "como un modelo de lenguaje",
    "como ia,", "als ki-sprachmodell", "als sprachmodell", "как языковая модель", "как ии,", "بصفتي نموذج لغة",
    "بصفتي نموذجًا لغويًا",
]
# Regular expressions (case-insensitive) a refusal opens with, matched at the start of one of the
# answer's first sentences. Each is a whole refusal shape (a "can't" *with* what is refused), so
# "I can't help but smile" or "I can't wait for spring" in a written answer is no refusal.
_REFUSED = (
    r"help(?! but)|assist|provide|answer|comply|fulfil|fulfill|complete|do (?:that|this|it)|write|create|generate|"
    r"produce|engage|support|give|offer|share|browse|access|predict|discuss|respond|tell|perform|process|see|view|"
    r"open|read|look|determine|verify|guarantee|make|translate|summari[sz]e|continue|participate"
)
DEFAULT_REFUSAL_OPENERS = [
    r"(?:i'm |i am |i'm really |so )?sorry,? (?:but )?(?:i|as an ai\b[^,.]*,? i) (?:can(?:'t|not| not)|am unable|'m unable"
    r"|am not able|'m not able|won't|will not|must|have to|don't|do not)\b",
    r"i (?:must )?apologi[sz]e,? but (?:i|as an ai)\b",
    rf"(?:unfortunately,? )?i(?: can(?:'t|not| not)|'m unable to| am unable to|'m not able to| am not able to| won't be "
    rf"able to| will not be able to| must decline to| have to decline to|'m not allowed to| am not allowed to| won't|"
    rf" will not| refuse to)\s+(?:\w+\s+)?(?:{_REFUSED})\b",
    r"i (?:don't|do not) have (?:access|the ability|personal|real-time|feelings|opinions|emotions|a physical|"
    r"the capacity)\b",
    r"(?:很)?(?:抱歉|对不起)[，,。！!]?.{0,12}(?:无法|不能|没办法|不可以)",
    r"我(?:无法|不能)(?:帮|提供|回答|完成|协助|满足)",
    r"申し訳(?:ありません|ございません)が.{0,30}(?:できません|お答えできません|お手伝いできません)",
    r"죄송(?:하지만|합니다)[,.]?.{0,30}(?:수 없|드릴 수 없)",
    r"lo siento,? (?:pero )?no (?:puedo|es posible)",
    r"no puedo (?:ayudar|proporcionar|responder|cumplir|hacer eso)",
    r"es tut mir leid,? (?:aber )?ich (?:kann|darf) (?:\w+ ){0,2}(?:nicht|keine)",
    r"ich kann (?:dir |ihnen )?(?:dabei |hierbei )?nicht helfen",
    r"(?:извините|простите|к сожалению),? (?:но )?я не (?:могу|в состоянии)",
    r"я не могу (?:помочь|предоставить|ответить|выполнить)",
    r"(?:عذرًا|عذرا|آسف|أعتذر)،? (?:لكن(?:ني)? )?(?:لا أستطيع|لا يمكنني)",
    r"لا (?:أستطيع|يمكنني) (?:المساعدة|تقديم|الإجابة)",
]

class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heuristics: bool = Field(True, description="run the rule-based checks")
    keep_heuristics: list[str] = Field(
        default_factory=list,
        description=f"rules turned off: what they would drop is kept (comma-separated; one of {', '.join(RULE_NAMES)})",
    )
    drop_heuristics: list[str] = Field(
        default_factory=list,
        description="rules turned on even when their family is off (check_truncation, check_context)",
    )
    explain: bool = Field(
        False, description="print every drop: the rule, the text it matched and a one-line reason (also kept in "
        "each dropped record's meta.drop_detail)"
    )
    min_output_words: int = Field(
        2, ge=0, description="answers to tasks that do not ask for a short answer need this many words "
        "(output_too_short); words of spaced scripts, CJK characters / 1.5. Labels, numbers, yes/no, fill-ins, "
        "extractions, translations of a short input and is_classification tasks are exempt",
    )
    min_long_form_words: int = Field(
        5, ge=0, description="answers to tasks that ask for an explanation, essay, story, plan or list need this "
        "many words (output_too_short)",
    )
    max_output_words: int = Field(
        2000, ge=1, description="answers with more words are dropped (output_too_long; CJK characters / 1.5)"
    )
    refusal_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES),
        description="case-insensitive phrases (AI disclaimers) that mark a refusal when they open any sentence",
    )
    refusal_openers: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_OPENERS),
        description="case-insensitive regular expressions of whole refusal shapes ('I can't' + what is refused) "
        "that mark a refusal when they open one of the answer's first sentences; tasks that ask for a decline "
        "or an apology are exempt",
    )
    refusal_window_chars: int = Field(120, ge=0, description="how far into the answer an opener may start")
    repetition_ngram: int = Field(
        8, ge=1, description="n-gram size (words; CJK characters) for the repetition check: long enough that "
        "list items sharing a prefix do not count"
    )
    max_repeated_ngram_ratio: float = Field(
        0.3, ge=0.0, le=1.0, description="drop when this share of the answer's n-grams are repeats"
    )
    repetition_min_words: int = Field(40, ge=1, description="the n-gram check applies from this many words")
    max_line_repeats: int = Field(
        3, ge=1, description="drop when one non-trivial line appears more often than this"
    )
    min_repeated_line_chars: int = Field(
        16, ge=1, description="shorter lines (braces, separators) are ignored"
    )
    check_truncation: bool = Field(
        True,
        description="drop answers cut off (finish_reason=length, unclosed code block, ends mid-sentence)",
    )
    truncation_min_words: int = Field(
        8, ge=1, description="the ends-mid-sentence check applies from this many words"
    )
    max_instruction_overlap: float = Field(
        0.8, ge=0.0, le=1.0, description="drop when answer and instruction overlap this much (word-bigram F1)"
    )
    check_context: bool = Field(
        True,
        description="drop records that need context they lack: an instruction pointing at an input that is "
        "empty (missing_input), a placeholder input like <noinput> or N/A (placeholder_input), an answer pointing "
        "at a link, image or attachment (unreachable_reference), an answer that only restates the instruction "
        "(restates_instruction)",
    )
    placeholder_inputs: list[str] = Field(
        default_factory=lambda: sorted(EMPTY_INPUT_MARKERS - {""}),
        description="inputs (case, spacing and surrounding punctuation ignored) that stand for 'no input'",
    )

    # Serialised under their pre-0.2 names, which is what a stage's resume hash reads: a run
    # directory made before the rename skips its finished quality stage as before.
    use_judge: bool = Field(True, serialization_alias="judge", description="score each record with an LLM judge (1-5)")
    judge: str | None = Field(None, serialization_alias="llm",
                              description="judge backend spec (None = the run's backend)")
    judge_scale: tuple[float, float] = Field(
        (1, 5),
        description="the judge's scale (low, high); prompts/quality_judge.txt is written for 1-5, change both "
        "together. min_judge_score is on this scale",
    )
    judge_retry: bool = Field(
        False, description="ask an unparseable judge once more for just the number (one extra call each)"
    )
    min_judge_score: float = Field(
        4.5, ge=1.0, le=5.0, description="keep records the judge scores at least this"
    )
    judge_max_tokens: int = Field(256, ge=16, description="token budget for the judge's reply")
    on_unparseable: Literal["drop", "keep"] = Field(
        "drop", description="a judge reply without a score: drop (judge_unparseable) or keep unscored"
    )

    on_bad_turn: Literal["drop", "truncate"] = Field(
        "drop", description="dialogues: one bad assistant turn drops the dialogue, or truncates it before that turn"
    )

    ifd: bool = Field(False, description="compute Instruction-Following Difficulty with a local causal LM")
    ifd_model: str | None = Field(None, description="causal LM folder or hub id (None = embedded SmolLM2)")
    max_ifd: float = Field(
        1.0, gt=0.0, description="keep records with IFD below this (>= 1: instruction does not help)"
    )
    ifd_max_tokens: int = Field(512, ge=8, description="answer and prompt are each cut to this many tokens")

    # Spellings of releases before 0.2, still read: `judge: false` was the on/off switch and `llm`
    # the judge's backend. Everywhere now `judge` is a backend spec, as in distill and eval.
    LEGACY_KEYS: ClassVar[frozenset[str]] = frozenset({"llm"})

    @model_validator(mode="before")
    @classmethod
    def _read_old_spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("judge"), bool):
            data["use_judge"] = data.pop("judge")
        if "llm" in data:
            spec = data.pop("llm")
            data.setdefault("judge", spec)
        return data

    @field_validator("keep_heuristics", "drop_heuristics")
    @classmethod
    def _known_rules(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in RULE_NAMES]
        if unknown:
            raise ValueError(f"unknown heuristic {unknown[0]!r} (known: {', '.join(RULE_NAMES)})")
        return names

    @model_validator(mode="after")
    def _keep_or_drop(self) -> QualityConfig:
        both = sorted(set(self.keep_heuristics) & set(self.drop_heuristics))
        if both:
            raise ValueError(f"--keep-heuristic and --drop-heuristic both name {both[0]!r}: pick one")
        return self
