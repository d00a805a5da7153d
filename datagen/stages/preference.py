"""Preference pairs from best-of-n: each scored candidate set becomes (chosen, rejected) pairs for DPO.

`distill` already answers every instruction n times and scores each answer (judge or reward
model), then keeps only the winner for SFT. This stage turns the same candidates, kept in
`meta.candidates`, into UltraFeedback-style binarized pairs:

* `best_vs_worst` (default): the best-scored answer against the worst, one pair per prompt.
* `best_vs_random_lower`: the best against a random answer scored at least `min_margin` lower
  (Zephyr/UltraFeedback binarization: avoids always training against the weakest answer).
* `all_over_margin`: every ordered pair whose scores differ by at least `min_margin`, one
  record each (ids `ID#p1`, `ID#p2`, ...), at most `max_pairs_per_prompt`.

A pair needs two distinct, non-blank, scored answers whose scores differ by more than zero
and by at least `min_margin`; a cut-off answer (finish reason `length`) is never chosen. What
cannot pair is a counted drop: `no_candidates`, `too_few_scored` (under two scored, non-blank
answers), `only_truncated` (no answer that may be chosen), `all_tied`, `below_min_margin`,
`identical_answers`. With `confirm: pairwise` each pair is also asked of a
pairwise judge in both orders (`datagen.judge.compare_answers`): a verdict that flips with the
order (`order_dependent`), a consistent preference for the rejected answer
(`judge_disagrees`), a tie (`judge_tie`) or an unreadable verdict (`judge_unreadable`) drops it.

The record written: `output` is the chosen answer (so the SFT exports on the same run train
on the chosen side), `meta.chosen` / `meta.rejected` the two texts, `meta.chosen_score` /
`meta.rejected_score`, `meta.ranked_by` (which judge or reward model gave the scores) and
`meta.preference_reason` (the judge's rationale for the chosen answer, and the pairwise
judge's when confirmed). The prompt is the record's conversation up to its last user turn.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from datagen.plan import Calls, Records, StagePlan, finish, merge_same_spec, template_tokens
from datagen.records import Message, Record, StageResult, dropped
from datagen.registry import Command, Stage, register
from datagen.stages.distill import conversation_text, record_context


class PreferenceConfig(BaseModel):
    """How scored candidates become (chosen, rejected) pairs."""

    model_config = ConfigDict(extra="forbid")

    pairing: Literal["best_vs_worst", "best_vs_random_lower", "all_over_margin"] = Field(
        "best_vs_worst", description="which candidates form pairs (see the stage's docstring)"
    )
    min_margin: float = Field(
        0.0, ge=0, description="chosen score minus rejected score must be at least this (and always above 0)"
    )
    max_pairs_per_prompt: int = Field(4, ge=1, description="all_over_margin: at most this many pairs per prompt")
    allow_truncated_chosen: bool = Field(
        False, description="let an answer cut off at max_tokens be the chosen one (never by default)"
    )
    score: Literal["ranker", "quality_rules"] = Field(
        "ranker", description="ranker: the scores distill's judge or reward model gave; quality_rules: 1 for a "
        "candidate that passes every rule of the quality filter (complete, not repetitive, no refusal, not "
        "written at the grader, ...), 0 for one that fails: pairs without a judge (e.g. a tiny local model's)"
    )
    confirm: Literal["none", "pairwise"] = Field(
        "none", description="pairwise: confirm each pair with a judge asked in both orders; an order-dependent "
        "verdict drops the pair"
    )
    judge: str | None = Field(None, description="backend spec of the pairwise judge (default: the pipeline's)")
    judge_max_tokens: int = Field(256, ge=1, description="token limit of a pairwise judge reply")


def scored_candidates(candidates: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(index, candidate) for every non-blank candidate with a score, best first (ties: earlier first)."""
    usable = [
        (i, c) for i, c in enumerate(candidates)
        if str(c.get("text", "")).strip() and c.get("score") is not None
    ]
    return sorted(usable, key=lambda ic: (-float(ic[1]["score"]), ic[0]))


def form_pairs(
    candidates: list[dict[str, Any]], config: PreferenceConfig, rng: Any
) -> tuple[list[tuple[int, int]], str | None]:
    """(chosen index, rejected index) pairs, or no pairs and the drop reason."""
    ranked = scored_candidates(candidates)
    if len(ranked) < 2:
        return [], "too_few_scored"
    may_choose = [
        (i, c) for i, c in ranked if config.allow_truncated_chosen or c.get("finish_reason") != "length"
    ]

    def score(i: int) -> float:
        return float(candidates[i]["score"])

    def text(i: int) -> str:
        return str(candidates[i]["text"]).strip()

    margin = max(config.min_margin, 0.0)
    # Every ordered pair with a real difference, best chosen first; the reason when there is none.
    options = [(c, r) for c, _ in may_choose for r, _ in ranked if score(c) > score(r)]
    if not options:
        return [], "all_tied" if may_choose else "only_truncated"
    wide = [(c, r) for c, r in options if score(c) - score(r) >= margin]
    if not wide:
        return [], "below_min_margin"
    distinct = [(c, r) for c, r in wide if text(c) != text(r)]
    if not distinct:
        return [], "identical_answers"
    if config.pairing == "all_over_margin":
        return distinct[: config.max_pairs_per_prompt], None
    best = distinct[0][0]  # the highest-scored answer that can be chosen and has a partner
    lower = [r for c, r in distinct if c == best]
    if config.pairing == "best_vs_worst":
        worst = min(lower, key=lambda r: (score(r), -r))
        return [(best, worst)], None
    return [(best, rng.choice(lower))], None


