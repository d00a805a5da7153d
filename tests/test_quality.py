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
    check_refusal,
    check_repetition,
    check_too_long,
    check_too_short,
    check_truncated,
    first_verdict,
)
from datagen.stages.quality_config import RULE_NAMES

GOOD = (
    "Photosynthesis is how plants turn light into food. Chlorophyll in the leaves absorbs sunlight, "
    "which powers the conversion of carbon dioxide and water into glucose, releasing oxygen as a by-product."
)


def rec(i: int, instruction: str, output: str, input_text: str = "", **meta) -> Record:
    return Record(id=f"q{i}", instruction=instruction, input=input_text, output=output, meta=RecordMeta(**meta))


def no_judge(**kw) -> QualityConfig:
    return QualityConfig(judge=False, **kw)


# --------------------------------------------------------------------------------- heuristics


def test_empty():
    assert check_empty("  \n ")[0] == "empty_output"
    assert check_empty("ok") is None


@pytest.mark.parametrize(
    "instruction, input_text, output, is_classification, short",
    [
        # short is what these tasks ask for
        ("Is this review positive or negative?", "Great film!", "Positive", True, False),
        ("Complete the sentence with one word: Michael Jordan played ___.", "", "basketball", None, False),
        ("How many words are in the sentence below?", "I like tea.", "3", None, False),
        ("What is the chemical symbol for gold?", "", "Au", None, False),
        ("Translate the word into French.", "cheese", "fromage", None, False),
        ("한국의 수도는 어디입니까?", "", "서울", None, False),
        # CJK is counted in characters: a 40-character sentence is long enough
        ("用一句话概括下面这段文字的主要内容。", "……", "周末郊外露营在年轻人中日益流行，既帮助他们缓解压力，也带动了露营装备市场的快速增长。",
         None, False),
        # an explanation, an essay or an open task answered in a word or two is not
        ("Explain why the sky is blue.", "", "Rayleigh scattering.", None, True),
        ("Solve the puzzle and explain your answer.", "", "Ja.", None, True),
        ("Write a short story about a lighthouse keeper.", "", "Sure!", None, True),
        ("为什么冬天会下雪？请解释。", "", "冷。", None, True),
    ],
)
def test_too_short_is_relative_to_the_task_and_script(instruction, input_text, output, is_classification, short):
    record = rec(0, instruction, output, input_text, is_classification=is_classification)
    found = check_too_short(record, min_words=2, min_long_form_words=5)
    assert (found is not None and found[0] == "output_too_short") is short, found


def test_too_long_counts_cjk_in_characters():
    assert check_too_long("word " * 101, 100)[1]["words"] == 101
    assert check_too_long("字" * 151, 100)[1]["words"] == 101  # 151 characters / 1.5, rounded up
    assert check_too_long("字" * 150, 100) is None


def test_refusal_anchored_to_refusal_shapes():
    cfg = QualityConfig()
    args = (cfg.refusal_phrases, cfg.refusal_openers, cfg.refusal_window_chars)
    assert check_refusal("Sure. As an AI language model, I think tea is best.", *args)[0] == "refusal"
    assert check_refusal("I\u2019m sorry, but I can\u2019t help with that request.", *args)[0] == "refusal"
    assert check_refusal("I cannot browse the internet.", *args)[0] == "refusal"
    assert check_refusal("I'm not able to provide a translation of this text.", *args)[0] == "refusal"
    for text in ("抱歉，我无法回答这个问题。", "Lo siento, pero no puedo ayudarte con eso.",
                 "Es tut mir leid, aber ich kann Ihnen dabei nicht helfen.", "Извините, но я не могу помочь."):
        assert check_refusal(text, *args)[0] == "refusal", text
    found = check_refusal("I'm sorry, but I cannot do that.", *args)
    assert found[1]["matched"].startswith("i'm sorry, but i cannot") and found[1]["why"]
    # The same words in prose, a metaphor or a tweet are no refusal.
    for text in (
        GOOD + " Some say: I cannot stress enough how important light is.",
        "I am like a moth to a flame; I can't help but be drawn to the bright lights of the city.",
        "I can't wait to finally leave my coat at home! First day of spring.",
        "People who cannot swim should stay in the shallow end.",
        GOOD,
    ):
        assert check_refusal(text, *args) is None, text


def test_refusal_the_task_asked_for_is_kept():
    email = "Hi Alex,\n\nI'm sorry, but I can't make it on 12 June because I will be travelling."
    assert first_verdict(rec(0, "Reply to the invitation and decline it politely.", email), no_judge()) is None
    assert first_verdict(rec(1, "Summarize the meeting notes.", email), no_judge())[0] == "refusal"


