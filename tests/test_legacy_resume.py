"""A run directory written by the release before the stage registry (datagen 0.1.0) resumes
from its cache: cache keys, stage hashes and run files did not move under the refactor.

`tests/data/legacy_run/` was made once by `tests/data/make_legacy_run.py` with datagen 0.1.0
against the scripted loopback server on port 38517 (the endpoint URL is part of the cache
identity, so the server must answer on that port again).

0.2 changed one thing on purpose that reaches the cache: the judge prompts now fence each
candidate (so an answer cannot talk the judge into a score). Those judge calls are sent once
more; every teacher, evolution and generation call still comes from the cache.
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


def test_legacy_run_dir_resumes_from_its_cache(tmp_path: Path, monkeypatch) -> None:
    run_dir = tmp_path / "legacy"
    shutil.copytree(LEGACY, run_dir)
    monkeypatch.chdir(ROOT)  # the config names its input and held-out files relative to the checkout
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    result, prompts = _run_on_the_legacy_port(config, run_dir)
    # Only the re-fenced judge prompts were sent; teacher, evolution and generation calls hit the cache.
    assert prompts and all("\n<answer>\n" in p or "\n<response>\n" in p for p in prompts), prompts[:1]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    legacy_kept = (LEGACY / "decontaminate" / "kept.jsonl").read_text()
    legacy_rows = [json.loads(line) for line in legacy_kept.split("\n") if line]
    assert [(r.id, r.output) for r in result.records] == [(r["id"], r["output"]) for r in legacy_rows]
    now_kept = (run_dir / "decontaminate" / "kept.jsonl").read_text()  # now with meta.ranked_by

    # Identical rerun: every stage skipped, not one call.
    again, prompts = _run_on_the_legacy_port(config, run_dir)
    assert prompts == [] and all(stage.skipped for stage in again.stages)
    # Deleting every stage's marker makes each stage re-run: the answers all come from the cache.
    for marker in run_dir.glob("*/done.json"):
        marker.unlink()
    rerun, prompts = _run_on_the_legacy_port(config, run_dir)
    assert prompts == [] and not any(stage.skipped for stage in rerun.stages)
    assert (run_dir / "decontaminate" / "kept.jsonl").read_text() == now_kept


def _run_on_the_legacy_port(config: dict, run_dir: Path) -> tuple:
    """Run with the scripted server on the legacy run's port: (result, the prompts it was sent)."""
    from openai_test_server import OpenAITestServer
    from pipeline_responder import reply

    server = OpenAITestServer(port=PORT).start()
    prompts: list[str] = []
    server.responder = lambda m, c, s: (prompts.append(m[-1]["content"]), reply(m, c, s))[1]
    try:
        return Pipeline(validate_config(config, "legacy.yaml")).run(run_dir=run_dir, progress=False), prompts
    finally:
        server.stop()
