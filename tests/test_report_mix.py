"""The report's language mix and tokens-per-exported-record sections."""

from __future__ import annotations

from datagen.languages import language_of
from datagen.report_mix import language_section, tokens_per_record


def test_language_of_tells_scripts_and_latin_languages_apart():
    assert language_of("Write a short poem about the sea.") == "en"
    assert language_of("请写一首关于大海的诗。") == "zh"
    assert language_of("海についての詩を書いてください。") == "ja"
    assert language_of("바다에 대한 시를 써 주세요.") == "ko"
    assert language_of("Écris un poème sur la mer et le vent.") == "fr"
    assert language_of("写一个 Python 函数 to sort a list") == "zh"
    assert language_of("12345 !!") == "und"


def test_language_section_counts_final_records():
    final = [{"instruction": "Write a poem about the sea."}, {"instruction": "请写一首关于大海的诗。"},
             {"instruction": "Explain how the tides work."}]
    section = language_section(final)
    assert "<td>en</td><td>2</td><td>67%</td>" in section and "<td>zh</td><td>1</td>" in section
    assert language_section([]) == ""


def test_tokens_per_record_divides_each_stage_by_the_exported_count():
    stages = [{"label": "magpie", "llm_usage": {"local": {"prompt_tokens": 3000, "completion_tokens": 5000}}},
              {"label": "dedup", "llm_usage": {}}]
    [row] = tokens_per_record(stages, 100)
    assert row == {"stage": "magpie", "prompt_tokens": 3000, "generated_tokens": 5000,
                   "prompt_per_record": 30.0, "generated_per_record": 50.0}
