"""Magpie with personas (in the pre-query's system prompt) and `n_turns` dialogues: the later user
turns come from the dialogue rendered through the same template, the records take the
conversation stage's shape, failed turns get its drop reasons, and with both off nothing
changes (config dump, prompts, record JSON)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from pydantic import ValidationError
from scripted_llm import ScriptedLLM, make_ctx

from datagen.jsonl import read_jsonl
from datagen.llm import ChatRequest, Completion
from datagen.stages.magpie import MagpieConfig, PreQuery, pre_query_from_template, run

CHATML = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"
TURN = "{user}<|im_end|>\n<|im_start|>assistant\n{assistant}<|im_end|>\n<|im_start|>user\n"
SYSTEM = "You are a helpful assistant."
PERSONAS = ["A beekeeper in rural Wales planning next spring", "A night-shift nurse studying for an exam"]


def config(**changes) -> MagpieConfig:
    base = {"count": 4, "pre_query": CHATML, "stop": ["<|im_end|>"], "system_prompts": {SYSTEM: 1}}
    return MagpieConfig(**{**base, **changes})


class Model:
    """Raw prompts get a query numbered by the turn it opens; chat requests get an answer. Hooks
    let a test make a given later turn fail."""

    def __init__(self, later_query=None, later_answer=None) -> None:
        self.later_query, self.later_answer = later_query, later_answer

    def __call__(self, req):
        if isinstance(req, ChatRequest):
            turn = sum(role == "user" for role, _ in req.messages)
            if turn > 1 and self.later_answer:
                return self.later_answer(req)
            return f"Answer {turn}: about {req.messages[-1][1][:50]}"
        turn = req.prompt.count("<|im_start|>assistant") + 1
        tag = hashlib.sha256(f"{req.prompt}|{req.seed}".encode()).hexdigest()[:8]
        query = f"Question {turn}: how would the {tag} lanterns in the garden change at night?"
        if turn > 1 and self.later_query:
            return self.later_query(req, query)
        return query


def stage(cfg: MagpieConfig, model=None, seed: int = 0):
    llm = ScriptedLLM(model or Model())
    return run([], make_ctx(llm, seed=seed), cfg), llm


def test_new_options_leave_the_config_dump_and_hash_unchanged_while_off():
    dump = MagpieConfig().model_dump(mode="json", by_alias=True)
    assert not {"personas", "n_turns", "turn_format", "on_failed_turn"} & set(dump)
    on = config(personas="bundled", n_turns=2, turn_format=TURN, on_failed_turn="drop").model_dump(by_alias=True)
    assert on["personas"] == "bundled" and on["n_turns"] == 2 and on["turn_format"] == TURN
    assert on["on_failed_turn"] == "drop"


def test_config_errors():
    with pytest.raises(ValidationError, match="needs answer"):
        config(n_turns=2, turn_format=TURN, answer=False)
    with pytest.raises(ValidationError, match="needs turn_format"):
        config(n_turns=2)
    with pytest.raises(ValidationError, match=r"both \{user\} and \{assistant\}"):
        config(n_turns=2, turn_format="{user}<|im_end|>\n")


def test_the_template_renders_the_dialogue_up_to_the_next_user_turn():
    from finetune_helpers import smol_tokenizer

    pre = pre_query_from_template(smol_tokenizer())
    dialogue = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]
    assert pre.prompt("S", dialogue) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n"
        "<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\n")
    # without a system prompt the template's own default opens it, as for the first query
    assert pre.prompt(None, dialogue).startswith(pre.prompt(None).rsplit("<|im_start|>user\n", 1)[0])


def test_turn_format_puts_the_texts_in_verbatim():
    pre = PreQuery(CHATML.replace("{system}", "\u2063MAGPIE-SYSTEM\u2063"), CHATML.replace("{system}", ""), (),
                   turn_format=TURN)
    got = pre.prompt("S", [{"role": "user", "content": "use {assistant} here"}, {"role": "assistant", "content": "{user}"}])
    assert got == CHATML.replace("{system}", "S") + (
        "use {assistant} here<|im_end|>\n<|im_start|>assistant\n{user}<|im_end|>\n<|im_start|>user\n")


def test_personas_condition_the_query_prompt_not_the_answer(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("# two people\n" + "\n".join(PERSONAS) + "\n")
    result, llm = stage(config(personas=str(path)))
    assert len(result.kept) == 4 and result.stats["personas"] == 2
    raw = [r for r in llm.requests if not isinstance(r, ChatRequest)]
    for record, request in zip(result.kept, raw, strict=True):
        assert record.meta.persona in PERSONAS and record.meta.system_prompt == SYSTEM
        assert request.prompt == f"<|im_start|>system\n{SYSTEM} The user is {record.meta.persona}.<|im_end|>\n" \
                                 "<|im_start|>user\n"
    answers = [r for r in llm.requests if isinstance(r, ChatRequest)]
    assert answers and all(r.messages[0] == ("system", SYSTEM) for r in answers)
    assert not any(p in json.dumps([r.messages for r in answers]) for p in PERSONAS)
    # the same seed picks the same personas
    again, _ = stage(config(personas=str(path)))
    assert [r.meta.persona for r in again.kept] == [r.meta.persona for r in result.kept]


def test_personas_off_changes_nothing():
    result, llm = stage(config())
    raw = [r.prompt for r in llm.requests if not isinstance(r, ChatRequest)]
    assert raw == [CHATML.replace("{system}", SYSTEM)] * 4
    assert all("persona" not in r.model_dump_json() and r.messages is None for r in result.kept)


def test_n_turns_makes_dialogues_in_the_conversation_records_shape():
    result, llm = stage(config(n_turns=3, turn_format=TURN))
    assert len(result.kept) == 4 and not result.dropped
    for record in result.kept:
        msgs = [(m.role, m.content) for m in record.messages]
        assert [role for role, _ in msgs] == ["user", "assistant"] * 3
        assert [c.split(":")[0] for _, c in msgs] == ["Question 1", "Answer 1", "Question 2", "Answer 2",
                                                       "Question 3", "Answer 3"]
        assert record.instruction == msgs[0][1] and record.output == msgs[1][1]
        assert record.meta.conversation_stop == "turns" and record.meta.source == "magpie"
    assert result.stats["turns_per_dialogue"] == {"3": 4} and result.stats["later_queries"] == 8
    # the third query saw the whole dialogue through the template; its answer saw it as chat
    first = result.kept[0].messages
    third_prompt = CHATML.replace("{system}", SYSTEM) + "".join(
        TURN.replace("{user}", first[i].content).replace("{assistant}", first[i + 1].content) for i in (0, 2))
    assert third_prompt in [r.prompt for r in llm.requests if not isinstance(r, ChatRequest)]
    last_answer = next(r for r in llm.requests if isinstance(r, ChatRequest) and r.messages[-1][1] == first[4].content)
    assert [role for role, _ in last_answer.messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    # reproducible
    again, _ = stage(config(n_turns=3, turn_format=TURN))
    assert [r.model_dump() for r in again.kept] == [r.model_dump() for r in result.kept]


@pytest.mark.parametrize(("later_query", "later_answer", "reason", "detail"), [
    (lambda req, q: "Hi", None, "user_turn_filtered", {"filter": "too_short_query"}),
    (lambda req, q: Completion(texts=[q], finish_reasons=["length"]), None, "user_turn_cut_off", {}),
    (lambda req, q: Completion(error="http_500: boom"), None, "user_turn_failed", {}),
    (lambda req, q: req.prompt.split("<|im_start|>user\n")[1].split("<|im_end|>")[0], None, "user_turn_repeated", {}),
    (None, lambda req: Completion(texts=["cut"], finish_reasons=["length"]), "assistant_turn_cut_off", {}),
    (None, lambda req: Completion(error="http_500: boom"), "assistant_turn_failed", {}),
])
def test_a_failed_later_turn_truncates_or_drops_the_dialogue(later_query, later_answer, reason, detail):
    model = Model(later_query, later_answer)
    truncated, _ = stage(config(n_turns=3, turn_format=TURN), model)
    assert len(truncated.kept) == 4 and not truncated.dropped
    for record in truncated.kept:
        assert [m.role for m in record.messages] == ["user", "assistant"]
        assert record.meta.conversation_stop == f"truncated:{reason}"
    assert truncated.stats["truncated"] == {reason: 4}
    dropped, _ = stage(config(n_turns=3, turn_format=TURN, on_failed_turn="drop"), model)
    assert not dropped.kept and [d.meta.drop_reason for d in dropped.dropped] == [reason] * 4
    assert all(d.meta.drop_detail["turn"] == 2 and detail.items() <= d.meta.drop_detail.items()
               for d in dropped.dropped)


def cli(*args: str):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], capture_output=True, text=True, cwd=root,
                          timeout=300, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_magpie_command_makes_persona_dialogues_over_the_loopback_server(scripted_server, tmp_path):
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    out = tmp_path / "a.jsonl"
    result = cli("magpie", "--llm", "openai:test", "--base-url", scripted_server.base_url, "--count", "6",
                 "--pre-query", CHATML, "--stop", '["<|im_end|>"]', "--system-prompts", json.dumps({SYSTEM: 1}),
                 "--n-turns", "3", "--turn-format", TURN, "--personas", str(personas),
                 "--out", str(out), "--no-progress", "--no-cache")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(out)
    assert len(rows) == 6
    for row in rows:
        users = [m["content"] for m in row["messages"] if m["role"] == "user"]
        assert len(users) == 3 and len(set(users)) == 3 and row["instruction"] == users[0]
        assert row["meta"]["persona"] in PERSONAS and row["meta"]["conversation_stop"] == "turns"
    raw = [e.prompt for e in scripted_server.stats.log if e.prompt.endswith("<|im_start|>user\n")]
    assert len(raw) == 6 * 3 and sum("<|im_start|>assistant" in p for p in raw) == 12
    assert scripted_server.stats.requests == 6 * 3 * 2
