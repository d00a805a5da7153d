"""Distillation with best-of-n: a teacher answers each instruction n times and the best answer wins.

Candidates come from one request per record with `n=K` (native on vLLM/OpenAI, fanned out by
the client where a server ignores `n`, `num_return_sequences` on the local backend), all
records at once. They are ranked by one of:

* `judge`: an LLM scores every candidate on the rubric in `prompts/judge_rubric.txt`
  (`datagen.judge`: JSON schema where the backend enforces one, lenient parsing and one retry
  otherwise). Scores are on the judge's 1-10 scale.
* `reward` (also spelled `reward_model`) with `reward_model: PATH`: any local
  `AutoModelForSequenceClassification` folder; the score is the
  first logit of the conversation plus answer, rendered with the reward model's own chat
  template when it has one, else as a (prompt, answer) text pair. Scores are raw logits.
* `none`: no scoring; the first complete candidate wins.

Choosing the winner (deterministic, see `best_candidate`): blank candidates never win; with
`prefer_complete` (default) a candidate that finished beats one cut off at max_tokens
whatever their scores; then the higher score; then the earlier candidate. Every candidate
with its score and finish reason is kept in `meta.candidates`, the winner's score in
`meta.scores["judge"|"reward"]` and its position in `meta.best_candidate`.

Drop reasons: `llm_error` (teacher request failed), `empty_instruction`, `no_valid_candidate`
(every candidate blank), `unscored` (the ranker could not score any candidate),
`below_min_score` (the winner scored under `min_score`).

The teacher sees the record's conversation up to its last user turn (multi-turn context is
kept); the optional `system_prompt` steers the teacher only and is not written into the
record, and the judge or reward model scores the answer against the record's own context.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from datagen.errors import failure_reason
from datagen.llm import ChatRequest, generate_sync
from datagen.plan import Calls, Records, StagePlan, finish, judge_calls, merge_same_spec, template_tokens
from datagen.records import Message, Record, StageResult, dropped
from datagen.registry import Command, Stage, register

SCORE_KEYS = {"judge": "judge", "reward_model": "reward"}


class DistillConfig(BaseModel):
    """Best-of-n distillation settings."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(4, ge=1, description="candidate answers per instruction")
    temperature: float = Field(
        0.8, ge=0, description="teacher sampling temperature (n>1 needs > 0 to differ)"
    )
    top_p: float = Field(0.95, gt=0, le=1, description="teacher nucleus sampling")
    max_tokens: int = Field(1024, ge=1, description="teacher token limit per candidate")
    ranker: Literal["judge", "reward", "reward_model", "none"] = Field(
        "judge",
        description="how candidates are scored: LLM judge, local reward model (reward; reward_model is "
        "the same), or not at all (reward when only reward_model is given)",
    )
    judge: str | None = Field(None, description="backend spec of the judge (default: the teacher's)")
    judge_max_tokens: int = Field(256, ge=1, description="token limit of a judge reply")
    judge_scale: tuple[int, int] = Field(
        (1, 10), description="the judge's whole-number scale (low, high); min_score is on it for the judge"
    )
    reward_model: str | None = Field(
        None, description="local folder of an AutoModelForSequenceClassification"
    )
    reward_batch_size: int = Field(8, ge=1, description="reward model batch size")
    reward_max_length: int = Field(
        2048, ge=16, description="tokens of conversation+answer the reward model sees"
    )
    reward_device: str | None = Field(
        None, description="torch device for the reward model (default: cuda if present)"
    )
    min_score: float | None = Field(
        None, description="drop the record when its best score is below this (judge: on judge_scale; reward: logit)"
    )
    prefer_complete: bool = Field(
        True, description="a complete candidate always beats one truncated at max_tokens, whatever the scores"
    )
    include_existing: bool = Field(
        False, description="let the record's current output (e.g. from evolve) compete as one more candidate"
    )
    on_unscored: Literal["drop", "keep"] = Field(
        "drop",
        description="when the ranker scores no candidate: drop the record (reason 'unscored') or keep the "
        "first complete candidate, marked meta.unscored (for weak local judges)",
    )
    system_prompt: str | None = Field(None, description="system message for the teacher only (not stored)")
    llm: str | None = Field(None, description="teacher backend spec (default: the pipeline's)")

    @model_validator(mode="before")
    @classmethod
    def _reward_model_implies_its_ranker(cls, data: Any) -> Any:
        # `reward` (the documented spelling) is stored as `reward_model`, the first spelling, so the
        # stage hash of run dirs made with either is the same and neither re-runs a finished stage.
        if isinstance(data, dict) and data.get("ranker") == "reward":
            return {**data, "ranker": "reward_model"}
        if isinstance(data, dict) and data.get("reward_model") and "ranker" not in data:
            return {**data, "ranker": "reward_model"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> DistillConfig:
        if self.ranker == "reward_model" and not self.reward_model:
            raise ValueError("ranker 'reward' needs reward_model: a local model folder")
        if self.ranker == "none" and self.min_score is not None:
            raise ValueError("min_score needs a ranker (judge or reward), not 'none'")
        return self


def record_context(record: Record) -> list[dict[str, str]]:
    """The conversation the answer continues: everything up to the last user turn."""
    if record.messages:
        msgs = [m.model_dump() for m in record.messages]
        last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=-1)
        if last_user >= 0:
            return msgs[: last_user + 1]
    return [{"role": "user", "content": record.prompt_text()}]


