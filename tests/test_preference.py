"""Preference pairs from best-of-n: pairing rules, drop reasons, the pairwise check, dpo files in and out."""

from __future__ import annotations

import json
import random

import pytest
from scripted_llm import ScriptedLLM, last_user, make_ctx

from datagen.io import write_records
from datagen.preference_io import read_pairs
from datagen.records import Message, Record, RecordMeta
from datagen.stages.preference import PreferenceConfig, form_pairs, run


def cand(text: str, score: float | None, finish: str = "stop", reason: str = "") -> dict:
    return {"text": text, "score": score, "finish_reason": finish, "reason": reason}


def rec(rid: str, candidates: list[dict] | None, **kw) -> Record:
    return Record(id=rid, instruction=f"Explain {rid}", output="x",
                  meta=RecordMeta(source="test", candidates=candidates, ranked_by="judge:teacher"), **kw)


FOUR = [cand("good", 9, reason="thorough"), cand("bad", 2), cand("cut", 10, "length"), cand("mid", 5)]


def test_best_vs_worst_skips_a_truncated_chosen_and_pairs_with_the_lowest():
    assert form_pairs(FOUR, PreferenceConfig(), random.Random(0)) == ([(0, 1)], None)
    # When truncated answers may win, the cut-off 10 is chosen.
    assert form_pairs(FOUR, PreferenceConfig(allow_truncated_chosen=True), random.Random(0)) == ([(2, 1)], None)


def test_best_vs_random_lower_draws_only_lower_answers_over_the_margin():
    seen = {form_pairs(FOUR, PreferenceConfig(pairing="best_vs_random_lower"), random.Random(s))[0][0]
            for s in range(40)}
    assert seen == {(0, 1), (0, 3)}  # never the cut-off 10: it is not lower
    config = PreferenceConfig(pairing="best_vs_random_lower", min_margin=5)
    assert all(form_pairs(FOUR, config, random.Random(s))[0] == [(0, 1)] for s in range(10))


def test_all_over_margin_lists_every_wide_pair_capped():
    pairs, _ = form_pairs(FOUR, PreferenceConfig(pairing="all_over_margin", min_margin=3), random.Random(0))
    assert pairs == [(0, 3), (0, 1), (3, 1)]
    pairs, _ = form_pairs(FOUR, PreferenceConfig(pairing="all_over_margin", max_pairs_per_prompt=1), random.Random(0))
    assert pairs == [(0, 3)]


@pytest.mark.parametrize(
    ("candidates", "config", "reason"),
    [
        ([cand("a", 5)], {}, "too_few_scored"),
        ([cand("a", 5), cand("b", None), cand("  ", 1)], {}, "too_few_scored"),
        ([cand("a", 5), cand("b", 5)], {}, "all_tied"),
        ([cand("a", 6), cand("b", 5)], {"min_margin": 2}, "below_min_margin"),
        ([cand("same", 6), cand("same ", 5)], {}, "identical_answers"),
        ([cand("a", 6, "length"), cand("b", 5, "length")], {}, "only_truncated"),
    ],
)
def test_what_cannot_pair_is_a_counted_reason(candidates, config, reason):
    assert form_pairs(candidates, PreferenceConfig(**config), random.Random(0)) == ([], reason)


def test_stage_writes_pairs_and_counts_drops():
    records = [rec("tides", FOUR), rec("tied", [cand("a", 5), cand("b", 5)]), rec("none", None)]
    result = run(records, make_ctx(ScriptedLLM(lambda r: "unused", name="judge")), PreferenceConfig())
    (out,) = result.kept
    assert (out.output, out.meta.chosen, out.meta.rejected) == ("good", "good", "bad")
    assert (out.meta.chosen_score, out.meta.rejected_score) == (9.0, 2.0)
    assert out.meta.preference_reason == "thorough" and out.meta.ranked_by == "judge:teacher"
    assert result.drop_counts() == {"all_tied": 1, "no_candidates": 1}
    assert result.stats["pairs_formed"] == 1 and result.stats["mean_margin"] == 7.0


def test_multi_turn_prompt_keeps_the_conversation_and_all_pairs_get_their_own_ids():
    msgs = [Message(role="user", content="hi"), Message(role="assistant", content="hello"),
            Message(role="user", content="Explain tides"), Message(role="assistant", content="old")]
    record = rec("conv", FOUR, messages=msgs)
    result = run([record], make_ctx(ScriptedLLM(lambda r: "", name="j")),
                 PreferenceConfig(pairing="all_over_margin"))
    assert [r.id for r in result.kept] == ["conv#p1", "conv#p2", "conv#p3"]
    assert [m.content for m in result.kept[0].messages] == ["hi", "hello", "Explain tides", "good"]


def pairwise_judge(verdicts: dict[tuple[str, str], str]):
    """Answers "winner" for each (answer A, answer B) shown, from `verdicts`."""

    def reply(req):
        prompt = last_user(req)
        a = prompt.split("<answer_a>\n", 1)[1].split("\n</answer_a>", 1)[0]
        b = prompt.split("<answer_b>\n", 1)[1].split("\n</answer_b>", 1)[0]
        return json.dumps({"reason": "checked", "winner": verdicts[(a, b)]})

    return reply


