"""LLM judge: structured output when offered, messy replies, retry-with-fallback, order."""

from __future__ import annotations

import json

import pytest
from scripted_llm import ScriptedLLM, last_user, make_ctx

from datagen.judge import JudgeResult, judge_stats, parse_judgement, score_answers
from datagen.llm import Completion


@pytest.mark.parametrize(
    "reply, score",
    [
        ('{"reason": "complete and correct", "score": 9}', 9.0),
        ('Sure!\n```json\n{"reason": "ok", "score": 6}\n```\nHope that helps.', 6.0),
        ('{"reason": "It has 3 errors", "score": 15}', None),  # out of range: not the stray 3
        ('{"reason": "fine", "score": "7/10"}', 7.0),
        ("Score: 8/10. The answer misses 2 edge cases.", 8.0),
        ("**Rating:** 4", 4.0),
        ("I would give it a 7 because it skips 3 steps.", 7.0),
        ("It deserves an 8.", 8.0),
        ("5 - mostly right, but 2 typos", 5.0),
        ("1. helpful 2. accurate 3. concise", None),  # a numbered list, not a score
        ("The answer is good.", None),
        ("", None),
    ],
)
def test_parse_judgement_messy_replies(reply, score):
    assert parse_judgement(reply, 1, 10)[0] == score


def test_parse_judgement_reason():
    assert parse_judgement('{"reason": "clear", "score": 9}')[1] == "clear"
    assert parse_judgement("Score: 3. Wrong formula.")[1] == "Score: 3. Wrong formula."


def judge_script(req):
    """Scores by keyword in the answer, in a different messy format for each."""
    prompt = last_user(req)
    if "did not contain a grade" in prompt:  # the retry turn follows the rubric and the first reply
        assert len(req.messages) == 3 and "Grade on a scale" in req.messages[0][1]
        return "6" if "second chance" in req.messages[1][1] else "no idea"
    if "EXCELLENT" in prompt:
        return '{"reason": "great", "score": 10}'
    if "DECENT" in prompt:
        return "Rating: 7/10"
    if "MUDDLED" in prompt:
        return "Let me think... second chance needed"
    if "HOPELESS" in prompt:
        return "I cannot grade this."
    if "BROKEN" in prompt:
        return Completion(error="http_500: judge down")
    return "Score: 2"


def test_score_answers_order_retry_and_stats():
    llm = ScriptedLLM(judge_script)
    ctx = make_ctx(llm)
    items = [
        ("q1", "EXCELLENT"),
        ("q2", "DECENT"),
        ("q3", "MUDDLED"),
        ("q4", "HOPELESS"),
        ("q5", "BROKEN"),
        ("q6", "   "),
        ("q7", "plain"),
    ]
    results = score_answers(ctx.llm(), items, ctx)
    assert [r.score for r in results] == [10.0, 7.0, 6.0, None, None, 1.0, 2.0]
    assert [r.retried for r in results] == [False, False, True, True, False, False, False]
    assert results[0].reason == "great"
    assert results[4].error and results[4].error.startswith("http_500")
    assert results[5].reason == "empty answer"
    # 6 first requests (the blank answer costs nothing) + 2 retries.
    assert len(llm.requests) == 8
    retry = [r for r in llm.requests if len(r.messages) == 3]
    assert len(retry) == 2 and retry[0].messages[1][0] == "assistant"
    assert judge_stats(results) == {
        "judge_scored": 5,
        "judge_retried": 2,
        "judge_retry_recovered": 1,
        "judge_unparsed": 1,
        "judge_errors": 1,
    }


def test_no_retry_when_disabled():
    llm = ScriptedLLM(judge_script)
    results = score_answers(llm, [("q", "MUDDLED")], None, retry=False)
    assert results == [
        JudgeResult(
            score=None,
            reason="Let me think... second chance needed",
            raw="Let me think... second chance needed",
        )
    ]
    assert len(llm.requests) == 1


@pytest.mark.parametrize("supports", [True, False])
def test_structured_output_only_where_supported(supports):
    llm = ScriptedLLM(lambda req: '{"reason": "ok", "score": 8}', json_schema=supports)
    ctx = make_ctx(llm)
    (result,) = score_answers(ctx.llm(), [("What is 2+2?", "4")], ctx)
    assert result.score == 8.0
    fmt = llm.requests[0].response_format_dict()
    if supports:
        schema = fmt["json_schema"]["schema"]
        assert fmt["type"] == "json_schema" and schema["required"] == ["reason", "score"]
        assert schema["properties"]["score"]["maximum"] == 10
    else:
        assert fmt is None


def test_scale_and_prompt_content():
    llm = ScriptedLLM(lambda req: "Score: 4")
    (result,) = score_answers(llm, [("Name a colour", "Blue")], None, low=1, high=5)
    prompt = last_user(llm.requests[0])
    assert "Name a colour" in prompt and "Blue" in prompt and "from 1 to 5" in prompt
    assert result.score == 4.0
    assert json.loads(llm.requests[0].canonical())["temperature"] == 0.0