def existing_answer(record: Record) -> str:
    """The answer the teacher's would replace: a dialogue's reply to its last user turn (its
    `output` is the first turn's), else the record's output."""
    if record.messages and sum(m.role == "user" for m in record.messages) > 1:
        last_user = max(i for i, m in enumerate(record.messages) if m.role == "user")
        return next((m.content for m in record.messages[last_user + 1:] if m.role == "assistant"), "")
    return record.output


def conversation_text(context: Sequence[dict[str, str]]) -> str:
    """The context as one string for a judge prompt or a plain-text reward model."""
    turns = [m for m in context if m["role"] != "system"]
    if len(turns) == 1 and len(context) == 1:
        return turns[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in context)


def best_candidate(
    candidates: Sequence[dict[str, Any]], use_scores: bool, prefer_complete: bool = True
) -> int | None:
    """Index of the winner, or None when no candidate can win.

    Eligible: non-blank text and, when `use_scores`, a score. Order: complete before truncated
    (finish_reason "length") when `prefer_complete`; higher score; complete before truncated
    (the tie-break when not `prefer_complete`); lower index. Fully deterministic.
    """
    best_key: tuple | None = None
    best: int | None = None
    for i, cand in enumerate(candidates):
        if not str(cand.get("text", "")).strip():
            continue
        score = cand.get("score")
        if use_scores and score is None:
            continue
        complete = cand.get("finish_reason") != "length"
        value = float(score) if use_scores else 0.0
        key = (complete, value, -i) if prefer_complete else (value, complete, -i)
        if best_key is None or key > best_key:
            best_key, best = key, i
    return best