@pytest.mark.parametrize(
    ("forward", "backward", "outcome"),
    [("A", "B", "kept"), ("A", "A", "order_dependent"), ("B", "A", "judge_disagrees"), ("tie", "tie", "judge_tie")],
)
def test_pairwise_confirmation_in_both_orders(forward, backward, outcome):
    judge = ScriptedLLM(pairwise_judge({("good", "bad"): forward, ("bad", "good"): backward}), name="pj")
    result = run([rec("tides", FOUR)], make_ctx(judge), PreferenceConfig(confirm="pairwise", judge="pj"))
    assert len(judge.requests) == 2
    if outcome == "kept":
        assert len(result.kept) == 1 and "pairwise: checked" in result.kept[0].meta.preference_reason
    else:
        assert result.drop_counts() == {outcome: 1}


# ------------------------------------------------------------------------------- files


def test_dpo_exports_round_trip_through_the_checked_reader(tmp_path):
    result = run([rec("tides", FOUR)], make_ctx(ScriptedLLM(lambda r: "", name="j")), PreferenceConfig())
    conv = write_records(result.kept, tmp_path / "dpo.jsonl", fmt="dpo")
    row = json.loads(conv.read_text())
    assert row["prompt"] == [{"role": "user", "content": "Explain tides"}]
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]
    assert row["rejected"] == [{"role": "assistant", "content": "bad"}]
    assert (row["score_chosen"], row["score_rejected"], row["ranked_by"]) == (9.0, 2.0, "judge:teacher")
    text = write_records(result.kept, tmp_path / "dpo_text.jsonl", fmt="dpo_text")
    assert json.loads(text.read_text())["prompt"] == "Explain tides"
    for path in (conv, text):
        (pair,) = read_pairs(path)
        assert (pair.chosen, pair.rejected, pair.prompt[-1]["content"]) == ("good", "bad", "Explain tides")
    # The SFT formats keep working on the same records: the chosen answer is the output.
    assert json.loads((write_records(result.kept, tmp_path / "a.json", fmt="alpaca")).read_text())[0]["output"] == "good"


def test_dpo_export_of_a_record_without_a_pair_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no preference pair"):
        write_records([rec("plain", None)], tmp_path / "dpo.jsonl", fmt="dpo")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"prompt": "q", "chosen": "a"}, "rejected is missing"),
        ({"prompt": "q", "rejected": "a"}, "chosen is missing"),
        ({"prompt": "q", "chosen": "same", "rejected": "same"}, "identical"),
        ({"prompt": " ", "chosen": "a", "rejected": "b"}, "prompt is empty"),
        ({"prompt": [{"role": "user", "content": ""}], "chosen": "a", "rejected": "b"}, "prompt is empty"),
        ({"chosen": "a", "rejected": "b"}, "prompt is missing"),
        ({"prompt": "q", "chosen": [{"role": "assistant", "content": " "}], "rejected": "b"}, "chosen is empty"),
    ],
)
def test_bad_pair_files_fail_at_their_line(tmp_path, row, message):
    path = tmp_path / "pairs.jsonl"
    good = {"prompt": "q", "chosen": "a", "rejected": "b"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(ValueError, match=rf"pairs\.jsonl:2: .*{message}"):
        read_pairs(path)


def test_quality_rules_score_candidates_without_a_judge():
    long_ok = "Tides rise and fall twice a day because the moon's gravity pulls the oceans toward it as Earth turns."
    cut = "Tides rise and fall twice a day because the moon's gravity pulls the"
    refusal = "I'm sorry, but I can't help with that request."
    record = rec("tides", [cand(cut, None, "length"), cand(refusal, None), cand(long_ok, None)])
    result = run([record], make_ctx(ScriptedLLM(lambda r: "", name="j")), PreferenceConfig(score="quality_rules"))
    (out,) = result.kept
    assert out.meta.chosen == long_ok and out.meta.rejected == refusal  # equally low: the later one
    assert out.meta.ranked_by == "quality_rules"
    assert out.meta.preference_reason == "passes every rule"
    assert [c["score"] for c in out.meta.candidates] == [None, None, None]  # distill's candidates untouched


def test_preference_command_writes_dpo_from_a_distill_file(tmp_path):
    from datagen.cli import main

    source = write_records([rec("tides", FOUR), rec("tied", [cand("a", 5), cand("b", 5)])], tmp_path / "d.jsonl")
    out = tmp_path / "pairs.jsonl"
    assert main(["preference", "--input", str(source), "--out", str(out), "--format", "dpo",
                 "--dropped", str(tmp_path / "drop.jsonl"), "--no-progress", "--no-cache"]) == 0
    (pair,) = read_pairs(out)
    assert (pair.chosen, pair.rejected) == ("good", "bad")
    assert json.loads((tmp_path / "drop.jsonl").read_text())["meta"]["drop_reason"] == "all_tied"
