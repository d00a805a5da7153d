"""Evol-Instruct on multi-turn records: `turns: first` (as before), `keep` (passed through) and
`each` (every user turn rewritten, every assistant turn answered again in order)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from scripted_llm import ScriptedLLM, make_ctx
from test_evol_instruct import EQ_PREFIX, Script, identify

from datagen.jsonl import read_jsonl
from datagen.llm import ChatRequest, Completion
from datagen.records import Message, Record, RecordMeta
from datagen.stages.evol_instruct import EvolConfig, run

ROOT = Path(__file__).resolve().parent.parent


def dialogue(*users: str, system: str | None = "Be kind.", rid: str = "dlg") -> Record:
    msgs = [Message(role="system", content=system)] if system else []
    for k, text in enumerate(users):
        msgs += [Message(role="user", content=text), Message(role="assistant", content=f"old answer {k + 1}")]
    return Record(id=rid, instruction=users[0], output="old answer 1", messages=msgs, meta=RecordMeta(source="test"))


def single(text: str) -> Record:
    return Record(id=f"id_{text}", instruction=text, output="x", meta=RecordMeta(source="test"))


def evolve(records, turns, script=None, **cfg):
    llm = ScriptedLLM(script or Script())
    cfg = {"rounds": 1, "ops": {"deepen": 1}, "keep_originals": False, **cfg}
    return run(records, make_ctx(llm), EvolConfig(turns=turns, **cfg)), llm


def test_first_stays_the_default_and_out_of_the_config_dump():
    assert "turns" not in EvolConfig().model_dump(mode="json", by_alias=True)
    assert EvolConfig(turns="each").model_dump(by_alias=True)["turns"] == "each"
    with pytest.raises(ValidationError, match="needs answer"):
        EvolConfig(turns="each", answer=False)
    result, _ = evolve([dialogue("Explain tides", "And the moon?")], "first")
    (child,) = result.kept
    assert child.messages is None and child.instruction == "Explain tides [deepen]"


def test_each_rewrites_every_user_turn_and_answers_every_turn_again():
    parent = dialogue("Explain tides", "Why twice a day", "Draw a diagram")
    result, llm = evolve([parent], "each")
    (child,) = result.kept
    assert not result.dropped
    msgs = [(m.role, m.content) for m in child.messages]
    assert [r for r, _ in msgs] == ["system"] + ["user", "assistant"] * 3 and msgs[0] == ("system", "Be kind.")
    users = [c for r, c in msgs if r == "user"]
    assert users == ["Explain tides [deepen]", "Why twice a day [deepen]", "Draw a diagram [deepen]"]
    answers = [c for r, c in msgs if r == "assistant"]
    assert answers == [f"A useful answer to: {u}" for u in users]  # none of the old answers survive
    assert child.instruction == users[0] and child.output == answers[0] and child.meta.evol_op == "deepen"
    assert child.meta.parent_id == "dlg" and child.meta.evol_depth == 1
    # one rewrite and one equality check per turn; each answer saw the rewritten dialogue before it
    assert sum(identify(r.messages[-1][1]) is not None for r in llm.requests) == 3
    assert sum(r.messages[-1][1].startswith(EQ_PREFIX) for r in llm.requests) == 3
    last = next(r for r in llm.requests if r.messages[-1][1] == users[2])
    assert list(last.messages) == msgs[:-1]
    assert result.stats["requests"] == 3 + 3 + 1 + 2
    again, _ = evolve([parent], "each")
    assert [r.model_dump() for r in again.kept] == [r.model_dump() for r in result.kept]


@pytest.mark.parametrize(("later", "reason"), [
    ("Summarise the LEAK report", "template_leak"),
    ("Compare SAME things", "no_information_gain"),
    ("Tell me how to REFUSE politely", "refusal_response"),
    ("Write DEGEN text", "degenerate_response"),
    ("List CUTANSWER steps", "assistant_turn_cut_off"),
])
def test_a_failing_later_turn_fails_the_attempt_with_its_turn(later, reason):
    class Cutting(Script):
        def __call__(self, req: ChatRequest):
            if req.messages[-1][1].startswith("List CUTANSWER") and not identify(req.messages[-1][1]):
                return Completion(texts=["and then"], finish_reasons=["length"])
            return super().__call__(req)

    parent = dialogue("Explain tides", later)
    result, _ = evolve([parent], "each", script=Cutting(), keep_originals=True)
    assert result.kept == [parent]  # the parent stays in the pool for the next round
    (failed,) = result.dropped
    assert failed.meta.drop_reason == reason and failed.meta.drop_detail["turn"] == 2


def test_breadth_under_each_writes_a_new_single_turn_task():
    result, _ = evolve([dialogue("Explain tides", "And the moon?")], "each", ops={"breadth": 1})
    (child,) = result.kept
    assert child.messages is None and child.instruction == "Explain tides [breadth]"


def test_keep_passes_dialogues_through_and_evolves_single_turns():
    parent = dialogue("Explain tides", "And the moon?")
    result, llm = evolve([parent, single("Name a prime")], "keep")
    assert result.kept[0] == parent and result.kept[1].instruction == "Name a prime [deepen]"
    assert result.stats["dialogues_kept"] == 1 and result.stats["skipped_empty"] == 0
    assert not any("tides" in r.messages[-1][1] for r in llm.requests)


def test_single_turn_records_evolve_the_same_under_every_mode():
    records = [single("Name a prime"), single("Sort a list")]
    first, first_llm = evolve(records, "first")
    for mode in ("each", "keep"):
        other, other_llm = evolve(records, mode)
        assert [r.model_dump() for r in other.kept] == [r.model_dump() for r in first.kept]
        assert other_llm.requests == first_llm.requests


def test_evolve_command_each_turn_over_the_loopback_server(scripted_server, tmp_path):
    src = tmp_path / "chats.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"How do {w} grow in winter?"},
                          {"role": "assistant", "content": "Slowly."},
                          {"role": "user", "content": f"What about {w} in spring?"},
                          {"role": "assistant", "content": "Faster."}]} for w in ("ferns", "mosses")]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "datagen.cli", "evolve", "--input", str(src), "--turns", "each", "--rounds", "1",
         "--ops", "deepen=1", "--no-keep-originals", "--llm", "openai:test", "--base-url", scripted_server.base_url,
         "--out", str(out), "--no-progress", "--no-cache"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    kept = read_jsonl(out)
    assert len(kept) == 2
    for row, source in zip(kept, rows, strict=True):
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * 2
        assert all(new["content"] != old["content"] for new, old in zip(row["messages"], source["messages"],
                                                                         strict=True))
        assert row["instruction"] == row["messages"][0]["content"] and row["meta"]["source"] == "evol_instruct"
    # per dialogue: 2 rewrites, 2 equality checks, 2 answers
    assert scripted_server.stats.requests == 2 * 6


def test_dry_run_bound_covers_every_turn_under_each():
    from datagen.plan import Records
    from datagen.stages.evol_instruct import plan

    flow = Records(count=2, instruction_tokens=20, output_tokens=40, turns=3)
    first = plan(flow, EvolConfig(rounds=1), "local", None)
    each = plan(flow, EvolConfig(rounds=1, turns="each"), "local", None)
    assert sum(c.requests for c in first.calls) == 2 * 3  # rewrite, equality check, answer
    assert sum(c.requests for c in each.calls) == 2 * 3 * 3
    parents = [dialogue("Explain tides", "Why twice a day", "Draw a diagram", rid=f"d{k}") for k in range(2)]
    result, _ = evolve(parents, "each")
    assert result.stats["requests"] <= sum(c.requests for c in each.calls)