def run(records: list[Record], ctx: Any, config: DistillConfig) -> StageResult:
    teacher = ctx.llm(config.llm)
    stats: dict[str, Any] = {"input_records": len(records), "ranker": config.ranker, "n": config.n}
    out_dropped: list[Record] = []
    todo: list[Record] = []
    for record in records:
        if record_context(record)[-1]["content"].strip():
            todo.append(record)
        else:
            out_dropped.append(dropped(record, "empty_instruction"))

    contexts = [record_context(r) for r in todo]
    requests = []
    for record, context in zip(todo, contexts, strict=True):
        messages = list(context)
        if config.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": config.system_prompt})
        requests.append(
            ChatRequest.chat(
                messages,
                n=config.n,
                temperature=config.temperature,
                top_p=config.top_p,
                max_tokens=config.max_tokens,
                seed=ctx.rng(f"distill:{record.id}").randrange(2**31),
            )
        )
    stats["requests"] = len(requests)
    with ctx.bar(len(requests), "distill: teacher answers", unit="req") as bar:
        completions = generate_sync(teacher, requests, lambda i, c: bar.update(1))

    # Candidates per record; failed requests are settled right away.
    pending: list[tuple[Record, list[dict[str, str]], list[dict[str, Any]]]] = []
    for record, context, completion in zip(todo, contexts, completions, strict=True):
        if completion.error:  # blank candidates are judged below (no_valid_candidate)
            out_dropped.append(dropped(record, failure_reason(completion) or "llm_error", step="teacher",
                                       error=completion.error))
            continue
        candidates: list[dict[str, Any]] = [
            {"text": text, "score": None, "finish_reason": reason}
            for text, reason in zip(
                completion.texts, completion.finish_reasons + ["stop"] * len(completion.texts), strict=False
            )
        ]
        existing = existing_answer(record)
        if config.include_existing and existing.strip():
            candidates.append({"text": existing, "score": None, "finish_reason": "existing"})
        pending.append((record, context, candidates))

    valid = [(r, ctx_msgs, cand) for r, ctx_msgs, cands in pending for cand in cands if cand["text"].strip()]
    stats["candidates"] = sum(len(c) for _, _, c in pending)
    stats["valid_candidates"] = len(valid)
    stats["truncated_candidates"] = sum(c["finish_reason"] == "length" for _, _, cs in pending for c in cs)
    if config.ranker == "judge" and valid:
        from datagen.judge import judge_stats, score_answers

        judge_llm = ctx.llm(config.judge or config.llm)
        results = score_answers(
            judge_llm,
            [(conversation_text(c), cand["text"]) for _, c, cand in valid],
            ctx,
            low=config.judge_scale[0],
            high=config.judge_scale[1],
            max_tokens=config.judge_max_tokens,
            desc="distill: judge",
        )
        for (_, _, cand), result in zip(valid, results, strict=True):
            cand["score"] = result.score
            cand["reason"] = result.reason
        stats.update(judge_stats(results))
        stats["judge_requests"] = len(results)
        stats["judge_scale"] = list(config.judge_scale)
    elif config.ranker == "reward_model" and valid:
        scores = reward_scores(
            config.reward_model or "",
            [(c, cand["text"]) for _, c, cand in valid],
            batch_size=config.reward_batch_size,
            max_length=config.reward_max_length,
            device=config.reward_device,
            ctx=ctx,
        )
        for (_, _, cand), score in zip(valid, scores, strict=True):
            cand["score"] = score

    ranked_by = None
    if config.ranker == "judge":
        ranked_by = f"judge:{ctx.llm(config.judge or config.llm).name}"
    elif config.ranker == "reward_model":
        ranked_by = f"reward_model:{config.reward_model}"
    kept: list[Record] = []
    use_scores = config.ranker != "none"
    score_key = SCORE_KEYS.get(config.ranker)
    best_scores: list[float] = []
    for record, context, candidates in pending:
        out = record.model_copy(deep=True)
        out.meta.candidates = candidates
        out.meta.model = teacher.name
        out.meta.ranked_by = ranked_by
        if existing_answer(record).strip() and not config.include_existing:
            out.meta.previous_output = existing_answer(record)
        if not any(c["text"].strip() for c in candidates):
            out_dropped.append(dropped(out, "no_valid_candidate", candidates=len(candidates)))
            continue
        best = best_candidate(candidates, use_scores, config.prefer_complete)
        unscored = best is None
        if unscored and config.on_unscored == "keep":
            # The judge failed on every candidate: fall back to the unranked choice, marked.
            best = best_candidate(candidates, False, config.prefer_complete)
            out.meta.unscored = True
        if best is None:
            out_dropped.append(dropped(out, "unscored", ranker=config.ranker))
            continue
        winner = candidates[best]
        out.meta.best_candidate = best
        if score_key is not None and not unscored:
            out.meta.scores[score_key] = float(winner["score"])
            best_scores.append(float(winner["score"]))
        out.output = winner["text"]  # also on a drop: shows what fell short
        out.meta.answer_finish_reason = winner["finish_reason"]
        if config.min_score is not None and not unscored and float(winner["score"]) < config.min_score:
            out_dropped.append(
                dropped(out, "below_min_score", score=winner["score"], min_score=config.min_score)
            )
            continue
        if record.messages:
            out.messages = [Message(**m) for m in context] + [
                Message(role="assistant", content=winner["text"])
            ]
            # A dialogue's `output` stays its first turn's answer (the teacher rewrote the last).
            out.output = next(m.content for m in out.messages if m.role == "assistant")
        kept.append(out)
    stats["winner_truncated"] = sum(r.meta.answer_finish_reason == "length" for r in kept)
    if best_scores:
        stats["mean_best_score"] = sum(best_scores) / len(best_scores)
    return StageResult(kept=kept, dropped=out_dropped, stats=stats)


