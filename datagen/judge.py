"""LLM-as-judge: a rubric score for (instruction, answer) pairs, shared by every stage that ranks.

The one judge of the project: distill ranks candidates with it, the quality filter scores
records with it (its own rubric file, its own declared scale), eval judges pairs with it.
A score is always on the scale the caller declares (`low`..`high`), which the config
states and the report shows, so a `min_score` always means "on this judge's scale".

Why a module of its own: best-of-n distillation and the quality filter both need "how good is
this answer", and both need the same defences against messy judges: structured output where
the backend can enforce a JSON schema, lenient parsing where it cannot, and one follow-up
turn ("just the number, please") when a reply still has no readable score. Unscorable
pairs come back with `score=None` instead of a guess, so callers can count and drop them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from datagen.llm import ChatRequest, Completion, generate_sync
from datagen.parsing import extract_json, parse_score
from datagen.prompts import render

DEFAULT_LOW = 1
DEFAULT_HIGH = 10
_REASON_KEYS = ("reason", "reasoning", "explanation", "rationale", "justification")
# "Reason: ...", "**Explanation**: ..." in a prose reply.
_REASON_LINE = re.compile(r"(?:reason|explanation|rationale|justification)\W{0,3}\s*[:=-]\s*(.+)", re.I | re.S)


# The tags our judge prompts put around material to grade. Inside a candidate a look-alike
# would end the block early and let the rest read as the grader's instructions, so it is
# defused (its "<" becomes "&lt;") before rendering; a judge reply's quotes of them are cut.
FENCE_TAGS = ("request", "answer", "answer_a", "answer_b", "reference", "instruction", "input", "response")
_FENCE = re.compile(r"<(\s*/?\s*(?:" + "|".join(FENCE_TAGS) + r")\b[^>]*>)", re.I)
_QUOTED_BLOCK = re.compile(r"<(" + "|".join(FENCE_TAGS) + r")>.*?</\1>", re.I | re.S)


def fence(text: str) -> str:
    """`text` made safe to put between our tags: no tag inside it can close (or open) a block."""
    return _FENCE.sub(r"&lt;\1", text.strip())


def own_words(raw: str) -> str:
    """The judge's reply without any block it quoted back from the prompt: a score or verdict
    written inside a quoted answer is the candidate's, not the judge's."""
    return _QUOTED_BLOCK.sub(" ", raw)


@dataclass
class JudgeResult:
    """`score` is None when the judge failed (see `error`) or never gave a readable score."""

    score: float | None
    reason: str
    raw: str
    retried: bool = False
    error: str | None = None


def judge_schema(low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH, whole_numbers: bool = True) -> dict[str, Any]:
    """OpenAI-style `response_format`. The reason comes first so the model argues before it scores.
    `whole_numbers=False` lets a rubric with half points (4.5 of 5) say so."""
    score: dict[str, Any] = {"type": "integer", "minimum": int(low), "maximum": int(high)}
    if not whole_numbers:
        score = {"type": "number"}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "judgement",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"reason": {"type": "string"}, "score": score},
                "required": ["reason", "score"],
                "additionalProperties": False,
            },
        },
    }


def parse_judgement(
    raw: str, low: float = DEFAULT_LOW, high: float = DEFAULT_HIGH
) -> tuple[float | None, str]:
    """(score, reason) from a judge reply: JSON if there is any, a "Reason: ..." line, else the
    whole reply; the score by the lenient parser (rescaled when the judge used another scale)."""
    raw = own_words(raw)
    score = parse_score(raw, low, high)
    data = extract_json(raw)
    reason = ""
    if isinstance(data, dict):
        for key, value in data.items():
            if str(key).lower() in _REASON_KEYS and isinstance(value, str) and value.strip():
                reason = value
                break
    if not reason:
        match = _REASON_LINE.search(raw)
        reason = match.group(1) if match else raw
    return score, " ".join(reason.split())[:1000]


def score_answers(
    llm: Any,
    items: Sequence[tuple[str, str]],
    ctx: Any = None,
    *,
    low: float = DEFAULT_LOW,
    high: float = DEFAULT_HIGH,
    prompt: str = "judge_rubric",
    retry_prompt: str = "judge_retry",
    temperature: float = 0.0,
    max_tokens: int = 256,
    retry: bool = True,
    structured: bool | None = None,
    desc: str | None = None,
    inputs: Sequence[str] | None = None,
    seed: int | None = None,
    whole_numbers: bool = True,
) -> list[JudgeResult]:
    """Score each (instruction, answer) pair; results in input order.

    `llm` is any backend (`ctx.llm(spec)`); `ctx` (a StageContext, optional) supplies the
    prompts folder and the progress bar. `structured=None` asks for a JSON schema exactly
    when the backend says it can enforce one. A blank answer is scored `low` without a call.
    Identical pairs cost one call (the backend cache deduplicates them). `inputs` (one per
    item) reach the prompt as `input` for rubrics that show a record's input apart.
    """
    prompts_dir = getattr(ctx, "prompts_dir", None)
    use_schema = getattr(llm, "supports_json_schema", False) if structured is None else structured
    response_format = judge_schema(low, high, whole_numbers) if use_schema else None
    results: list[JudgeResult | None] = [None] * len(items)
    prompts: dict[int, str] = {}
    for i, (instruction, answer) in enumerate(items):
        if not answer.strip():
            results[i] = JudgeResult(score=float(low), reason="empty answer", raw="")
            continue
        prompts[i] = render(
            prompts_dir=prompts_dir,
            name=prompt,
            instruction=fence(instruction),
            input=fence(inputs[i] if inputs is not None else ""),
            answer=fence(answer),
            output=fence(answer),  # the name older rubric overrides use
            low=_fmt(low),
            high=_fmt(high),
        )
    order = list(prompts)
    requests = [
        ChatRequest.chat(
            prompts[i], temperature=temperature, max_tokens=max_tokens, response_format=response_format, seed=seed
        )
        for i in order
    ]
    completions = _run(llm, requests, ctx, desc or "judge")
    unparsed: list[int] = []
    for i, completion in zip(order, completions, strict=True):
        if completion.error:
            results[i] = JudgeResult(
                score=None, reason="judge request failed", raw="", error=completion.error
            )
            continue
        score, reason = parse_judgement(completion.text, low, high)
        results[i] = JudgeResult(score=score, reason=reason, raw=completion.text)
        if score is None:
            unparsed.append(i)
    if retry and unparsed:
        retry_text = render(prompts_dir=prompts_dir, name=retry_prompt, low=_fmt(low), high=_fmt(high))
        retry_requests = []
        for i in unparsed:
            first = results[i].raw  # type: ignore[union-attr]
            if first.strip():
                messages = [
                    {"role": "user", "content": prompts[i]},
                    {"role": "assistant", "content": first},
                    {"role": "user", "content": retry_text},
                ]
            else:  # an empty assistant turn is rejected by some servers
                messages = [{"role": "user", "content": f"{prompts[i]}\n\n{retry_text}"}]
            retry_requests.append(ChatRequest.chat(messages, temperature=0.0, max_tokens=16))
        for i, completion in zip(
            unparsed, _run(llm, retry_requests, ctx, (desc or "judge") + " retry"), strict=True
        ):
            first = results[i]
            assert first is not None
            score = None if completion.error else parse_score(own_words(completion.text), low, high)
            results[i] = JudgeResult(
                score=score,
                reason=first.reason if score is not None else "no readable score",
                raw=first.raw + ("\n[retry] " + completion.text if completion.text else ""),
                retried=True,
                error=completion.error,
            )
    return [r for r in results if r is not None]


def judge_stats(results: Sequence[JudgeResult], prefix: str = "judge_") -> dict[str, int]:
    """Counters for `StageResult.stats`: how often the judge needed the retry and still failed."""
    return {
        f"{prefix}scored": sum(r.score is not None for r in results),
        f"{prefix}retried": sum(r.retried for r in results),
        f"{prefix}retry_recovered": sum(r.retried and r.score is not None for r in results),
        f"{prefix}unparsed": sum(r.score is None and r.error is None for r in results),
        f"{prefix}errors": sum(r.error is not None for r in results),
    }


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _run(llm: Any, requests: list[ChatRequest], ctx: Any, desc: str) -> list[Completion]:
    if not requests:
        return []
    if ctx is None or not hasattr(ctx, "bar"):
        return generate_sync(llm, requests)
    with ctx.bar(len(requests), desc, unit="req") as bar:
        return generate_sync(llm, requests, lambda i, c: bar.update(1))


# ---------------------------------------------------------------------------------------------
# pairwise: which of two answers is better, asked in both orders

Winner = str  # "A", "B" or "tie"
_WINNER_WORD = re.compile(r"\b(?:winner|better(?:\s+answer)?|verdict|choice)\b\W{0,6}(?:is\s+)?(?:answer\s+)?((?-i:A|B)|tie)\b", re.I)
_BRACKETED = re.compile(r"\[\[\s*(A|B|tie|C)\s*\]\]", re.I)  # MT-Bench's "[[A]]"
_LONE = re.compile(r"^\W*(?:answer\s+)?(A|B|tie)\W*$", re.I)


def pairwise_schema() -> dict[str, Any]:
    """`response_format` for the pairwise judge; reason first so the judge argues before it picks."""
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "pairwise_judgement",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {"reason": {"type": "string"}, "winner": {"type": "string", "enum": ["A", "B", "tie"]}},
                "required": ["reason", "winner"],
                "additionalProperties": False,
            },
        },
    }


def parse_winner(raw: str) -> Winner | None:
    """"A", "B" or "tie" from a pairwise judge reply (JSON, "[[A]]", "Winner: B", a lone "A"), else None."""
    raw = own_words(raw)
    data = extract_json(raw)
    if isinstance(data, dict):
        for key in ("winner", "verdict", "better", "choice"):
            value = data.get(key)
            if isinstance(value, str):
                return _normalise_winner(value)
    for pattern in (_BRACKETED, _WINNER_WORD, _LONE):
        match = pattern.search(raw.strip())
        if match:
            return _normalise_winner(match.group(1))
    return None


def _normalise_winner(value: str) -> Winner | None:
    value = value.strip().strip("\"'[]. ").casefold()
    if value in {"a", "answer a"}:
        return "A"
    if value in {"b", "answer b"}:
        return "B"
    if value in {"tie", "c", "both", "neither", "equal"}:
        return "tie"
    return None


@dataclass
class PairVerdict:
    """The outcome for the FIRST answer of a pair, from both orders.

    `preference` is 1 (first better), 0 (second better) or 0.5 (a tie: the judge said so in
    both orders, or its two verdicts disagree, i.e. it followed the position, not the
    answers). None when either order gave no readable verdict."""

    preference: float | None
    forward: Winner | None  # first answer shown as A
    backward: Winner | None  # first answer shown as B
    consistent: bool
    reason: str = ""
    error: str | None = None


def combine_orders(forward: Winner | None, backward: Winner | None) -> tuple[float | None, bool]:
    """(preference for the first answer, order-consistent?) from the two verdicts.

    `forward` judged (first, second) as (A, B); `backward` judged (second, first) as (A, B)."""
    if forward is None or backward is None:
        return None, False
    as_first = {"A": 1.0, "B": 0.0, "tie": 0.5}[forward]
    as_second = {"A": 0.0, "B": 1.0, "tie": 0.5}[backward]
    if as_first == as_second:
        return as_first, True
    return 0.5, False


def compare_answers(
    llm: Any,
    items: Sequence[tuple[str, str, str, str | None]],
    ctx: Any = None,
    *,
    prompt: str = "judge_pairwise",
    temperature: float = 0.0,
    max_tokens: int = 256,
    structured: bool | None = None,
    desc: str | None = None,
) -> list[PairVerdict]:
    """Judge each (instruction, first, second, reference or None) in both orders; results in input order.

    Position bias is the best-documented judge bias, so every pair is asked twice with the
    answers swapped and only a verdict that survives the swap counts as a win. A blank answer
    loses to a non-blank one without a call (two blanks tie). Requests go through `llm` (a
    cached backend), so a rerun costs nothing.
    """
    prompts_dir = getattr(ctx, "prompts_dir", None)
    use_schema = getattr(llm, "supports_json_schema", False) if structured is None else structured
    response_format = pairwise_schema() if use_schema else None
    verdicts: list[PairVerdict | None] = [None] * len(items)
    order: list[int] = []
    requests: list[ChatRequest] = []
    for i, (instruction, first, second, reference) in enumerate(items):
        if not first.strip() or not second.strip():
            preference = 0.5 if not first.strip() and not second.strip() else float(bool(first.strip()))
            verdicts[i] = PairVerdict(preference, None, None, True, reason="blank answer")
            continue
        order.append(i)
        for a, b in ((first, second), (second, first)):
            text = render(
                prompts_dir=prompts_dir,
                name=prompt,
                instruction=fence(instruction),
                answer_a=fence(a),
                answer_b=fence(b),
                reference=fence(reference or ""),
            )
            requests.append(
                ChatRequest.chat(text, temperature=temperature, max_tokens=max_tokens, response_format=response_format)
            )
    completions = _run(llm, requests, ctx, desc or "pairwise judge")
    for k, i in enumerate(order):
        fwd, bwd = completions[2 * k], completions[2 * k + 1]
        error = fwd.error or bwd.error
        forward = None if fwd.error else parse_winner(fwd.text)
        backward = None if bwd.error else parse_winner(bwd.text)
        preference, consistent = combine_orders(forward, backward)
        reason = "" if error else parse_judgement(fwd.text)[1]
        verdicts[i] = PairVerdict(preference, forward, backward, consistent, reason=reason[:300], error=error)
    return [v for v in verdicts if v is not None]
