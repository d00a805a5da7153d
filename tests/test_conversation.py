"""The conversation stage: k turns, one generate call per round, stop rules, failed turns, personas."""

from __future__ import annotations

import json

import pytest
from scripted_llm import ScriptedLLM, make_ctx

from datagen.cli import main
from datagen.llm import ChatRequest, Completion
from datagen.personas import load_personas, pick_persona
from datagen.records import Message, Record, RecordMeta
from datagen.stages.conversation import ConversationConfig, clean_user_turn, run


class CountingLLM(ScriptedLLM):
    """Counts generate calls, so a test can see that turns are batched per round."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.calls: list[int] = []

    async def generate(self, requests, on_result=None):
        self.calls.append(len(requests))
        return await super().generate(requests, on_result)


def is_user_prompt(req: ChatRequest) -> bool:
    return "You are playing the user" in req.messages[-1][1]


def scripted(req: ChatRequest) -> str:
    text = req.messages[-1][1]
    if is_user_prompt(req):
        return f"Follow-up number {text.count('User:')} about: {text.split('User: ')[1].splitlines()[0][:40]}?"
    return f"Answer to: {text[:60]}"


def rec(text: str, output: str = "", rid: str | None = None) -> Record:
    return Record(id=rid or f"id_{text}", instruction=text, output=output, meta=RecordMeta(source="test"))


def roles(record: Record) -> list[str]:
    return [m.role for m in record.messages or []]


def test_k_turns_batched_one_call_per_round_and_first_turn_view_kept():
    llm = CountingLLM(scripted)
    records = [rec("Explain tides.", "The moon pulls the sea."), rec("Name a prime."), rec("Sort [3,1,2].", "[1,2,3]")]
    result = run(records, make_ctx(llm), ConversationConfig(turns=3, personas=None))
    assert not result.dropped
    assert [roles(r) for r in result.kept] == [["user", "assistant"] * 3] * 3
    # One call answering the record without an answer, then per round: 3 user turns, 3 answers.
    assert llm.calls == [1, 3, 3, 3, 3]
    first = result.kept[0]
    assert first.instruction == "Explain tides." and first.output == "The moon pulls the sea."
    assert first.messages[0].content == "Explain tides." and first.messages[1].content == "The moon pulls the sea."
    assert result.kept[1].output == result.kept[1].messages[1].content.strip() != ""
    assert first.meta.conversation_stop == "turns" and first.meta.persona is None
    assert result.stats["turns_per_dialogue"] == {"3": 3}
    # The assistant saw the whole dialogue each time.
    last_answer_request = [r for r in llm.requests if not is_user_prompt(r)][-1]
    assert [role for role, _ in last_answer_request.messages] == ["user", "assistant", "user", "assistant", "user"]


def test_user_model_ends_the_chat_and_min_turns():
    def reply(req: ChatRequest) -> str:
        if is_user_prompt(req):
            return "[END]" if "short" in req.messages[-1][1] else "And then what happened next?"
        return "ok " + req.messages[-1][1][:30]

    records = [rec("a short one", "fine"), rec("a long one", "fine")]
    result = run(records, make_ctx(ScriptedLLM(reply)), ConversationConfig(turns=2, personas=None))
    by_id = {r.id: r for r in result.kept}
    assert by_id["id_a short one"].meta.conversation_stop == "user_ended"
    assert roles(by_id["id_a short one"]) == ["user", "assistant"]
    assert roles(by_id["id_a long one"]) == ["user", "assistant"] * 2
    strict = run(records, make_ctx(ScriptedLLM(reply)), ConversationConfig(turns=2, min_turns=2, personas=None))
    assert [r.meta.drop_reason for r in strict.dropped] == ["too_few_turns"]


def failing_second_answer(req: ChatRequest):
    if is_user_prompt(req):
        return f"Please go on with detail {req.messages[-1][1].count('User:')}?"
    if len(req.messages) >= 3 and "boom" in req.messages[0][1]:
        return Completion(error="server_error: 500 boom")
    return "An answer."


@pytest.mark.parametrize("mode", ["drop", "truncate"])
def test_a_failed_turn_drops_or_truncates(mode):
    records = [rec("boom topic", "first answer"), rec("calm topic", "first answer")]
    cfg = ConversationConfig(turns=3, personas=None, on_failed_turn=mode)
    result = run(records, make_ctx(ScriptedLLM(failing_second_answer)), cfg)
    calm = [r for r in result.kept if r.id == "id_calm topic"]
    assert len(calm) == 1 and len(roles(calm[0])) == 6
    if mode == "drop":
        assert [(r.id, r.meta.drop_reason) for r in result.dropped] == [("id_boom topic", "assistant_turn_failed")]
        assert result.dropped[0].meta.drop_detail["turn"] == 2
    else:
        boom = next(r for r in result.kept if r.id == "id_boom topic")
        assert roles(boom) == ["user", "assistant"]  # cut back to its last complete exchange
        assert boom.meta.conversation_stop == "truncated:assistant_turn_failed"
        assert result.stats["truncated"] == {"assistant_turn_failed": 1}


def test_cut_off_and_repeated_user_turns_fail():
    def reply(req: ChatRequest):
        if is_user_prompt(req):
            return "Explain tides."  # repeats the first question
        return Completion(texts=["half an ans"], finish_reasons=["length"]) if "cut" in req.messages[-1][1] else "ok"

    result = run([rec("Explain tides.", "x"), rec("cut me")], make_ctx(ScriptedLLM(reply)),
                 ConversationConfig(turns=2, personas=None, on_failed_turn="drop"))
    assert sorted(r.meta.drop_reason for r in result.dropped) == ["assistant_turn_cut_off", "user_turn_repeated"]


def test_existing_dialogue_is_continued_and_system_kept():
    msgs = [Message(role="system", content="Be brief."), Message(role="user", content="Hi"),
            Message(role="assistant", content="Hello!")]
    record = Record(id="d", instruction="Hi", output="Hello!", messages=msgs)
    result = run([record], make_ctx(ScriptedLLM(scripted)), ConversationConfig(turns=2, personas=None))
    assert roles(result.kept[0]) == ["system", "user", "assistant", "user", "assistant"]


def test_personas_are_chosen_per_record_recorded_and_in_the_prompt():
    personas = load_personas("bundled")
    assert len(personas) >= 300 and any("北京" in p for p in personas)
    llm = ScriptedLLM(scripted)
    records = [rec(f"Question {i}", "answer") for i in range(6)]
    result = run(records, make_ctx(llm), ConversationConfig(turns=2))
    chosen = [r.meta.persona for r in result.kept]
    assert chosen == [pick_persona(personas, 0, r.id) for r in records]
    assert len(set(chosen)) > 1
    user_prompts = [req.messages[-1][1] for req in llm.requests if is_user_prompt(req)]
    assert all(any(p in prompt for p in chosen) for prompt in user_prompts)
    # A record that already carries a persona keeps it.
    tagged = rec("Tagged", "a")
    tagged.meta.persona = "A lighthouse keeper"
    assert run([tagged], make_ctx(ScriptedLLM(scripted)), ConversationConfig(turns=2)).kept[0].meta.persona == \
        "A lighthouse keeper"


def test_persona_files_are_fingerprinted_for_resume(tmp_path):
    from datagen.personas import persona_fingerprints

    mine = tmp_path / "p.txt"
    mine.write_text("A baker\n", encoding="utf-8")
    before = persona_fingerprints([str(mine), None, "none"])
    assert list(before) == [str(mine)]
    mine.write_text("A baker\nA pilot\n", encoding="utf-8")
    assert persona_fingerprints([str(mine)]) != before
    assert persona_fingerprints([None]) == {}  # personas off: the run's hash has no personas key


def test_persona_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"persona": "ok"}\nnot json\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p.jsonl:2: not JSON"):
        load_personas(str(bad))
    assert load_personas("none") == ()


def test_clean_user_turn():
    assert clean_user_turn('User: "What about winter?"') == "What about winter?"
    assert clean_user_turn("And in French?\nAssistant: Un, deux.") == "And in French?"


def test_a_cut_off_user_turn_keeps_its_finished_sentences():
    def reply(req: ChatRequest):
        if is_user_prompt(req):
            text = "Could you give an example? I would also like to know how the" if "keep" in req.messages[-1][1] \
                else "well so the thing I was wondering about is how the"
            return Completion(texts=[text], finish_reasons=["length"])
        return "An answer."

    result = run([rec("keep me", "a"), rec("lose me", "a")], make_ctx(ScriptedLLM(reply)),
                 ConversationConfig(turns=2, personas=None, on_failed_turn="drop"))
    assert [m.content for m in result.kept[0].messages][2] == "Could you give an example?"
    assert result.stats["user_turns_trimmed"] == 1
    assert [r.meta.drop_reason for r in result.dropped] == ["user_turn_cut_off"]


def test_cli_conversation_against_the_loopback_server(scripted_server, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(
        json.dumps({"instruction": "Explain why the sky is blue.", "output": "Rayleigh scattering."}) + "\n"
        + json.dumps({"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4."}]})
        + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(["conversation", "--input", str(src), "--turns", "3", "--llm", "openai:test", "--base-url",
                 scripted_server.base_url, "--no-cache", "--no-progress", "--out", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").split("\n") if line]
    assert [[m["role"] for m in r["messages"]] for r in rows] == [["user", "assistant"] * 3] * 2
    assert all(r["meta"]["persona"] for r in rows)
    assert scripted_server.stats.requests == 2 * 2 + 2 * 2  # two follow-ups and two answers each


def test_chat_pipeline_exports_three_turn_dialogues(scripted_server, tmp_path, monkeypatch):
    """pipelines/chat.yaml's stages over the loopback server (no SFT here: the e2e run does it)."""
    from pathlib import Path

    import yaml

    from datagen.pipeline import Pipeline
    from datagen.pipeline_config import validate_config

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    config = yaml.safe_load((root / "pipelines" / "chat.yaml").read_text(encoding="utf-8"))
    config.update(llm="openai:test", llm_options={"openai": {"base_url": scripted_server.base_url}})
    config.pop("finetune")
    config["stages"][1]["dedup"]["embedder"] = "static"
    result = Pipeline(validate_config(config, "chat.yaml")).run(run_dir=tmp_path / "run", progress=False)
    seeds = config["input"]["limit"]  # the scripted model finishes every turn: every seed becomes a dialogue
    assert len(result.records) == seeds
    export = tmp_path / "run" / "export"
    for name, key, role_key in (("sharegpt.jsonl", "conversations", "from"), ("messages.jsonl", "messages", "role")):
        rows = [json.loads(line) for line in (export / name).read_text(encoding="utf-8").split("\n") if line]
        assert len(rows) == seeds
        user, assistant = ("human", "gpt") if role_key == "from" else ("user", "assistant")
        assert all([t[role_key] for t in r[key]] == [user, assistant] * 3 for r in rows), name
    kept = [json.loads(line) for line in (tmp_path / "run" / "quality" / "kept.jsonl").read_text().split("\n") if line]
    assert all(r["meta"]["persona"] for r in kept)