def reward_scores(
    path: str,
    pairs: Sequence[tuple[Sequence[dict[str, str]], str]],
    batch_size: int = 8,
    max_length: int = 2048,
    device: str | None = None,
    ctx: Any = None,
) -> list[float]:
    """First logit of a sequence-classification model for each (context, answer); input order.

    Texts are rendered with the model's chat template when its tokenizer has one (what chat
    reward models are trained on), else encoded as a (prompt, answer) pair, the format of
    classic cross-encoder reward models. Batches are formed from similar lengths.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    use_template = bool(getattr(tokenizer, "chat_template", None))
    if use_template:
        # The answer's end matters most to the score: when too long, cut from the front.
        tokenizer.truncation_side = "left"
        texts = [
            tokenizer.apply_chat_template(
                [*context, {"role": "assistant", "content": answer}], tokenize=False
            )
            for context, answer in pairs
        ]
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    else:
        prompts = [conversation_text(context) for context, _ in pairs]
        answers = [answer for _, answer in pairs]
        order = sorted(range(len(pairs)), key=lambda i: len(prompts[i]) + len(answers[i]))
    scores: list[float] = [0.0] * len(pairs)
    bar = ctx.bar(len(pairs), "distill: reward model", unit="answer") if ctx is not None else None
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if use_template:
                enc = tokenizer(
                    [texts[i] for i in batch],
                    add_special_tokens=False,
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
            else:
                enc = tokenizer(
                    [prompts[i] for i in batch],
                    [answers[i] for i in batch],
                    padding=True,
                    truncation="longest_first",
                    max_length=max_length,
                    return_tensors="pt",
                )
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.inference_mode():
                logits = model(**enc).logits
            for i, value in zip(batch, logits[:, 0].float().tolist(), strict=True):
                scores[i] = float(value)
            if bar is not None:
                bar.update(len(batch))
    finally:
        if bar is not None:
            bar.close()
    return scores


# ---------------------------------------------------------------------------------------- CLI


def plan(flow: Records, config: DistillConfig, default_llm: str, prompts_dir: str | None) -> StagePlan:
    """Upper bound: one n-sample teacher request per record, a judge call (and retry) per candidate."""
    teacher = Calls(config.llm or default_llm)
    teacher.add(flow.count, flow.instruction_tokens + 8, config.n * config.max_tokens)
    plans = [teacher]
    if config.ranker == "judge":
        judge = Calls(config.judge or config.llm or default_llm)
        candidates = flow.count * (config.n + (1 if config.include_existing else 0))
        judge_calls(judge, candidates, flow.instruction_tokens, config.max_tokens, config.judge_max_tokens,
                    template_tokens("judge_rubric", prompts_dir), template_tokens("judge_retry", prompts_dir))
        plans.append(judge)
    out = Records(flow.count, flow.instruction_tokens, max(flow.output_tokens, config.max_tokens))
    return finish(StagePlan("", flow.count, flow.count, merge_same_spec(plans)), out)


STAGE = register(Stage(
    name="distill",
    config=DistillConfig,
    run=run,
    plan=plan,
    position=30,
    help="a teacher answers each instruction n times; the best answer (judge or reward model) is kept",
    command=Command(
        verb="distill",
        description=(
            "Best-of-n distillation: --llm answers every instruction --n times; candidates are ranked by an LLM\n"
            "judge (--judge, default the teacher) or a local reward model (--reward-model). All candidates and\n"
            "scores stay in meta. Works on any instruction file (records, Alpaca, ShareGPT, messages)."
        ),
    ),
    writes=frozenset({"candidates", "best_candidate", "scores", "model", "previous_output", "unscored", "ranked_by",
                      "answer_finish_reason"}),
))
