"""Make tests/data/legacy_run: a run dir written by datagen 0.1.0 (before the stage registry)."""
import shutil
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from openai_test_server import OpenAITestServer
from pipeline_responder import reply

from datagen.pipeline import Pipeline
from datagen.pipeline_config import validate_config

PORT = 38517
out = Path("tests/data/legacy_run")
shutil.rmtree(out, ignore_errors=True)
server = OpenAITestServer(port=PORT).start()
server.responder = reply
config = {
    "name": "legacy", "seed": 3, "llm": "openai:test",
    "llm_options": {"openai": {"base_url": f"http://127.0.0.1:{PORT}/v1", "max_concurrency": 4}},
    "input": {"path": "tests/data/legacy_input.jsonl"},
    "stages": [
        {"self_instruct": {"num_instructions": 4, "request_batch_size": 2, "include_seeds": True}},
        {"evol_instruct": {"rounds": 1}},
        {"distill": {"n": 2, "ranker": "judge"}},
        {"dedup": {"semantic": False}},
        {"quality": {"judge": True, "min_judge_score": 1.0}},
        {"decontaminate": {"held_out": ["tests/data/legacy_heldout.jsonl"], "semantic": False}},
    ],
    "export": {"formats": ["alpaca", "records"]},
}
result = Pipeline(validate_config(config, "legacy.yaml")).run(run_dir=out, progress=False)
print(len(result.records), "records;", server.stats.requests, "requests")
server.stop()
