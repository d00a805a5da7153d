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
from typing import Any, TextIO

from datagen.context import StageContext
from datagen.errors import failure_reason
from datagen.llm.base import Completion
from datagen.plan import Calls, Records, StagePlan, finish, judge_calls, template_tokens
from datagen.records import Record, StageResult
from datagen.registry import Command, Stage, register
from datagen.stages.ifd import ifd_score, load_causal_lm
from datagen.stages.quality_checks import first_verdict
from datagen.stages.quality_config import QualityConfig
from datagen.stages.quality_turns import merge_turns, turn_views

# ---------------------------------------------------------------------------------------------
# LLM judge

def parse_judgement(text: str) -> tuple[float | None, str]:
    """(score in the default 1-5 scale or None, reason): the shared judge's parser."""
    from datagen.judge import parse_judgement as shared

    low, high = QualityConfig.model_fields["judge_scale"].default
    return shared(text, low, high)


# ---------------------------------------------------------------------------------------------
# the stage


def run(dialogues: list[Record], ctx: StageContext, config: QualityConfig) -> StageResult:
    """Heuristics, then IFD (optional), then the judge, on every assistant turn (one view per
    turn, `quality_turns`); kept records stay in input order."""
    records, owners, judge_text = turn_views(dialogues)
    verdicts: dict[int, tuple[str, dict[str, Any]]] = {}
    updated: dict[int, Record] = {}
    stats: dict[str, Any] = {"input": len(dialogues)}

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
        _judge(records, alive(), updated, verdicts, ctx, config, stats, judge_text)

    final = [updated.get(i, rec) for i, rec in enumerate(records)]
    kept, gone = merge_turns(dialogues, final, owners, verdicts, config.on_bad_turn, stats)
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
    judge_text: dict[int, str],
) -> None:
    from datagen.judge import score_answers

    llm = ctx.llm(config.judge)
    structured = bool(getattr(llm, "supports_json_schema", False))
    chosen = [records[i] for i in todo]
    low, high = config.judge_scale
    results = score_answers(
        llm, [(judge_text.get(i, r.instruction), r.output) for i, r in zip(todo, chosen, strict=True)], ctx, low=low, high=high, prompt="quality_judge",
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
    writes=frozenset({"scores", "quality_judge_reason", "conversation_stop"}),
))
