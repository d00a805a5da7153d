"""Quality filter: cheap heuristics, an LLM judge, and optionally an IFD score.

Order is cheapest first, so nothing pays for a judge call on a record a rule already
rejected: the rules of `quality_checks.RULES` (empty / too short / too long answer, refusal,
degenerate repetition, truncation, answer that copies the instruction, and the context rules of
`quality_context`), then IFD (local forward passes, off by default), then the judge
(Alpagasus-style 1-5 score with a reason; keep >= 4.5 by default).

Each rule is measured for precision on a labelled check set (`bench/filters.py`); a drop says
which rule, what it matched and why (`meta.drop_detail`, printed by `--explain`), and any rule
can be turned off (`keep_heuristics`) or on (`drop_heuristics`). Scores land in `meta.scores`
("quality_judge", "ifd"); the judge's reason in `meta.quality_judge_reason`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, ClassVar, Literal, TextIO

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datagen.context import StageContext
from datagen.errors import failure_reason
from datagen.llm.base import Completion
from datagen.parsing import EMPTY_INPUT_MARKERS
from datagen.plan import Calls, Records, StagePlan, finish, judge_calls, template_tokens
from datagen.records import Record, StageResult, dropped
from datagen.registry import Command, Stage, register
from datagen.stages.ifd import ifd_score, load_causal_lm
from datagen.stages.quality_checks import (
    DEFAULT_REFUSAL_OPENERS,
    DEFAULT_REFUSAL_PHRASES,
    RULE_NAMES,
    first_verdict,
)


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


# ---------------------------------------------------------------------------------------------
# LLM judge

def parse_judgement(text: str) -> tuple[float | None, str]:
    """(score in the default 1-5 scale or None, reason): the shared judge's parser."""
    from datagen.judge import parse_judgement as shared

    low, high = QualityConfig.model_fields["judge_scale"].default
    return shared(text, low, high)


# ---------------------------------------------------------------------------------------------
# the stage


def run(records: list[Record], ctx: StageContext, config: QualityConfig) -> StageResult:
    """Heuristics, then IFD (optional), then the judge; kept records stay in input order."""
    verdicts: dict[int, tuple[str, dict[str, Any]]] = {}
    updated: dict[int, Record] = {}
    stats: dict[str, Any] = {"input": len(records)}

    if config.heuristics:
        for i, rec in enumerate(records):
            verdict = first_verdict(rec, config)
            if verdict:
                verdicts[i] = verdict
    stats["heuristic_drops"] = len(verdicts)

    def alive() -> list[int]:
        return [i for i in range(len(records)) if i not in verdicts]

    if config.ifd:
        tokenizer, model = load_causal_lm(config.ifd_model)
        todo = alive()
        scored, values = 0, []
        with ctx.bar(len(todo), "quality ifd", unit="rec") as bar:
            for i in todo:
                rec = updated.setdefault(i, records[i].model_copy(deep=True))
                result = ifd_score(rec, tokenizer, model, config.ifd_max_tokens)
                bar.update(1)
                if result is None:
                    continue
                scored += 1
                values.append(result["ifd"])
                rec.meta.scores["ifd"] = round(result["ifd"], 4)
                if result["ifd"] >= config.max_ifd:
                    verdicts[i] = (
                        "ifd_too_high",
                        {
                            "ifd": round(result["ifd"], 4),
                            "max_ifd": config.max_ifd,
                            "ppl_conditioned": round(result["ppl_conditioned"], 3),
                            "ppl_unconditioned": round(result["ppl_unconditioned"], 3),
                        },
                    )
                bar.set_postfix(dropped=len(verdicts))
        stats["ifd_scored"] = scored
        stats["ifd_mean"] = round(sum(values) / len(values), 4) if values else None

    if config.use_judge:
        _judge(records, alive(), updated, verdicts, ctx, config, stats)

    kept, gone = [], []
    for i, rec in enumerate(records):
        current = updated.get(i, rec)
        if i in verdicts:
            reason, detail = verdicts[i]
            gone.append(dropped(current, reason, **detail))
        else:
            kept.append(current if i in updated else rec.model_copy(deep=True))
    counts: dict[str, int] = {}
    for reason, _ in verdicts.values():
        counts[reason] = counts.get(reason, 0) + 1
    stats["drop_reasons"] = dict(sorted(counts.items()))
    stats["kept"] = len(kept)
    if config.explain:
        explain_drops(gone)
    return StageResult(kept=kept, dropped=gone, stats=stats)


