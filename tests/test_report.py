"""Report pieces: totals over resumed runs, labelled axes, the finetune and evaluation sections."""

from __future__ import annotations

import json
from pathlib import Path

from datagen.report import build_report, run_totals, svg_histogram, svg_intervals, svg_lines


def _stage(label: str, calls: int, skipped: bool, cost: float) -> dict:
    return {"stage": label, "label": label, "in": 5, "out": 4, "dropped": 1, "skipped": skipped, "cost_usd": cost,
            "llm_usage": {"openai:m": {"calls": calls, "cache_hits": 1, "prompt_tokens": 10, "completion_tokens": 5}}}


def test_totals_count_stages_skipped_on_a_resumed_run():
    stages = [_stage("distill", 100, True, 0.5), _stage("quality", 29, False, 0.25)]
    totals = run_totals(stages)
    assert totals["calls"] == 129 and totals["calls_this_run"] == 29
    assert totals["cost_usd"] == 0.75 and totals["tokens"] == 30 and totals["cache_hits"] == 2


def test_report_header_after_a_resumed_run(tmp_path: Path):
    manifest = {"name": "r", "status": "finished", "input": {"records": 5},
                "stages": [_stage("distill", 100, True, 0.5), _stage("quality", 29, True, 0.25)],
                "llm_usage_total": {"calls": 0}, "cost_usd_total": 0.0}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    html = build_report(tmp_path)
    assert "LLM calls 129 (0 on this run" in html and "cost $0.7500" in html


def test_histogram_axes_are_labelled():
    svg = svg_histogram([1, 2, 2, 3], "Answer length", x_label="words per answer")
    assert "words per answer" in svg and ">records<" in svg


def test_line_chart_and_interval_chart():
    svg = svg_lines({"train loss": [(1, 2.0), (2, 1.5)], "eval loss": [(0, 2.2)]}, "Loss", "step", "loss")
    assert svg.count("<circle") == 3 and "<polyline" in svg and ">step<" in svg
    chart = svg_intervals([("a vs b", 0.6, 0.5, 0.7)], "Win-rates")
    assert "0.600 [0.500, 0.700]" in chart
    assert "nothing to show" in svg_intervals([], "Win-rates")


def test_judge_scores_show_the_scale_their_judge_used() -> None:
    from datagen.report import judge_scales

    stages = [{"stage": "distill", "stats": {"judge_scale": [1, 10]}},
              {"stage": "quality", "stats": {"judge_scale": [1, 5]}},
              {"stage": "dedup", "stats": {}}]
    assert judge_scales(stages) == {"judge": (1.0, 10.0), "quality_judge": (1.0, 5.0)}


def test_scores_section_agrees_with_the_profile(tmp_path: Path) -> None:
    """Final records without a score say so and name the stages whose records had one; final
    records with scores get their histogram on the judge's scale."""
    from datagen.report_quality import scores_section

    unscored = [{"id": "a", "meta": {"scores": {"max_sim": 0.4}}}]
    text = scores_section(unscored, {"distill": {"judge": [5.0, 4.0]}, "dedup": {}}, {})
    assert "none of the 1 final records carries a score" in text and "distill: judge (n=2)" in text
    scored = [{"id": "a", "meta": {"scores": {"quality_judge": 5.0}}}]
    text = scores_section(scored, {}, {"quality_judge": (1.0, 5.0)})
    assert "score: quality_judge (judge scale 1-5)" in text and "none of" not in text


def test_heuristic_drops_listed_with_rule_match_and_reason(tmp_path: Path) -> None:
    from datagen.report_quality import heuristic_drops_section

    (tmp_path / "quality").mkdir()
    gone = {"id": "x", "meta": {"drop_reason": "refusal",
                                "drop_detail": {"matched": "i cannot do that", "why": "the answer opens with a refusal"}}}
    judged = {"id": "y", "meta": {"drop_reason": "low_judge_score", "drop_detail": {"score": 2}}}
    (tmp_path / "quality" / "dropped.jsonl").write_text(json.dumps(gone) + "\n" + json.dumps(judged) + "\n")
    text = heuristic_drops_section(tmp_path, [{"stage": "quality", "label": "quality"}])
    assert "<td><bdi>refusal</bdi></td><td><bdi>i cannot do that</bdi></td><td><bdi>the answer opens with a refusal</bdi></td>" in text
    assert "low_judge_score" not in text
    assert heuristic_drops_section(tmp_path, [{"stage": "dedup", "label": "dedup"}]) == ""
