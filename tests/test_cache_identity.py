"""Exact cache identity (issue 10): everything that changes an answer is in the key,
nothing that only changes speed is.

Each item is proven both ways: change it -> a cache miss (or a stage that reruns); change a
speed setting -> a hit (or a stage that is skipped).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from datagen.llm import CachedLLM, ChatRequest, make_backend
from datagen.pipeline import Pipeline
from datagen.pipeline_config import validate_config

SCHEMA = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}


def key(spec: str, request: ChatRequest | None = None, **options) -> str:
    return CachedLLM(make_backend(spec, **options), None).key(request or ChatRequest.chat("same question"))


def test_openai_endpoint_is_in_the_key_and_speed_settings_are_not(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    base = key("openai:m", base_url="http://host-a:8000/v1")
    assert key("openai:m", base_url="http://host-b:8000/v1") != base
    assert key("openai:m", base_url="http://host-a:8001/v1") != base
    # One endpoint, other spellings: same key.
    assert key("openai:m", base_url="HTTP://Host-A:8000/v1/") == base
    # Speed only: same key.
    assert key("openai:m", base_url="http://host-a:8000/v1", max_concurrency=3, timeout=5, max_attempts=2,
               backoff_initial=9, retry_after_max=1) == base
    # An endpoint from the environment counts like one from the config.
    monkeypatch.setenv("OPENAI_BASE_URL", "http://host-b:8000/v1")
    assert key("openai:m") == key("openai:m", base_url="http://host-b:8000/v1") != base


def test_json_schema_in_the_key_only_when_really_sent():
    with_schema = ChatRequest.chat("same question", response_format=SCHEMA)
    plain = ChatRequest.chat("same question")
    sends = key("openai:m", with_schema, base_url="http://h/v1")
    ignores = key("openai:m", with_schema, base_url="http://h/v1", supports_json_schema=False)
    assert sends != ignores
    # A backend that does not send the schema answers exactly as without it.
    assert ignores == key("openai:m", plain, base_url="http://h/v1", supports_json_schema=False)
    assert key("local", with_schema) == key("local", plain)


def _fake_model_folder(folder: Path, weights: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    (folder / "model.safetensors").write_bytes(weights)
    return folder


def test_local_folder_retrained_in_place_never_serves_old_answers(tmp_path):
    folder = _fake_model_folder(tmp_path / "model", b"\x00" * 4096)
    before = key(f"local:{folder}")
    assert key(f"local:{folder}") == before  # nothing changed: a hit
    assert key(f"local:{folder}", batch_size=2) == before  # batch size is speed
    os.utime(folder / "model.safetensors", ns=(1, 1))
    mtime_only = key(f"local:{folder}")
    (folder / "model.safetensors").write_bytes(b"\x01" * 4096)  # same size, new weights
    os.utime(folder / "model.safetensors", ns=(1, 1))  # even with the old timestamp
    assert key(f"local:{folder}") not in {before, mtime_only}
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 16}))
    assert key(f"local:{folder}") != before
    assert key(f"local:{folder}", dtype="float32") != key(f"local:{folder}")


def test_vllm_output_options_are_in_the_key_speed_options_are_not(tmp_path):
    folder = _fake_model_folder(tmp_path / "m", b"\x02" * 100)
    base = key(f"vllm:{folder}", dtype="bfloat16", max_model_len=1024)
    assert key(f"vllm:{folder}", dtype="float16", max_model_len=1024) != base
    assert key(f"vllm:{folder}", dtype="bfloat16", max_model_len=1024, quantization="fp8") != base
    assert key(f"vllm:{folder}", dtype="bfloat16", max_model_len=1024, gpu_memory_utilization=0.5,
               max_num_seqs=8, enforce_eager=True, tensor_parallel_size=2) == base


# ---- the stage resume hash ------------------------------------------------------------------


def _run(tmp_path: Path, base_url: str, run_dir: Path, **llm_options):
    data = tmp_path / "data.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps({"instruction": f"Explain idea {i}.", "output": ""}) + "\n"
                                for i in range(4)))
    config = validate_config({
        "name": "ident",
        "llm": "openai:test",
        "llm_options": {"openai": {"base_url": base_url, **llm_options}},
        "input": {"path": str(data)},
        "stages": [{"distill": {"n": 1, "ranker": "none"}}],
        "export": {"formats": ["records"]},
    })
    return Pipeline(config).run(run_dir=run_dir, progress=False)


def test_resume_hash_ignores_speed_but_not_endpoint_or_prompt_overrides(scripted_server, tmp_path, monkeypatch):
    monkeypatch.delenv("DATAGEN_PROMPTS", raising=False)
    run_dir = tmp_path / "run"
    first = _run(tmp_path, scripted_server.base_url, run_dir)
    assert not first.stages[0].skipped
    # Speed settings: skipped, nothing sent.
    scripted_server.reset_stats()
    again = _run(tmp_path, scripted_server.base_url, run_dir, max_concurrency=3, timeout=77, max_attempts=2)
    assert again.stages[0].skipped and scripted_server.stats.requests == 0
    # Same server under another name: a different endpoint, so the stage reruns.
    other_name = scripted_server.base_url.replace("127.0.0.1", "localhost")
    assert not _run(tmp_path, other_name, run_dir).stages[0].skipped
    assert _run(tmp_path, other_name, run_dir).stages[0].skipped
    # A prompt override from the environment: the stage reruns.
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "unused_but_present.txt").write_text("v1")
    monkeypatch.setenv("DATAGEN_PROMPTS", str(prompts))
    assert not _run(tmp_path, other_name, run_dir).stages[0].skipped
    assert _run(tmp_path, other_name, run_dir).stages[0].skipped
    (prompts / "unused_but_present.txt").write_text("v2")
    assert not _run(tmp_path, other_name, run_dir).stages[0].skipped
