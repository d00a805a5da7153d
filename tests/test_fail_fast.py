"""Errors no retry can fix stop the run within the requests in flight (issue 10).

Everything goes over real sockets to the loopback server, which counts what it received:
"stops at once" is checked as a request count, never as a duration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.errors import FatalLLMError, failure_reason
from datagen.llm import ChatRequest, ResponseCache, generate_sync, make_llm

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-wrong-key-1234"


def make(server, **options):
    options.setdefault("backoff_initial", 0.01)
    options.setdefault("backoff_max", 0.02)
    options.setdefault("timeout", 10.0)
    return make_llm("openai:test", cache=options.pop("cache", None), base_url=server.base_url, api_key=SECRET,
                    **options)


def prompts(count: int) -> list[ChatRequest]:
    return [ChatRequest.chat(f"q{i}") for i in range(count)]


def test_wrong_key_stops_within_one_wave(openai_server):
    openai_server.configure(api_key="the-right-key", latency=0.05)
    llm = make(openai_server, max_concurrency=8)
    with pytest.raises(FatalLLMError, match="check OPENAI_API_KEY"):
        generate_sync(llm, prompts(200))
    # At most the requests already in flight when the first 401 came back.
    assert openai_server.stats.requests <= 8
    # The backend stays stopped: a later batch sends nothing.
    before = openai_server.stats.requests
    with pytest.raises(FatalLLMError):
        generate_sync(llm, prompts(3))
    assert openai_server.stats.requests == before


def test_unknown_model_names_what_the_server_serves(openai_server):
    openai_server.configure(served_models=("smol", "llama-3-8b"))
    llm = make(openai_server, max_concurrency=4)
    with pytest.raises(FatalLLMError) as raised:
        generate_sync(llm, prompts(50))
    message = str(raised.value)
    assert "model 'test' not served at" in message and "served: smol, llama-3-8b" in message
    assert openai_server.stats.requests <= 4


def test_a_400_for_every_request_shape_is_fatal_but_one_records_400_is_not(openai_server):
    llm = make(openai_server, max_concurrency=1)
    openai_server.configure(fail_first=100, fail_kind="400")
    with pytest.raises(FatalLLMError, match="request shape is rejected"):
        generate_sync(llm, prompts(30))
    assert openai_server.stats.requests == 3

    # Once the endpoint has answered, a 400 belongs to its record: dropped, the run goes on.
    openai_server.reset()
    llm = make(openai_server, max_concurrency=1)
    [ok] = generate_sync(llm, [ChatRequest.chat("fine")])
    assert ok.ok
    openai_server.configure(fail_first=100, fail_kind="400")
    results = generate_sync(llm, prompts(5))
    assert [failure_reason(r) for r in results] == ["llm_error"] * 5


def test_context_too_long_is_the_records_own_reason(openai_server):
    openai_server.configure(max_prompt_words=50)
    llm = make(openai_server, max_concurrency=4)
    long_prompt = "word " * 5000  # ~25k characters, the size that vLLM refused in the issue
    results = generate_sync(llm, [ChatRequest.chat("short one"), ChatRequest.chat(long_prompt),
                                  ChatRequest.chat("another short")])
    assert [failure_reason(r) for r in results] == [None, "context_too_long", None]
    assert results[1].error.startswith("context_too_long: This model's maximum context length")
    assert llm.usage.failed_requests() == 0  # does not count against max_error_rate


def test_dead_endpoint_is_fatal_not_thousands_of_drops():
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = make_llm("openai:test", cache=None, base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET,
                   max_attempts=2, backoff_initial=0.001, backoff_max=0.002, max_concurrency=4)
    with pytest.raises(FatalLLMError, match="cannot reach"):
        generate_sync(llm, prompts(500))


def test_errors_and_empty_replies_are_never_cached(openai_server, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    openai_server.responder = lambda messages, k, seed: "" if "empty" in messages[-1]["content"] else "fine"
    try:
        llm = make(openai_server, cache=cache)
        empty, fine = generate_sync(llm, [ChatRequest.chat("empty please"), ChatRequest.chat("x")])
        assert failure_reason(empty) == "empty_reply" and fine.ok
        assert len(cache) == 1
        again = generate_sync(make(openai_server, cache=cache), [ChatRequest.chat("empty please")])
        assert not again[0].cached  # asked again, not served from the cache
    finally:
        openai_server.responder = None


def _datagen(args: list[str], env_extra: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "DATAGEN_CACHE": str(cwd / "cache"),
           **env_extra}
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_cli_wrong_key_exits_non_zero_with_one_line(openai_server, tmp_path):
    """The issue's reproduction: self-instruct with a wrong key used to exit 0 after 50 401s."""
    openai_server.configure(api_key="the-right-key")
    proc = _datagen(["self-instruct", "--num", "20", "--llm", "openai:test", "--base-url", openai_server.base_url,
                     "--out", str(tmp_path / "si.jsonl"), "--no-progress"],
                    {"OPENAI_API_KEY": SECRET}, tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("datagen: error:")]
    assert len(error_lines) == 1 and "check OPENAI_API_KEY" in error_lines[0]
    assert "Traceback" not in proc.stderr and SECRET not in proc.stderr
    assert openai_server.stats.requests <= 64  # one wave at the default concurrency
    assert not (tmp_path / "si.jsonl").exists()


def test_pipeline_stage_that_mostly_failed_is_not_done_and_rerun_resends_only_failures(openai_server, tmp_path):
    """20 records, 5 distill requests fail for good: above max_error_rate the stage fails
    without done.json; once the server is healthy the rerun sends only those 5."""
    import yaml
    from pipeline_responder import reply

    openai_server.responder = reply
    try:
        records = [{"instruction": f"Explain topic number {i} in one paragraph.", "input": "", "output": ""}
                   for i in range(20)]
        data = tmp_path / "data.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in records))
        config = {
            "name": "errs",
            "llm": "openai:test",
            "llm_options": {"openai": {"base_url": openai_server.base_url, "max_attempts": 2,
                                       "backoff_initial": 0.001, "backoff_max": 0.002}},
            "input": {"path": str(data)},
            "stages": [{"distill": {"n": 1, "ranker": "none"}}],
            "export": {"formats": ["records"]},
        }
        path = tmp_path / "p.yaml"
        path.write_text(yaml.safe_dump(config))
        failing = [f"Explain topic number {i} in one paragraph." for i in range(5)]
        openai_server.configure(fail_first=100, fail_kind="500", fail_prompts=tuple(failing))
        proc = _datagen(["run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"],
                        {"OPENAI_API_KEY": SECRET}, tmp_path)
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert "max_error_rate" in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "run" / "distill" / "done.json").exists()
        sent_first = openai_server.stats.requests

        openai_server.reset()
        openai_server.responder = reply
        proc = _datagen(["run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress"],
                        {"OPENAI_API_KEY": SECRET}, tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (tmp_path / "run" / "distill" / "done.json").exists()
        assert openai_server.stats.requests == 5  # only the calls that failed before
        assert sent_first == 15 + 5 * 2  # 15 answered once + 5 tried twice
    finally:
        openai_server.responder = None
