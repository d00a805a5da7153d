"""The end of `datagen run` says where the wall time went: each stage, export, fine-tuning, total."""

from __future__ import annotations

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
        row = next(line for line in summary.splitlines() if line.startswith(f"│ {label} "))
        assert row.rstrip(" │").split()[-1].replace(".", "", 1).isdigit(), row