def _judge(
    records: list[Record],
    todo: list[int],
    updated: dict[int, Record],
    verdicts: dict[int, tuple[str, dict[str, Any]]],
    ctx: StageContext,
    config: QualityConfig,
    stats: dict[str, Any],
) -> None:
    from datagen.judge import score_answers

    llm = ctx.llm(config.judge)
    structured = bool(getattr(llm, "supports_json_schema", False))
    chosen = [records[i] for i in todo]
    low, high = config.judge_scale
    results = score_answers(
        llm, [(r.instruction, r.output) for r in chosen], ctx, low=low, high=high, prompt="quality_judge",
        max_tokens=config.judge_max_tokens, retry=config.judge_retry, structured=structured,
        desc="quality judge", inputs=[r.input for r in chosen], seed=ctx.seed, whole_numbers=False,
    )
    counts = {"low": 0, "unparseable": 0}
    scores: list[float] = []
    for i, judged in zip(todo, results, strict=True):  # applied in request order: deterministic
        rec = updated.setdefault(i, records[i].model_copy(deep=True))
        if judged.error:
            reason = failure_reason(Completion(error=judged.error)) or "llm_error"
            verdicts[i] = (reason, {"error": judged.error[:300]})
            continue
        score, reason = judged.score, judged.reason
        if score is None:
            counts["unparseable"] += 1
            if config.on_unparseable == "drop":
                verdicts[i] = ("judge_unparseable", {"reply": judged.raw[:300]})
            continue
        scores.append(score)
        rec.meta.scores["quality_judge"] = score
        rec.meta.quality_judge_reason = reason
        if score < config.min_judge_score:
            counts["low"] += 1
            verdicts[i] = (
                "low_judge_score",
                {"score": score, "min_score": config.min_judge_score, "judge_reason": reason},
            )
    stats.update(
        judge_requests=len(results),
        judge_scale=list(config.judge_scale),
        judge_structured_output=structured,
        judge_unparseable=counts["unparseable"],
        judge_low_score=counts["low"],
        llm_errors=sum(1 for r, _ in verdicts.values() if r == "llm_error"),
        judge_mean_score=round(sum(scores) / len(scores), 3) if scores else None,
    )


def explain_drops(gone: list[Record], stream: TextIO | None = None) -> None:
    """One line per dropped record: id, rule, the text it matched, why (`--explain`)."""
    out = stream or sys.stderr
    for rec in gone:
        detail = rec.meta.drop_detail or {}
        matched = " ".join(str(detail.get("matched", "")).split())
        why = detail.get("why") or ", ".join(f"{k}={v}" for k, v in detail.items() if k != "matched")
        print(f"drop {rec.id}  {rec.meta.drop_reason}  \"{matched[:80]}\"  - {why}", file=out)


# ---------------------------------------------------------------------------------------------
# CLI


def plan(flow: Records, config: QualityConfig, default_llm: str, prompts_dir: str | None) -> StagePlan:
    """Upper bound: every record judged (plus one retry), none dropped by the heuristics."""
    calls = []
    if config.use_judge:
        judge = Calls(config.judge or default_llm)
        judge_calls(judge, flow.count, flow.instruction_tokens, flow.output_tokens, config.judge_max_tokens,
                    template_tokens("quality_judge", prompts_dir), template_tokens("judge_retry", prompts_dir))
        calls.append(judge)
    return finish(StagePlan("", flow.count, flow.count, calls), flow)


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def _no_judge_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-judge", dest="use_judge", action="store_false", default=argparse.SUPPRESS,
                        help="no LLM judge: heuristics (and IFD) only (same as --no-use-judge)")


STAGE = register(Stage(
    name="quality",
    config=QualityConfig,
    run=run,
    plan=plan,
    position=50,
    help="drop low-quality records: heuristics, LLM judge (1-5), optional IFD",
    command=Command(
        verb="filter",
        description=(
            "Rule checks (empty, too short/long, refusal, repetition, truncation, answer copying the\n"
            "instruction, missing or placeholder input, ...), then an LLM judge on judge_scale (keep >=\n"
            "--min-score), optionally IFD from a local model. Every dropped record carries its reason;\n"
            "write them with --dropped. --judge SPEC picks the judge backend (default: --llm); --no-judge\n"
            "runs heuristics (and IFD) only, with no LLM calls. --explain prints each drop with its rule,\n"
            "the text it matched and why; --keep-heuristic NAME[,NAME] turns rules off, --drop-heuristic on."
        ),
        flag_aliases={"min_judge_score": ["--min-score"], "min_output_words": ["--min-words"],
                      "max_output_words": ["--max-words"], "keep_heuristics": ["--keep-heuristic"],
                      "drop_heuristics": ["--drop-heuristic"]},
        value_parsers={"keep_heuristics": _names, "drop_heuristics": _names},
        add_flags=_no_judge_flag,
    ),
    uses=frozenset({"answer_finish_reason", "is_classification", "scores"}),
    writes=frozenset({"scores", "quality_judge_reason"}),
))
