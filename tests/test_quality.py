"""Quality filter: each heuristic, the judge with a fake backend's messy replies, IFD."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from datagen.context import StageContext
from datagen.llm.base import ChatRequest, Completion, UsageStats
from datagen.records import Record, RecordMeta
from datagen.stages.quality import QualityConfig, parse_judgement, run
from datagen.stages.quality_checks import (
    check_copies_instruction,
    check_empty,
    check_length,
    check_refusal,
    check_repetition,
    check_truncated,
    heuristic_verdict,
)

GOOD = (
    "Photosynthesis is how plants turn light into food. Chlorophyll in the leaves absorbs sunlight, "
    "which powers the conversion of carbon dioxide and water into glucose, releasing oxygen as a by-product."
)


def rec(i: int, instruction: str, output: str, **meta) -> Record:
    return Record(id=f"q{i}", instruction=instruction, output=output, meta=RecordMeta(**meta))


def no_judge(**kw) -> QualityConfig:
    return QualityConfig(judge=False, **kw)


# --------------------------------------------------------------------------------- heuristics


def test_empty():
    assert check_empty("  \n ")[0] == "empty_output"
    assert check_empty("ok") is None


def test_length_bounds_and_classification_exemption():
    assert check_length("Paris", 2, 100)[0] == "output_too_short"
    assert check_length("Paris", 2, 100, exempt_short=True) is None
    assert check_length("Paris is lovely", 2, 100) is None
    reason, detail = check_length("word " * 101, 2, 100)
    assert reason == "output_too_long" and detail == {"words": 101, "max_words": 100}
    cfg = no_judge()
    label = rec(0, "Is this review positive or negative? Great film!", "Positive", is_classification=True)
    assert heuristic_verdict(label, cfg) is None
    assert heuristic_verdict(label.model_copy(update={"meta": RecordMeta()}), cfg)[0] == "output_too_short"


def test_refusal_phrases_anywhere_openers_only_at_start():
    cfg = QualityConfig()
    args = (cfg.refusal_phrases, cfg.refusal_openers, cfg.refusal_window_chars)
    assert check_refusal("Sure. As an AI language model, I think tea is best.", *args)[0] == "refusal"
    assert check_refusal("I\u2019m sorry, but I can\u2019t help with that request.", *args)[0] == "refusal"
    assert check_refusal("I cannot browse the internet.", *args) == ("refusal", {"phrase": "i cannot"})
    # The same words deep inside a real answer are not a refusal.
    long_answer = GOOD + " Some say: I cannot stress enough how important light is."
    assert check_refusal(long_answer, *args) is None
    assert check_refusal(GOOD, *args) is None


def test_repetition_ngram_loop_and_repeated_line():
    loop = "The answer is yes. " * 20
    reason, detail = check_repetition(loop)
    assert reason == "repetitive_output" and detail["signal"] == "ngram" and detail["ratio"] > 0.5
    lines = "Here are the steps:\n" + "Mix the flour with the eggs.\n" * 5 + "Bake."
    reason, detail = check_repetition(lines)
    assert reason == "repetitive_output" and detail["signal"] == "line" and detail["times"] == 5
    assert check_repetition(GOOD * 1) is None
    # Short repeated lines (braces, separators) and a few repeats are normal.
    code = "```python\ndef f(x):\n    if x:\n        return 1\n    }\n    }\n    }\n    }\n```"
    assert check_repetition(code) is None
    steps = "\n".join(
        f"{i}. Add {w} to the bowl and stir well." for i, w in enumerate(["salt", "sugar", "milk"])
    )
    assert check_repetition(steps) is None


def test_truncation_signals_are_conservative():
    assert check_truncated("A complete answer.", finish_reason="length")[0] == "truncated_output"
    assert check_truncated("Here is code:\n```python\nprint('hi')\n")[1]["signal"] == "unclosed_code_block"
    assert (
        check_truncated("The three main causes were taxes, famine, and")[1]["signal"] == "ends_mid_sentence"
    )
    assert (
        check_truncated("Plants need light, water, carbon dioxide, soil nutrients,")[0] == "truncated_output"
    )
    assert check_truncated("To make tea you should first boil the water and then pour it over the")[0]
    # Not truncated: a proper ending, a list without full stops, code, short labels.
    assert check_truncated(GOOD) is None
    assert check_truncated("Shopping list:\n- apples\n- bread\n- milk\n- some cheese for the party") is None
    assert check_truncated("```python\nprint('hi')\n```") is None
    assert check_truncated("and") is None  # too short to judge
    assert check_truncated("Please leave the door open when you come in") is None


def test_copies_instruction_but_echoing_input_is_fine():
    instruction = "Write a haiku about autumn leaves falling."
    assert (
        check_copies_instruction(instruction, "Write a haiku about autumn leaves falling.")[0]
        == "copies_instruction"
    )
    assert check_copies_instruction(instruction, "write a haiku about autumn leaves falling")[0]
    assert (
        check_copies_instruction(instruction, "Crimson leaves drift down / the maple lets go / quiet") is None
    )
    # "Fix the grammar" with an already-correct input: the answer equals the input, not the instruction.
    fix = Record(
        id="g",
        instruction="Correct the grammar of the sentence.",
        input="She walks to school.",
        output="She walks to school.",
    )
    assert heuristic_verdict(fix, no_judge()) is None


def test_run_heuristics_reasons_and_order():
    records = [
        rec(0, "Explain photosynthesis.", GOOD),
        rec(1, "Explain photosynthesis.", ""),
        rec(2, "Explain photosynthesis.", "I'm sorry, but I cannot do that."),
        rec(3, "Explain photosynthesis.", GOOD, answer_finish_reason="length"),
        rec(4, "Explain photosynthesis.", "Explain photosynthesis."),
    ]
    result = run(records, StageContext(progress=False), no_judge())
    assert [r.id for r in result.kept] == ["q0"]
    reasons = {r.id: r.meta.drop_reason for r in result.dropped}
    assert reasons == {
        "q1": "empty_output",
        "q2": "refusal",
        "q3": "truncated_output",
        "q4": "copies_instruction",
    }
    assert all(r.meta.drop_detail is not None or r.meta.drop_reason == "empty_output" for r in result.dropped)
    assert result.stats["heuristic_drops"] == 4
    # Heuristics off: everything passes.
    assert len(run(records, StageContext(progress=False), no_judge(heuristics=False)).kept) == 5


# --------------------------------------------------------------------------------- judge


class FakeJudge:
    """Answers judge prompts with a canned reply chosen by a marker in the instruction."""

    backend = "fake"
    model = "fake-judge"
    name = "fake"

    def __init__(self, replies: dict[str, str | None], structured: bool = False):
        self.replies = replies
        self.supports_json_schema = structured
        self.seen: list[ChatRequest] = []
        self.usage = UsageStats()

    async def generate(self, requests: Sequence[ChatRequest], on_result=None) -> list[Completion]:
        out = []
        for i, req in enumerate(requests):
            self.seen.append(req)
            prompt = req.messages[-1][1]
            reply = next(v for k, v in self.replies.items() if k in prompt)
            c = (
                Completion(error="http_500: boom")
                if reply is None
                else Completion(texts=[reply], finish_reasons=["stop"])
            )
            if on_result:
                on_result(i, c)
            out.append(c)
        return out

    def close(self) -> None:
        pass


MESSY = {
    "TASK-json": '```json\n{"reason": "Correct and complete.", "score": 5}\n```',
    "TASK-prose": "The answer is mostly right but misses one step.\nScore: 4/5",
    "TASK-ten": "I would rate this 9 out of 10. Reason: clear and accurate.",
    "TASK-bold": "**Rating**: 4.5\n**Explanation**: good, minor wording issues",
    "TASK-junk": "This response is fine I guess.",
    "TASK-error": None,
    "TASK-low": '{"score": 2, "reason": "wrong facts"}',
}


def judged(config: QualityConfig, structured: bool = False) -> tuple:
    fake = FakeJudge(MESSY, structured)
    ctx = StageContext(progress=False)
    ctx._llms["fake"] = fake  # the context hands out this backend for spec "fake"
    records = [rec(i, f"{key}: explain photosynthesis.", GOOD) for i, key in enumerate(MESSY)]
    return run(records, ctx, config.model_copy(update={"judge": "fake"})), fake


def test_parse_judgement_messy_replies():
    assert parse_judgement(MESSY["TASK-json"]) == (5.0, "Correct and complete.")
    assert parse_judgement(MESSY["TASK-prose"])[0] == 4.0
    score, reason = parse_judgement(MESSY["TASK-ten"])
    assert score == pytest.approx(1 + 0.9 * 4) and reason == "clear and accurate."
    assert parse_judgement(MESSY["TASK-bold"]) == (4.5, "good, minor wording issues")
    assert parse_judgement(MESSY["TASK-junk"])[0] is None


def test_judge_keeps_at_or_above_min_score_and_explains_drops():
    result, fake = judged(QualityConfig())
    kept = {r.instruction.split(":")[0]: r for r in result.kept}
    assert set(kept) == {"TASK-json", "TASK-bold", "TASK-ten"}  # 5, 4.5 (edge, kept), 4.6
    assert kept["TASK-bold"].meta.scores["quality_judge"] == 4.5
    assert kept["TASK-json"].meta.quality_judge_reason == "Correct and complete."
    reasons = {r.instruction.split(":")[0]: r.meta for r in result.dropped}
    assert reasons["TASK-prose"].drop_reason == "low_judge_score"
    assert (
        reasons["TASK-prose"].drop_detail["score"] == 4.0
        and reasons["TASK-prose"].drop_detail["min_score"] == 4.5
    )
    assert reasons["TASK-low"].drop_detail["judge_reason"] == "wrong facts"
    assert reasons["TASK-junk"].drop_reason == "judge_unparseable"
    assert reasons["TASK-error"].drop_reason == "llm_error"
    assert result.stats["judge_unparseable"] == 1 and result.stats["llm_errors"] == 1
    assert result.stats["judge_requests"] == len(MESSY)
    # No structured output for a backend that cannot do it; deterministic settings.
    assert all(req.response_format is None and req.temperature == 0.0 for req in fake.seen)
    assert "explain photosynthesis" in fake.seen[0].messages[-1][1] and GOOD in fake.seen[0].messages[-1][1]


def test_judge_options_min_score_keep_unparseable_structured():
    result, fake = judged(QualityConfig(min_judge_score=4.0, on_unparseable="keep"), structured=True)
    kept = {r.instruction.split(":")[0] for r in result.kept}
    assert kept == {"TASK-json", "TASK-prose", "TASK-ten", "TASK-bold", "TASK-junk"}
    junk = next(r for r in result.kept if r.instruction.startswith("TASK-junk"))
    assert "quality_judge" not in junk.meta.scores
    schema = json.loads(fake.seen[0].response_format)
    assert schema["type"] == "json_schema" and "score" in schema["json_schema"]["schema"]["properties"]


def test_judge_skips_records_rejected_by_heuristics():
    fake = FakeJudge({"photo": '{"score": 5, "reason": "ok"}'})
    ctx = StageContext(progress=False)
    ctx._llms["fake"] = fake
    records = [rec(0, "Explain photosynthesis.", GOOD), rec(1, "Explain photosynthesis.", "")]
    result = run(records, ctx, QualityConfig(llm="fake"))
    assert len(fake.seen) == 1
    assert [r.id for r in result.kept] == ["q0"]


def test_filter_cli_without_judge(tmp_path):
    from datagen.cli import main
    from datagen.io import read_records, write_records

    src, out, drop = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "drop.jsonl"
    write_records([rec(0, "Explain photosynthesis.", GOOD), rec(1, "Say hi.", "I cannot do that.")], src)
    code = main(
        [
            "filter",
            "--input",
            str(src),
            "--out",
            str(out),
            "--dropped",
            str(drop),
            "--no-judge",
            "--no-progress",
            "--no-cache",
        ]
    )
    assert code == 0
    assert [r.id for r in read_records(out)] == ["q0"]
    assert read_records(drop)[0].meta.drop_reason == "refusal"


# --------------------------------------------------------------------------------- IFD


@pytest.mark.slow
def test_ifd_scores_and_drops():
    helped = rec(
        0,
        "Repeat this sentence exactly: the purple elephant dances on the silver moon tonight.",
        "The purple elephant dances on the silver moon tonight.",
    )
    unrelated = rec(
        1,
        "Name a fruit that is yellow.",
        "The stock market closed higher on Tuesday as investors cheered strong earnings reports.",
    )
    ctx = StageContext(progress=False)
    result = run(
        [helped, unrelated], ctx, QualityConfig(heuristics=False, judge=False, ifd=True, max_ifd=10.0)
    )
    assert len(result.kept) == 2
    ifd = {r.id: r.meta.scores["ifd"] for r in result.kept}
    assert 0 < ifd["q0"] < 1.0  # the instruction makes the answer much easier to predict
    assert ifd["q0"] < ifd["q1"]
    # A max_ifd between the two drops exactly the record the instruction helps less.
    strict = run(
        [helped, unrelated],
        ctx,
        QualityConfig(heuristics=False, judge=False, ifd=True, max_ifd=(ifd["q0"] + ifd["q1"]) / 2),
    )
    assert [r.id for r in strict.kept] == ["q0"]
    gone = strict.dropped[0]
    assert gone.meta.drop_reason == "ifd_too_high"
    assert gone.meta.drop_detail["ifd"] == pytest.approx(ifd["q1"], abs=1e-3)
    assert gone.meta.drop_detail["ppl_conditioned"] > 0


def test_judge_over_real_openai_server_uses_json_schema(openai_server):
    """The OpenAI-compatible path end to end over 127.0.0.1: the schema is sent, and the
    server's schema-shaped reply ({"reason": ..., "score": 4.0}) is parsed."""
    ctx = StageContext(
        llm_spec="openai:judge-model",
        progress=False,
        llm_options={
            "openai": {"base_url": openai_server.base_url, "max_attempts": 2, "backoff_initial": 0.01}
        },
    )
    records = [rec(0, "Explain photosynthesis.", GOOD), rec(1, "Explain why leaves are green.", GOOD)]
    strict = run(records, ctx, QualityConfig())
    assert [r.meta.drop_reason for r in strict.dropped] == ["low_judge_score", "low_judge_score"]
    assert strict.stats["judge_structured_output"] is True
    assert strict.dropped[0].meta.scores["quality_judge"] == 4.0
    lenient = run(records, ctx, QualityConfig(min_judge_score=4.0))
    assert [r.id for r in lenient.kept] == ["q0", "q1"]
    # A request that fails for good (400: never retried) is dropped as llm_error, not lost.
    openai_server.configure(fail_first=10, fail_kind="400")
    failed = run(records[:1], ctx, QualityConfig(min_judge_score=4.0))
    assert failed.dropped[0].meta.drop_reason == "llm_error" and failed.stats["llm_errors"] == 1
    ctx.close()


