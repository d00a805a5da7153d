"""Decontamination: planted n-gram copies and paraphrases are caught, a clean set loses nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from datagen.context import StageContext
from datagen.records import Record
from datagen.stages.decontaminate import DecontaminateConfig, held_out_fingerprint, ngrams, run

HELD_OUT = [
    {"instruction": "What is the boiling point of water at sea level in degrees Celsius?", "output": "100 degrees."},
    {"instruction": "Write a short poem about autumn leaves falling in the park.",
     "output": "Golden leaves drift slowly down onto the quiet benches of the park while children laugh and "
               "the wind hums softly through the bare branches overhead."},
    {"instruction": "Explain the difference between a list and a tuple in Python.", "output": "Lists are mutable."},
    {"instruction": "Name three countries that border Germany.", "output": "France, Poland, Austria."},
]
CLEAN = [
    "Give me a recipe for banana bread with walnuts.",
    "How do I reverse a string in JavaScript?",
    "Describe the water cycle for a ten-year-old.",
    "Write a haiku about the ocean at night.",
    "What are the main causes of the French Revolution?",
    "Explain how a dictionary works in Python.",
    "Name three rivers in France.",
    "What is the melting point of iron?",
    "Summarize the plot of Romeo and Juliet.",
    "Translate 'good morning' into Spanish.",
]


def _held_out(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HELD_OUT))
    return path


def _records(instructions: list[str], outputs: list[str] | None = None) -> list[Record]:
    outputs = outputs or ["A plain answer." for _ in instructions]
    return [Record(id=f"r{i}", instruction=t, output=o) for i, (t, o) in enumerate(zip(instructions, outputs, strict=True))]


def test_ngrams_ignore_case_and_punctuation():
    assert ngrams("The quick, brown FOX!", 2) == {("the", "quick"), ("quick", "brown"), ("brown", "fox")}
    assert ngrams("too short", 3) == set()


def test_cjk_text_is_counted_by_character(tmp_path: Path):
    """Chinese has no spaces: taken as words, a paragraph is one "word" and a copy that changes
    one comma shares no n-gram with its source. By character, the copy is found."""
    assert ngrams("秦始皇统一六国", 3) == {("秦", "始", "皇"), ("始", "皇", "统"), ("皇", "统", "一"), ("统", "一", "六"),
                                     ("一", "六", "国")}
    held = tmp_path / "zh.jsonl"
    held.write_text(json.dumps({"instruction": "秦始皇统一六国后采取了哪些重要措施？请简要回答。", "output": "统一文字"},
                               ensure_ascii=False) + "\n", encoding="utf-8")
    config = DecontaminateConfig(held_out=[str(held)], semantic=False)
    copy = _records(["秦始皇统一六国后，采取了哪些重要措施？请简要回答", "写一首关于秋天的短诗，描写落叶和风。"])
    result = run(copy, StageContext(progress=False), config)
    assert [r.id for r in result.dropped] == ["r0"] and [r.id for r in result.kept] == ["r1"]


@pytest.mark.slow
def test_clean_set_loses_nothing(tmp_path: Path):
    config = DecontaminateConfig(held_out=[str(_held_out(tmp_path))])
    result = run(_records(CLEAN), StageContext(progress=False), config)
    assert len(result.kept) == len(CLEAN) and not result.dropped
    assert result.stats["held_out_sets"][0]["items"] == 4


@pytest.mark.slow
def test_planted_overlaps_are_caught(tmp_path: Path):
    held = _held_out(tmp_path)
    planted = [
        # the held-out question copied inside a longer instruction, different case and punctuation
        "Quiz time -- WHAT IS THE BOILING POINT OF WATER AT SEA LEVEL IN DEGREES CELSIUS; answer briefly",
        # paraphrases: no shared 13-gram, caught by embeddings
        "At sea level, what temperature in Celsius does water boil at?",
        "Which three nations share a border with Germany?",
        # an innocent instruction whose answer copies a held-out reference
        "Describe a park in autumn.",
    ]
    outputs = ["100.", "100 C.", "France, Poland, Austria.",
               "Golden leaves drift slowly down onto the quiet benches of the park while children laugh and the wind "
               "hums softly."]
    records = _records(planted + CLEAN, outputs + ["A plain answer."] * len(CLEAN))
    config = DecontaminateConfig(held_out=[str(held)])
    result = run(records, StageContext(progress=False), config)
    gone = {r.id: r.meta.drop_detail for r in result.dropped}
    assert set(gone) == {"r0", "r1", "r2", "r3"}
    assert all(r.meta.drop_reason == "contaminated" for r in result.dropped)
    assert gone["r0"]["method"] == "ngram" and gone["r0"]["field"] == "instruction"
    assert gone["r0"]["held_out_prompt"] == HELD_OUT[0]["instruction"]
    assert gone["r3"]["method"] == "ngram" and gone["r3"]["field"] == "output"
    assert gone["r1"]["method"] == "embedding" and gone["r1"]["similarity"] >= 0.8
    assert gone["r2"]["held_out_prompt"] == HELD_OUT[3]["instruction"]
    assert result.stats["ngram_matches"] == 2 and result.stats["embedding_matches"] == 2
    assert result.stats["held_out_sets"] == [{"path": str(held), "sha256": held_out_fingerprint(held), "items": 4}]

    # n-grams only: the paraphrases get through; answers not compared: the copied reference too
    ngram_only = run(records, StageContext(progress=False),
                     DecontaminateConfig(held_out=[str(held)], semantic=False, check_answers=False))
    assert {r.id for r in ngram_only.dropped} == {"r0"}


def test_missing_held_out_file_is_one_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="held_out: .*nope.jsonl: no such file"):
        run(_records(["x"]), StageContext(progress=False), DecontaminateConfig(held_out=[str(tmp_path / "nope.jsonl")]))


@pytest.mark.slow
def test_cli_and_pipeline_stage(tmp_path: Path):
    from datagen.cli import main
    from datagen.registry import stages

    assert "decontaminate" in stages()
    data = tmp_path / "train.jsonl"
    rows = [{"instruction": HELD_OUT[0]["instruction"], "output": "100"}, {"instruction": CLEAN[0], "output": "ok"}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "clean.jsonl"
    code = main(["decontaminate", "--input", str(data), "--held-out", str(_held_out(tmp_path)), "--out", str(out),
                 "--no-semantic"])
    assert code == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["instruction"] for r in kept] == [CLEAN[0]]


def test_every_user_turn_of_a_dialogue_is_checked(tmp_path: Path):
    from datagen.records import Message

    held = _held_out(tmp_path)

    def chat(i: int, follow_up: str) -> Record:
        msgs = [Message(role="user", content=CLEAN[i]), Message(role="assistant", content="A plain answer."),
                Message(role="user", content=follow_up), Message(role="assistant", content="Another answer.")]
        return Record(id=f"c{i}", instruction=CLEAN[i], output="A plain answer.", messages=msgs)

    records = [
        chat(0, "Quiz: what is the boiling point of water at sea level in degrees Celsius? Be quick."),
        chat(1, "Which three nations share a border with Germany?"),  # a paraphrase, asked second
        chat(2, "Thanks, and how would I do it in Python?"),
    ]
    result = run(records, StageContext(progress=False), DecontaminateConfig(held_out=[str(held)]))
    gone = {r.id: r.meta.drop_detail for r in result.dropped}
    assert set(gone) == {"c0", "c1"}
    assert gone["c0"]["method"] == "ngram" and gone["c0"]["field"] == "user_turn_2"
    assert gone["c1"]["method"] == "embedding" and gone["c1"]["field"] == "user_turn_2"
    assert [r.id for r in result.kept] == ["c2"]
