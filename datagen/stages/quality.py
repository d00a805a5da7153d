"""Quality filter: cheap heuristics, an LLM judge, and optionally an IFD score.

Order is cheapest first, so nothing pays for a judge call on a record a regex already
rejected: heuristics (empty / too short / too long answer, refusal, degenerate repetition,
truncation, answer that just copies the instruction), then IFD (local forward passes, off by
default), then the judge (Alpagasus-style 1-5 score with a reason; keep >= 4.5 by default).

Every heuristic is a small pure function returning `(reason, detail)` or None, so each can
be tested and reused alone. Scores land in `meta.scores` ("quality_judge", "ifd"); the
judge's reason in `meta.quality_judge_reason`.
"""

from __future__ import annotations

import argparse
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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
    context_verdict,
    heuristic_verdict,
)


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heuristics: bool = Field(True, description="run the rule-based checks")
    min_output_words: int = Field(
        2, ge=0, description="answers with fewer words are dropped (output_too_short)"
    )
    short_ok_for_classification: bool = Field(
        True, description="classification records (one-word labels) are exempt from min_output_words"
    )
    max_output_words: int = Field(
        2000, ge=1, description="answers with more words are dropped (output_too_long)"
    )
    refusal_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES),
        description="case-insensitive phrases that mark a refusal anywhere in the answer",
    )
    refusal_openers: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_OPENERS),
        description="case-insensitive phrases that mark a refusal when they open the answer",
    )
    refusal_window_chars: int = Field(120, ge=0, description="how far into the answer an opener may start")
    repetition_ngram: int = Field(4, ge=1, description="word n-gram size for the repetition check")
    max_repeated_ngram_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="drop when this share of the answer's n-grams are repeats"
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
            verdict = heuristic_verdict(rec, config) or context_verdict(rec, config)
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
            "runs heuristics (and IFD) only, with no LLM calls."
        ),
        flag_aliases={"min_judge_score": ["--min-score"], "min_output_words": ["--min-words"],
                      "max_output_words": ["--max-words"]},
        add_flags=_no_judge_flag,
    ),
    uses=frozenset({"answer_finish_reason", "is_classification", "scores"}),
    writes=frozenset({"scores", "quality_judge_reason"}),
))
