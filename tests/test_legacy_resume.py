"""A run directory written by the release before the stage registry (datagen 0.1.0) resumes
with no new LLM call but the judge's: cache keys, stage hashes and run files did not move,
except the judge prompts, which now fence every candidate in tags (a prompt-injection defence,
issue 22): their calls are sent once more, and everything else comes from the cache.

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
    from openai_test_server import OpenAITestServer
    from pipeline_responder import reply

    run_dir = tmp_path / "legacy"
    shutil.copytree(LEGACY, run_dir)
    monkeypatch.chdir(ROOT)  # the config names its input and held-out files relative to the checkout
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    server = OpenAITestServer(port=PORT).start()
    prompts: list[str] = []
    server.responder = lambda m, c, s: (prompts.append(m[-1]["content"]), reply(m, c, s))[1]
    try:
        result = Pipeline(validate_config(config, "legacy.yaml")).run(run_dir=run_dir, progress=False)
    finally:
        server.stop()
    # Only the re-fenced judge prompts were sent; teacher, evolution and generation calls all hit the cache.
    assert prompts and all("\n<answer>\n" in p or "\n<response>\n" in p for p in prompts), prompts[:1]
    # The prompts hash covers every bundled prompt, so every stage re-ran, from the cache but for
    # the judge, and landed on the same records.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    legacy_kept = (LEGACY / "decontaminate" / "kept.jsonl").read_text()
    assert len(result.records) == legacy_kept.count("\n") > 0
    legacy_rows = [json.loads(line) for line in legacy_kept.split("\n") if line]
    assert [(r.id, r.output) for r in result.records] == [(r["id"], r["output"]) for r in legacy_rows]
    legacy_kept = (run_dir / "decontaminate" / "kept.jsonl").read_text()  # now with meta.ranked_by
    # Deleting every stage's marker makes each stage re-run: the answers still all come from the cache.
    for marker in run_dir.glob("*/done.json"):
        marker.unlink()
    server = OpenAITestServer(port=PORT).start()
    server.responder = reply
    try:
        rerun = Pipeline(validate_config(config, "legacy.yaml")).run(run_dir=run_dir, progress=False)
        assert server.stats.requests == 0
    finally:
        server.stop()
    assert not any(stage.skipped for stage in rerun.stages)
    assert (run_dir / "decontaminate" / "kept.jsonl").read_text() == legacy_kept
