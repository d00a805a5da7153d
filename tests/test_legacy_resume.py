"""A run directory written by the release before the stage registry (datagen 0.1.0) resumes
with zero new LLM calls: cache keys, stage hashes and run files did not move.

`tests/data/legacy_run/` was made once by `tests/data/make_legacy_run.py` with datagen 0.1.0
against the scripted loopback server on port 38517 (the endpoint URL is part of the cache
identity, so the server must answer on that port again).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from datagen.pipeline import Pipeline
from datagen.pipeline_config import validate_config

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "tests" / "data" / "legacy_run"
PORT = 38517


def test_legacy_run_dir_resumes_without_a_call(tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "legacy"
    shutil.copytree(LEGACY, run_dir)
    monkeypatch.chdir(ROOT)  # the config names its input and held-out files relative to the checkout
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    result, requests = _run_on_the_legacy_port(config, run_dir)
    assert requests == 0
    # Stages whose options are unchanged skip; the two whose defaults 0.2 changed on purpose (the
    # quality rules, CJK-aware novelty) re-run, from the cache alone, and land on the same records.
    skipped = {stage.label for stage in result.stages if stage.skipped}
    assert {"evol_instruct", "distill", "dedup"} <= skipped, skipped
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    legacy_kept = (LEGACY / "decontaminate" / "kept.jsonl").read_text()
    assert len(result.records) == legacy_kept.count("\n") > 0
    # Deleting every stage's marker makes each stage re-run: the answers still all come from the cache.
    for marker in run_dir.glob("*/done.json"):
        marker.unlink()
    rerun, requests = _run_on_the_legacy_port(config, run_dir)
    assert requests == 0
    assert not any(stage.skipped for stage in rerun.stages)
    assert (run_dir / "decontaminate" / "kept.jsonl").read_text() == legacy_kept


def _run_on_the_legacy_port(config: dict, run_dir: Path) -> tuple:
    """Run the pipeline with the scripted server on the port the legacy run used; (result, requests)."""
    from openai_test_server import OpenAITestServer
    from pipeline_responder import reply

    server = OpenAITestServer(port=PORT).start()
    server.responder = reply
    try:
        result = Pipeline(validate_config(config, "legacy.yaml")).run(run_dir=run_dir, progress=False)
        return result, server.stats.requests
    finally:
        server.stop()