# --------------------------------------------------------------------------------- context heuristics


@pytest.mark.parametrize(
    "instruction, input_text, flagged",
    [
        ("Summarize the following passage in two sentences.", "", True),
        ("What is the main idea of the text?", "", True),
        ("Convert the given table into a bulleted list.", "", True),
        ("Find the grammatical errors in this sentence.", "", True),
        ("Classify the sentiment of the above review.", "", True),
        ("Summarize the following passage in two sentences.", "Cats sleep most of the day and hunt at night.", False),
        ("Rewrite the following sentence in the passive voice: The dog chased the ball.", "", False),
        ('Translate this sentence into French: "I love reading books."', "", False),
        ("Write a program that, given a list of numbers, returns the largest.", "", False),
        ("Write a short story about a lighthouse keeper.", "", False),
        ("Explain the text of the first amendment.", "", False),
    ],
)
def test_missing_input(instruction, input_text, flagged):
    from datagen.stages.quality_checks import check_missing_input

    verdict = check_missing_input(instruction, input_text)
    assert (verdict is not None and verdict[0] == "missing_input") is flagged, verdict


@pytest.mark.parametrize(
    "input_text, flagged",
    [("<noinput>", True), ("N/A", True), ("  none. ", True), ("<No Input>", True), ("   ", True),
     ("", False), ("Nairobi is the capital of Kenya.", False), ("0", False)],
)
def test_placeholder_input(input_text, flagged):
    from datagen.stages.quality import QualityConfig
    from datagen.stages.quality_checks import check_placeholder_input

    verdict = check_placeholder_input(input_text, QualityConfig().placeholder_inputs)
    assert (verdict is not None and verdict[0] == "placeholder_input") is flagged


