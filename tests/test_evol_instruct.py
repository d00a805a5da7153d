"""Evol-Instruct stage: elimination rules, lineage, pool semantics, op weights, determinism."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from pydantic import ValidationError
from scripted_llm import ScriptedLLM, last_user, make_ctx

from datagen.llm import ChatRequest, Completion
from datagen.prompts import render
from datagen.records import Record, RecordMeta
from datagen.stages.evol_config import OPS
from datagen.stages.evol_instruct import (
    EvolConfig,
    clean_evolution,
    find_leak,
    is_degenerate,
    is_refusal,
    parse_ops,
    run,
)

EQ_PREFIX = render("evol_equality_check", parent="\x00", child="\x01").split("\x00")[0]
LONG_SORRY = "Sorry for the long answer. " + " ".join(["Here is a detailed explanation of the topic."] * 12)


def rec(text: str, rid: str | None = None) -> Record:
    return Record(id=rid or f"id_{text[:20]}", instruction=text, meta=RecordMeta(source="test"))


def identify(prompt: str) -> tuple[str, str] | None:
    """(op, parent instruction) when `prompt` is one of our evolution prompts."""
    for op in OPS:
        head, _, tail = render(f"evol_{op}", instruction="\x00").partition("\x00")
        if prompt.startswith(head) and prompt.endswith(tail):
            return op, prompt[len(head) : len(prompt) - len(tail)]
    return None


class Script:
    """Default: every rewrite appends its op; keywords in the parent trigger each failure."""

    def __init__(self, fail_once: set[str] | None = None):
        self.fail_once = fail_once or set()
        self.seen: Counter[str] = Counter()

    def __call__(self, req: ChatRequest):
        prompt = last_user(req)
        found = identify(prompt)
        if found:
            op, parent = found
            self.seen[parent] += 1
            if any(k in parent for k in self.fail_once) and self.seen[parent] == 1:
                return "Here is the #Rewritten Prompt#: something"
            if "ERR" in parent:
                return Completion(error="http_500: boom")
            if "EMPTY" in parent:
                return "   "
            if "COPY" in parent:
                return f"Rewritten instruction: {parent.upper()}!"
            if "LEAK" in parent:
                return f"Make the given prompt harder: {parent}"
            if "TRUNC" in parent:
                return Completion(texts=[parent + " and then"], finish_reasons=["length"])
            return f"Rewritten instruction: {parent} [{op}]"
        if prompt.startswith(EQ_PREFIX):
            if "SAME" in prompt:
                return "No, they are the same."
            if "MUMBLE" in prompt:
                return "Hmm, hard to tell."
            return "Yes."
        # An answer to an evolved instruction.
        if "LONGSORRY" in prompt:
            return LONG_SORRY
        if "REFUSE" in prompt:
            return "I’m sorry, but I can't help with that request."
        if "DEGEN" in prompt:
            return "... and the, of it!!"
        return f"A useful answer to: {prompt}"


def evolve(records, rounds=1, script=None, seed=0, **cfg):
    llm = ScriptedLLM(script or Script())
    ctx = make_ctx(llm, seed=seed)
    return run(records, ctx, EvolConfig(rounds=rounds, **cfg)), llm


@pytest.mark.parametrize(
    "text, reason",
    [
        ("Explain ERR codes", "llm_error"),
        ("Describe EMPTY sets", "empty_evolution"),
        ("Write a COPY of a poem", "copied_parent"),
        ("Summarise the LEAK report", "template_leak"),
        ("List TRUNC functions", "truncated_evolution"),
        ("Compare SAME things", "no_information_gain"),
        ("Tell me how to REFUSE politely", "refusal_response"),
        ("Write DEGEN text", "degenerate_response"),
    ],
)
def test_each_elimination_rule(text, reason):
    result, _ = evolve([rec(text)], rounds=1)
    assert [r.meta.drop_reason for r in result.dropped] == [reason]
    assert result.kept == [rec(text)]  # only the original survives
    assert result.stats["per_round"][0]["failed"] == {reason: 1}
    assert result.drop_counts() == {reason: 1}
    failed = result.dropped[0]
    assert failed.meta.parent_id == rec(text).id and failed.meta.round == 1 and failed.meta.evol_op in OPS


def test_long_answer_with_an_apology_is_not_a_refusal_and_unreadable_check_does_not_veto():
    result, _ = evolve([rec("Explain LONGSORRY topics"), rec("Explain MUMBLE topics")], rounds=1)
    assert result.dropped == []
    evolved = [r for r in result.kept if r.meta.source == "evol_instruct"]
    assert len(evolved) == 2
    assert evolved[0].output == LONG_SORRY
    assert result.stats["equality_unparsed"] == 1


def test_successful_evolution_keeps_answer_lineage_and_stable_id():
    original = rec("Explain photosynthesis")
    result, llm = evolve([original], rounds=1)
    assert len(result.kept) == 2
    child = result.kept[1]
    op = child.meta.evol_op
    assert child.instruction == f"Explain photosynthesis [{op}]"  # label stripped
    assert child.output == f"A useful answer to: {child.instruction}"
    assert child.meta.parent_id == original.id
    assert child.meta.root_id == original.id
    assert child.meta.round == 1 and child.meta.evol_depth == 1
    assert child.meta.source == "evol_instruct" and child.meta.model == "scripted"
    assert child.input == ""
    # Three requests: rewrite, equality check, answer.
    assert len(llm.requests) == 3 and result.stats["requests"] == 3


def test_lineage_chains_over_rounds():
    originals = [rec("Explain photosynthesis"), rec("Write a haiku about rain")]
    result, _ = evolve(originals, rounds=3)
    assert result.kept[:2] == originals
    evolved = result.kept[2:]
    assert [r.meta.round for r in evolved] == [1, 1, 2, 2, 3, 3]
    by_id = {r.id: r for r in result.kept}
    for child in evolved:
        parent = by_id[child.meta.parent_id]
        assert child.meta.evol_depth == parent.meta.evol_depth + 1
        assert child.instruction.startswith(parent.instruction)
        assert child.meta.root_id in {o.id for o in originals}
    assert len({r.id for r in result.kept}) == len(result.kept)
    assert result.stats["evolved"] == 6 and result.stats["per_round"][2]["evolved"] == 2


def test_final_only_and_without_originals():
    originals = [rec("Explain photosynthesis"), rec("Describe EMPTY sets")]
    result, _ = evolve(originals, rounds=2, keep_all_rounds=False, keep_originals=False)
    assert len(result.kept) == 1
    assert result.kept[0].meta.round == 2 and result.kept[0].meta.evol_depth == 2
    assert result.drop_counts() == {"empty_evolution": 2}


def test_failed_evolution_returns_parent_to_the_pool():
    original = rec("Plan a FLAKY garden")
    result, _ = evolve([original], rounds=2, script=Script(fail_once={"FLAKY"}))
    assert [r.meta.drop_reason for r in result.dropped] == ["template_leak"]
    assert result.dropped[0].meta.parent_id == original.id and result.dropped[0].meta.round == 1
    (child,) = result.kept[1:]
    assert child.meta.parent_id == original.id  # the unevolved parent tried again
    assert child.meta.round == 2 and child.meta.evol_depth == 1
    assert result.stats["per_round"][0]["evolved"] == 0 and result.stats["per_round"][1]["evolved"] == 1


def test_failure_in_a_later_round_keeps_the_last_good_evolution():
    # Round 1 succeeds; the evolved text then contains "[...]" and COPY triggers from round 2 on.
    class Later(Script):
        def __call__(self, req):
            found = identify(last_user(req))
            if found and "[" in found[1]:
                return "Rewritten instruction: " + found[1]
            return super().__call__(req)

    result, _ = evolve(
        [rec("Explain tides")], rounds=3, script=Later(), keep_all_rounds=False, keep_originals=False
    )
    assert [r.meta.round for r in result.kept] == [1]
    assert result.drop_counts() == {"copied_parent": 2}
    assert all(d.meta.parent_id == result.kept[0].id for d in result.dropped)


def test_op_weights_are_honoured():
    records = [rec(f"Task number {i}") for i in range(400)]
    result, _ = evolve(records, rounds=1, ops={"deepen": 1, "breadth": 3, "concretize": 0})
    ops = Counter(r.meta.evol_op for r in result.kept if r.meta.source == "evol_instruct")
    assert set(ops) == {"deepen", "breadth"}
    assert 0.68 < ops["breadth"] / 400 < 0.82
    assert result.stats["ops_drawn"] == dict(sorted(ops.items()))


def test_single_op_uses_its_prompt():
    records = [rec("Explain tides"), rec("Sort a list")]
    result, llm = evolve(records, rounds=1, ops={"complicate_input": 1}, equality_check=False, answer=False)
    evolution_requests = [r for r in llm.requests if identify(last_user(r))]
    assert {identify(last_user(r))[0] for r in evolution_requests} == {"complicate_input"}
    assert len(llm.requests) == 2  # no equality checks, no answers
    assert all(r.output == "" for r in result.kept)


def test_deterministic_and_independent_of_other_records():
    records = [rec(f"Task number {i}") for i in range(30)]
    first, _ = evolve(records, rounds=2, seed=7)
    again, _ = evolve(records, rounds=2, seed=7)
    other, _ = evolve(records, rounds=2, seed=8)
    assert [r.model_dump() for r in first.kept] == [r.model_dump() for r in again.kept]
    ops = [r.meta.evol_op for r in first.kept]
    assert ops != [r.meta.evol_op for r in other.kept]
    # Adding a record does not change what happens to the others.
    more, _ = evolve([rec("An extra task"), *records], rounds=2, seed=7)
    assert {r.id for r in first.kept} <= {r.id for r in more.kept}


def test_requests_of_a_round_carry_distinct_seeds_per_round():
    # A parent retried after a failure must not hit the cache with the same request.
    result, llm = evolve([rec("Describe EMPTY sets")], rounds=3)
    seeds = [r.seed for r in llm.requests if identify(last_user(r))]
    assert len(seeds) == 3 and len(set(seeds)) == 3


def test_config_validation():
    with pytest.raises(ValidationError):
        EvolConfig(ops={"deepn": 1})
    with pytest.raises(ValidationError):
        EvolConfig(ops={"deepen": 0})
    with pytest.raises(ValidationError):
        EvolConfig(rounds=1, bogus=True)
    assert set(EvolConfig().ops) == set(OPS)


def test_parse_ops():
    assert parse_ops("deepen=1,breadth=2") == {"deepen": 1.0, "breadth": 2.0}
    assert parse_ops("add-constraints, breadth") == {"add_constraints": 1.0, "breadth": 1.0}
    with pytest.raises(ValueError):
        parse_ops("deepen=lots")


def test_rule_helpers():
    assert clean_evolution('**Rewritten Instruction:** "Explain tides."') == "Explain tides."
    assert clean_evolution("#Rewritten Prompt#: Explain tides") == "Explain tides"
    assert clean_evolution("Explain the 'tides'") == "Explain the 'tides'"
    assert find_leak("Rewrite the Given Prompt so that", ["given prompt"]) == "given prompt"
    assert find_leak("Explain tides", ["given prompt"]) is None
    phrases = EvolConfig().refusal_phrases
    assert is_refusal("I apologize, but I cannot do that.", phrases, 80)
    assert not is_refusal(LONG_SORRY, phrases, 80)
    assert not is_refusal("Paris is the capital of France.", phrases, 80)
    assert is_degenerate("")
    assert is_degenerate("... and the, of it!!")
    assert not is_degenerate("42")
    assert not is_degenerate("The answer is 42.")


def test_cli_evolve(tmp_path, monkeypatch):
    import argparse

    from datagen.cli_config import add_stage_command
    from datagen.context import StageContext
    from datagen.stages import evol_instruct

    parser = argparse.ArgumentParser()
    add_stage_command(parser.add_subparsers(), evol_instruct.STAGE)  # only ours

    def main(argv):
        args = parser.parse_args(argv)
        return args.func(args)

    src = tmp_path / "in.json"
    src.write_text(
        json.dumps(
            [
                {"instruction": "Explain tides", "input": "", "output": "x"},
                {"instruction": "Describe EMPTY sets", "input": "", "output": "y"},
            ]
        )
    )
    llm = ScriptedLLM(Script())
    monkeypatch.setattr(StageContext, "from_args", staticmethod(lambda args: make_ctx(llm, seed=args.seed)))
    out, bad = tmp_path / "out.jsonl", tmp_path / "dropped.jsonl"
    code = main(
        [
            "evolve",
            "--input",
            str(src),
            "--rounds",
            "2",
            "--ops",
            "deepen=1",
            "--out",
            str(out),
            "--dropped",
            str(bad),
            "--no-progress",
        ]
    )
    assert code == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(kept) == 4  # 2 originals + 2 evolutions of "Explain tides"
    assert {r["meta"]["evol_op"] for r in kept[2:]} == {"deepen"}
    dropped_rows = [json.loads(line) for line in bad.read_text().splitlines()]
    assert [r["meta"]["drop_reason"] for r in dropped_rows] == ["empty_evolution"] * 2