def test_repetition_loops_but_not_lists():
    loop = "The answer is yes and it will always be yes. " * 12
    reason, detail = check_repetition(loop)
    assert reason == "repetitive_output" and detail["signal"] == "ngram" and detail["ratio"] > 0.3
    lines = "Here are the steps:\n" + "Mix the flour with the eggs.\n" * 5 + "Bake."
    reason, detail = check_repetition(lines)
    assert reason == "repetitive_output" and detail["times"] == 5
    assert check_repetition("I love it so much. " * 3)[1]["signal"] == "sentence"
    assert check_repetition("今天天气很好，我们去公园散步吧。" * 6)[0] == "repetitive_output"
    assert check_repetition(GOOD) is None
    # Lists whose items share a prefix, numbered steps, tables and code are not loops.
    shared = "\n".join(f"- Spend more time {w}" for w in ["cooking dinner together", "outdoors on weekends",
                                                          "playing board games", "reading aloud to the kids",
                                                          "visiting grandparents", "walking the dog at dusk"])
    assert check_repetition(shared) is None
    steps = "\n".join(f"{i}. Add the {w} to the bowl and stir well until smooth." for i, w in
                      enumerate(["salt", "sugar", "milk", "butter", "flour", "eggs"], 1))
    assert check_repetition(steps) is None
    assert check_repetition("\n".join(f"7 x {i} = {7 * i}" for i in range(1, 13))) is None
    code = "def f(x):\n    print('-' * 40)\n    g(x)\n    print('-' * 40)\n    h(x)\n    print('-' * 40)\n" * 2
    assert check_repetition(code, code=True) is None
    assert check_repetition("x = 1\n" + "    total = total + value\n" * 6, code=True)[1]["signal"] == "line_run"


def test_truncation_knows_code_and_structure():
    assert check_truncated("A complete answer.", finish_reason="length")[1]["signal"] == "finish_reason_length"
    assert check_truncated("Here is code:\n```python\nprint('hi')\n")[1]["signal"] == "unclosed_code_block"
    assert check_truncated("The three main causes were taxes, famine, and")[1]["signal"] == "ends_mid_sentence"
    assert check_truncated("Plants need light, water, carbon dioxide, soil nutrients,")[0] == "truncated_output"
    assert check_truncated("To make tea you should first boil the water and then pour it over the")[0]
    cut = "Sunlight is a mix of colours. Each colour bends by a different amount, so they spread apart like a"
    assert check_truncated(cut)[0] == "truncated_output"
    assert check_truncated(GOOD[:-40].rstrip())[1]["signal"] == "unfinished_sentence"
    assert check_truncated("秦始皇统一六国后，采取了多项措施。他统一了文字和货币，还推行郡县制，加强中央")[0]
    # Code and SQL: a statement ending in `;` is complete; open brackets and dangling keywords are not.
    sql = "SELECT c.name, SUM(o.total) AS spent\nFROM customers c\nJOIN orders o ON o.customer_id = c.id\nLIMIT 5;"
    assert check_truncated(sql, code=True) is None
    assert check_truncated("CREATE TABLE books (\n  id INTEGER PRIMARY KEY,\n  title TEXT NOT NULL\n);", code=True) is None
    assert check_truncated("CREATE TABLE books (\n  id INTEGER PRIMARY KEY,\n  title TEXT", code=True)[1]["signal"] \
        == "unclosed_brackets"
    assert check_truncated("SELECT name, email FROM users WHERE", code=True)[1]["signal"] == "ends_mid_statement"
    # Not truncated: a proper ending, a list without full stops, a closed code block, a poem, labels.
    assert check_truncated(GOOD) is None
    assert check_truncated("Shopping list:\n- apples\n- bread\n- milk\n- some cheese for the party") is None
    assert check_truncated("```python\nprint('hi')\n```") is None
    assert check_truncated("and") is None
    assert check_truncated("Please leave the door open when you come in") is None
    assert check_truncated("春风拂面柳丝长，燕子归来觅旧梁") is None
    letter = "Dear Ms. Patel,\n\nI'm sorry your order arrived four days later than promised.\n\nKind regards,\nThe Team"
    assert check_truncated(letter) is None


def test_copies_instruction_but_echoing_input_is_fine():
    instruction = "Write a haiku about autumn leaves falling."
    assert check_copies_instruction(instruction, "Write a haiku about autumn leaves falling.")[0] == "copies_instruction"
    assert check_copies_instruction(instruction, "write a haiku about autumn leaves falling")[0]
    assert check_copies_instruction(instruction, "Crimson leaves drift down / the maple lets go / quiet") is None
    assert check_copies_instruction("写一首关于秋天的诗。", "写一首关于秋天的诗")[0] == "copies_instruction"
    # "Fix the grammar" with an already-correct input: the answer equals the input, not the instruction.
    fix = rec(0, "Correct the grammar of the sentence.", "She walks to school.", "She walks to school.")
    assert first_verdict(fix, no_judge()) is None