@pytest.mark.parametrize(
    "instruction, output, kind",
    [
        ("Tell me about Paris.", "You can read all about it at https://en.wikipedia.org/wiki/Paris.", "link"),
        ("Where can I learn Python?", "Check [this course](http://x.example/python) or www.learnpython.org.", "link"),
        ("Describe the chart.", "As shown in the image, sales grew by 20% in May.", "image"),
        ("Draw a cat.", "Here it is: ![cat](cat.png)", "image"),
        ("Send me the report.", "Please find attached the quarterly report.", "attachment"),
        ("What is the URL of the Python website?", "It is https://www.python.org.", None),
        ("Name a fruit.", "An apple is a common fruit, rich in fibre and vitamin C.", None),
    ],
)
def test_unreachable_reference(instruction, output, kind):
    from datagen.stages.quality_checks import check_unreachable_reference

    verdict = check_unreachable_reference(instruction, output)
    assert (verdict[1]["kind"] if verdict else None) == kind


@pytest.mark.parametrize(
    "instruction, output, flagged",
    [
        ("Write a poem about cats.", "Sure! Here is a poem about cats:", True),
        ("Describe the water cycle in simple terms.", "The water cycle in simple terms.", True),
        ("Write a poem about cats.", "Soft paws on the sill, a cat dreams of summer birds.", False),
        ("What is the capital of France?", "The capital of France is Paris.", False),
        ("Is this review positive or negative?", "Negative", False),  # too few words to judge
    ],
)
def test_restates_instruction(instruction, output, flagged):
    from datagen.stages.quality_checks import check_restates_instruction

    verdict = check_restates_instruction(instruction, output)
    assert (verdict is not None and verdict[0] == "restates_instruction") is flagged


def test_context_reasons_counted_by_the_stage():
    records = [
        Record(id="a", instruction="Summarize the following passage.", output=GOOD),
        Record(id="b", instruction="Explain photosynthesis.", input="<noinput>", output=GOOD),
        Record(id="c", instruction="Explain photosynthesis.", output=GOOD + " See https://example.org/photo."),
        Record(id="d", instruction="Explain how plants make their food from light.",
               output="Sure, here is how plants make their food from light."),
        Record(id="e", instruction="Explain photosynthesis.", output=GOOD),
    ]
    result = run(records, StageContext(progress=False), no_judge())
    assert [r.id for r in result.kept] == ["e"]
    assert result.drop_counts() == {"missing_input": 1, "placeholder_input": 1, "restates_instruction": 1,
                                    "unreachable_reference": 1}
    off = run(records, StageContext(progress=False), no_judge(check_context=False))
    assert len(off.kept) == 5
