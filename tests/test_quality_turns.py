"""Quality on dialogues: every assistant turn checked; one bad turn drops or truncates."""

from __future__ import annotations

import pytest
from scripted_llm import ScriptedLLM, make_ctx

from datagen.llm import ChatRequest
from datagen.records import Message, Record, RecordMeta
from datagen.stages.quality import run
from datagen.stages.quality_config import QualityConfig

GOOD = ("Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. The light reactions "
        "split water in the thylakoids; the Calvin cycle then fixes carbon in the stroma.")
REFUSAL = "I'm sorry, but as an AI language model I cannot help with that request."


def dialogue(answers: list[str], rid: str = "d") -> Record:
    questions = ["Explain photosynthesis in two sentences.", "Where in the cell does it happen?",
                 "Why do leaves change colour in autumn?"]
    msgs: list[Message] = []
    for q, a in zip(questions, answers, strict=False):
        msgs += [Message(role="user", content=q), Message(role="assistant", content=a)]
    return Record(id=rid, instruction=questions[0], output=answers[0], messages=msgs, meta=RecordMeta(source="t"))


def roles(record: Record) -> list[str]:
    return [m.role for m in record.messages or []]


@pytest.mark.parametrize("mode", ["drop", "truncate"])
def test_a_bad_second_turn_drops_or_truncates(mode):
    record = dialogue([GOOD, REFUSAL, GOOD])
    result = run([record], make_ctx(ScriptedLLM(lambda r: "")), QualityConfig(use_judge=False, on_bad_turn=mode))
    if mode == "drop":
        assert not result.kept
        meta = result.dropped[0].meta
        assert meta.drop_reason == "refusal" and meta.drop_detail["turn"] == 2 and meta.drop_detail["turns"] == 3
        assert len(result.dropped[0].messages) == 6  # the whole dialogue, as it came
    else:
        kept = result.kept[0]
        assert roles(kept) == ["user", "assistant"] and kept.messages[1].content == GOOD
        assert kept.meta.conversation_stop == "truncated_by_quality:refusal"
        assert result.stats["dialogues_truncated"] == 1


def test_a_bad_first_turn_drops_even_when_truncating():
    result = run([dialogue([REFUSAL, GOOD, GOOD])], make_ctx(ScriptedLLM(lambda r: "")),
                 QualityConfig(use_judge=False, on_bad_turn="truncate"))
    assert not result.kept and result.dropped[0].meta.drop_detail["turn"] == 1


def test_a_bad_last_turn_is_caught_too():
    result = run([dialogue([GOOD, GOOD, REFUSAL])], make_ctx(ScriptedLLM(lambda r: "")),
                 QualityConfig(use_judge=False))
    assert result.dropped[0].meta.drop_detail["turn"] == 3


def test_judge_sees_every_turn_in_context_and_keeps_the_worst_score():
    def judge(req: ChatRequest) -> str:
        prompt = req.messages[-1][1]
        return '{"reason": "fine", "score": 4.5}' if "autumn" in prompt else '{"reason": "great", "score": 5}'

    llm = ScriptedLLM(judge)
    single = Record(id="s", instruction="Explain photosynthesis briefly.", output=GOOD)
    result = run([dialogue([GOOD, GOOD + " In chloroplasts.", GOOD + " Chlorophyll breaks down."]), single],
                 make_ctx(llm), QualityConfig())
    assert len(llm.requests) == 4  # three turns of the dialogue, one single-turn record
    prompts = [r.messages[-1][1] for r in llm.requests]
    second = next(p for p in prompts if "Where in the cell" in p)
    assert "Conversation so far" in second and "Explain photosynthesis in two sentences." in second
    kept = {r.id: r for r in result.kept}
    assert kept["d"].meta.scores["quality_judge"] == 4.5 and kept["d"].meta.quality_judge_reason == "fine"
    assert len(kept["d"].messages) == 6 and kept["s"].meta.scores["quality_judge"] == 5
    assert result.stats["dialogues"] == 1