def test_heuristics_turned_off_and_on_by_name():
    refusal = rec(0, "Say hi.", "I cannot do that for you.")
    assert first_verdict(refusal, no_judge())[0] == "refusal"
    assert first_verdict(refusal, no_judge(keep_heuristics=["refusal"])) is None
    cut = rec(1, "Explain photosynthesis.", GOOD, answer_finish_reason="length")
    assert first_verdict(cut, no_judge(check_truncation=False)) is None
    assert first_verdict(cut, no_judge(check_truncation=False, drop_heuristics=["truncated_output"]))[0] \
        == "truncated_output"
    with pytest.raises(ValueError, match="unknown heuristic 'refusals'"):
        no_judge(keep_heuristics=["refusals"])
    with pytest.raises(ValueError, match="pick one"):
        no_judge(keep_heuristics=["refusal"], drop_heuristics=["refusal"])
    assert len(RULE_NAMES) == len(set(RULE_NAMES))


def test_run_heuristics_reasons_and_order():
    records = [
        rec(0, "Explain photosynthesis.", GOOD),
        rec(1, "Explain photosynthesis.", ""),
        rec(2, "Explain photosynthesis.", "I'm sorry, but I cannot do that."),
        rec(3, "Explain photosynthesis.", GOOD, answer_finish_reason="length"),
        rec(4, "Explain how photosynthesis turns light into food.", "Explain how photosynthesis turns light into food."),
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
        ("Give a Linux shell command that lists the ten largest files under the current directory.", "", False),
        ("Identify the dominant mood of these lines: joyful, melancholic, tense, or peaceful.", "", True),
        ("Sort this email into one of: Primary, Promotions, Social, or Updates.", "", True),
        ("Sort these words alphabetically: pear, apple, fig, banana", "", False),
        ("用一句话概括下面这段文字的主要内容。", "", True),
        ("次の文章を要約してください。", "", True),
        ("다음 문장을 영어로 번역하세요.", "", True),
        ("Resume el siguiente texto en una frase.", "", True),
        ("Fasse den folgenden Text zusammen.", "", True),
        ("Переведи следующий текст на английский.", "", True),
        ("لخص النص التالي.", "", True),
        ("把这句话翻译成英文：「我明天要去北京出差。」", "", False),
    ],
)
def test_missing_input(instruction, input_text, flagged):
    from datagen.stages.quality_context import check_missing_input

    verdict = check_missing_input(instruction, input_text)
    assert (verdict is not None and verdict[0] == "missing_input") is flagged, verdict


@pytest.mark.parametrize(
    "input_text, flagged",
    [("<noinput>", True), ("N/A", True), ("  none. ", True), ("<No Input>", True), ("   ", True),
     ("", False), ("Nairobi is the capital of Kenya.", False), ("0", False)],
)
def test_placeholder_input(input_text, flagged):
    from datagen.stages.quality import QualityConfig
    from datagen.stages.quality_context import check_placeholder_input

    verdict = check_placeholder_input(input_text, QualityConfig().placeholder_inputs)
    assert (verdict is not None and verdict[0] == "placeholder_input") is flagged


@pytest.mark.parametrize(
    "instruction, output, kind",
    [
        ("Tell me about Paris.", "You can read all about it at https://en.wikipedia.org/wiki/Paris.", "link"),
        ("Explain recursion.", "Check [this course](http://x.example/python) or www.learnpython.org.", "link"),
        ("Where can I learn Python?", "Check [this course](http://x.example/python) or www.learnpython.org.", None),
        ("Describe the chart.", "As shown in the image, sales grew by 20% in May.", "image"),
        ("Draw a cat.", "Here it is: ![cat](cat.png)", "image"),
        ("Send me the report.", "Please find attached the quarterly report.", "attachment"),
        ("What is the URL of the Python website?", "It is https://www.python.org.", None),
        ("Name a fruit.", "An apple is a common fruit, rich in fibre and vitamin C.", None),
    ],
)
def test_unreachable_reference(instruction, output, kind):
    from datagen.stages.quality_context import check_unreachable_reference

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
        ("What is the capital of Australia, Sydney or Canberra?", "The capital of Australia is Canberra.", False),
        ("Sort these words alphabetically: pear, apple, fig, banana", "apple, banana, fig, pear", False),
    ],
)
def test_restates_instruction(instruction, output, flagged):
    from datagen.stages.quality_context import check_restates_instruction

    verdict = check_restates_instruction(rec(0, instruction, output))
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