def run(records: list[Record], ctx: Any, config: PreferenceConfig) -> StageResult:
    stats: dict[str, Any] = {"input_records": len(records), "pairing": config.pairing}
    out_dropped: list[Record] = []
    # record, its context, pair number, chosen candidate, rejected candidate
    planned: list[tuple[Record, list[dict[str, str]], int, dict[str, Any], dict[str, Any]]] = []
    for record in records:
        candidates = record.meta.candidates or []
        if not candidates:
            out_dropped.append(dropped(record, "no_candidates"))
            continue
        if config.score == "quality_rules":
            candidates = rule_scores(record, candidates)
        pairs, reason = form_pairs(candidates, config, ctx.rng(f"preference:{record.id}"))
        if reason:
            out_dropped.append(dropped(record, reason, candidates=len(candidates)))
            continue
        context = record_context(record)
        for k, (chosen, rejected) in enumerate(pairs):
            planned.append((record, context, k, candidates[chosen], candidates[rejected]))
    stats["pairs_formed"] = len(planned)

    verdicts: list[Any] = [None] * len(planned)
    if config.confirm == "pairwise" and planned:
        from datagen.judge import compare_answers

        judge = ctx.llm(config.judge)
        items = [(conversation_text(context), c["text"], j["text"], None) for _, context, _, c, j in planned]
        verdicts = compare_answers(judge, items, ctx, max_tokens=config.judge_max_tokens,
                                   desc="preference: pairwise check")
        stats["pairwise_judge"] = judge.name

    kept: list[Record] = []
    margins: list[float] = []
    for (record, context, k, chosen, rejected), verdict in zip(planned, verdicts, strict=True):
        out = record.model_copy(deep=True)
        if config.score == "quality_rules":
            out.meta.ranked_by = "quality_rules"
        if config.pairing == "all_over_margin":
            out.id = f"{record.id}#p{k + 1}"
        out.output = chosen["text"]
        out.meta.chosen, out.meta.rejected = chosen["text"], rejected["text"]
        out.meta.chosen_score, out.meta.rejected_score = float(chosen["score"]), float(rejected["score"])
        out.meta.answer_finish_reason = chosen.get("finish_reason")
        reasons = [str(chosen.get("reason") or "")]
        if verdict is not None:
            reasons.append(f"pairwise: {verdict.reason}")
            reason = _verdict_drop(verdict)
            if reason:
                out_dropped.append(dropped(out, reason, forward=verdict.forward, backward=verdict.backward,
                                           error=verdict.error))
                continue
        out.meta.preference_reason = " | ".join(r for r in reasons if r) or None
        if record.messages:
            out.messages = [Message(**m) for m in context] + [Message(role="assistant", content=chosen["text"])]
        margins.append(out.meta.chosen_score - out.meta.rejected_score)
        kept.append(out)
    if margins:
        stats["mean_margin"] = round(sum(margins) / len(margins), 4)
    return StageResult(kept=kept, dropped=out_dropped, stats=stats)


def rule_scores(record: Record, candidates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The candidates scored by the quality filter's rules: 1 passes them all, 0 fails one (the
    failed rule is its `reason`). The record's own candidates are left as distill wrote them."""
    from datagen.stages.quality_checks import first_verdict
    from datagen.stages.quality_config import QualityConfig

    rules = QualityConfig()
    scored = []
    for cand in candidates:
        probe = record.model_copy(update={"output": str(cand.get("text", "")), "messages": None}, deep=True)
        probe.meta.answer_finish_reason = cand.get("finish_reason")
        found = first_verdict(probe, rules)
        scored.append({**cand, "score": 0.0 if found else 1.0, "reason": found[0] if found else "passes every rule"})
    return scored


def _verdict_drop(verdict: Any) -> str | None:
    """The drop reason a pairwise verdict gives a (chosen, rejected) pair, or None to keep it."""
    if verdict.error:
        return "judge_error"
    if verdict.preference is None:
        return "judge_unreadable"
    if not verdict.consistent:
        return "order_dependent"
    if verdict.preference == 0.5:
        return "judge_tie"
    return None if verdict.preference == 1.0 else "judge_disagrees"


def plan(flow: Records, config: PreferenceConfig, default_llm: str, prompts_dir: str | None) -> StagePlan:
    """No call without `confirm`; with it, two pairwise requests per pair (at most max_pairs per prompt)."""
    pairs = flow.count * (config.max_pairs_per_prompt if config.pairing == "all_over_margin" else 1)
    plans = []
    if config.confirm == "pairwise":
        judge = Calls(config.judge or default_llm)
        template = template_tokens("judge_pairwise", prompts_dir)
        judge.add(2 * pairs, template + flow.instruction_tokens + 2 * flow.output_tokens, config.judge_max_tokens)
        plans.append(judge)
    out = Records(pairs, flow.instruction_tokens, flow.output_tokens)
    return finish(StagePlan("", flow.count, pairs, merge_same_spec(plans)), out)


STAGE = register(Stage(
    name="preference",
    config=PreferenceConfig,
    run=run,
    plan=plan,
    position=32,
    help="(chosen, rejected) pairs for DPO from distill's scored candidates",
    command=Command(
        verb="preference",
        description=(
            "Preference pairs from best-of-n candidates (meta.candidates, written by `datagen distill`):\n"
            "best vs worst, best vs a random lower one, or every pair over --min-margin; optionally confirmed\n"
            "by a pairwise judge asked in both orders (--confirm pairwise). Export them with --format dpo."
        ),
    ),
    reads=frozenset({"candidates"}),
    writes=frozenset({"chosen", "rejected", "chosen_score", "rejected_score", "preference_reason",
                      "answer_finish_reason", "ranked_by"}),
))
