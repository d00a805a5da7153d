"""A small finished run directory for the card, push, viewer and review tests.

evol_instruct → distill (2 candidates, judged) → dedup → quality over the scripted loopback
server (tests/pipeline_responder.py), so every page of the viewer has something to show:
lineage across stages, candidates with scores, a drop reason. Two input records carry HTML
that must show as text (`<script>`, `<img onerror>`, a `javascript:` link).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

XSS_INSTRUCTION = "Explain <script>window.__xss = 1</script> and <img src=x onerror=\"window.__xss=2\"> please."
XSS_OUTPUT = "<a href=\"javascript:window.__xss=3\">click</a> & <b>bold</b>"


def run_config(base_url: str, records: Path, **export: Any) -> dict[str, Any]:
    return {
        "name": "review",
        "llm": "openai:test",
        "llm_options": {"openai": {"base_url": base_url, "max_concurrency": 4, "backoff_initial": 0.01,
                                   "backoff_max": 0.05}},
        "input": {"path": str(records)},
        "stages": [{"evol_instruct": {"rounds": 1}}, {"distill": {"n": 2}}, {"dedup": {"semantic": False}},
                   {"quality": {"min_judge_score": 4.0}}],
        "export": {"formats": ["alpaca", "sharegpt", "messages", "records", "hf"], "license": "cc-by-4.0",
                   **export},
    }


def input_records(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    rows = [{"instruction": f"Explain topic number {i} in detail.", "input": "", "output": ""} for i in range(6)]
    rows.append({"instruction": XSS_INSTRUCTION, "input": "", "output": XSS_OUTPUT})
    rows.append({"instruction": "explain topic number 0 in detail", "input": "", "output": ""})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make_run(tmp_path: Path, base_url: str, **export: Any) -> Path:
    from datagen.pipeline import Pipeline
    from datagen.pipeline_config import validate_config

    config = validate_config(run_config(base_url, input_records(tmp_path), **export), "review.yaml")
    run_dir = tmp_path / "run"
    Pipeline(config).run(run_dir=run_dir, progress=False)
    return run_dir
