"""The end of `datagen run` says where the wall time went: each stage, export, fine-tuning, total."""

from __future__ import annotations

import io
import json
from pathlib import Path

from test_pipeline import _light_config, _records_file

from datagen.pipeline import Pipeline
from datagen.pipeline_config import validate_config


def test_run_prints_and_records_per_stage_and_total_seconds(tmp_path: Path, openai_server, capsys) -> None:
    from pipeline_responder import reply

    openai_server.responder = reply
    try:
        config = validate_config(_light_config(openai_server.base_url, _records_file(tmp_path)), "t.yaml")
        Pipeline(config).run(run_dir=tmp_path / "run", progress=True)
    finally:
        openai_server.responder = None
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    stage_seconds = sum(s["seconds"] for s in manifest["stages"])
    assert manifest["wall_seconds"] >= stage_seconds + manifest["export_seconds"]
    assert "finetune_seconds" not in manifest  # this pipeline does not fine-tune

    printed = capsys.readouterr().err
    summary = printed[printed.index("datagen run t: finished") :]
    for label in ("distill", "dedup", "quality", "export", "total"):
        row = next(line for line in summary.splitlines() if line.split()[:1] == [label])
        assert row.split()[-1].isdigit(), row


def test_summary_table_fits_80_columns_one_line_per_stage() -> None:
    """Long drop reasons become coded, explained in the caption: no row wraps at 80 columns."""
    from rich.console import Console

    from datagen.report import reason_codes, summary_table

    reasons = {"output_too_short": 12, "truncated_output": 6, "ends_mid_sentence_truncated": 3, "refusal": 1}
    manifest = {"name": "quickstart", "status": "finished", "wall_seconds": 289.0, "export_seconds": 0.4,
                "stages": [{"label": "self_instruct", "in": 175, "out": 120, "dropped": 55, "seconds": 194.2,
                            "drop_reasons": {"near_duplicate_rouge": 40, "llm_error": 15},
                            "llm_usage": {"local": {"calls": 1234, "cache_hits": 0, "prompt_tokens": 912345,
                                                    "completion_tokens": 123456}}},
                           {"label": "quality", "in": 120, "out": 98, "dropped": 22, "seconds": 8.0,
                            "drop_reasons": reasons, "skipped": True}]}
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(summary_table(manifest))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines)
    assert sum("self_instruct" in line for line in lines) == 1 and sum("quality" in line for line in lines) == 1
    codes = reason_codes(list(reasons))
    assert len(set(codes.values())) == len(codes)  # unique even where initials clash
    text = "\n".join(lines)
    assert all(f"{code} = {reason}" in " ".join(text.split()) for reason, code in codes.items())
