"""The Batch API path over real sockets: files + batches on the loopback server, split at the
file limits, answers committed to the cache, failures and expiry resubmitted, kill -9 and
rerun re-attaching to the batches already created, cost at the batch price."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datagen.llm import ChatRequest, ResponseCache, generate_sync, make_llm
from datagen.llm.batch_api import split_lines
from datagen.llm.budget import Budget, Rate

ROOT = Path(__file__).resolve().parent.parent
FAST = {"poll_initial": 0.05, "poll_max": 0.2}


def make(server, cache, **batch_options):
    return make_llm("openai:test", cache=cache, base_url=server.base_url, api_key="k", batch=True,
                    batch_options={**FAST, **batch_options})


def prompts(count: int, tag: str = "b") -> list[ChatRequest]:
    return [ChatRequest.chat(f"{tag}{i}", max_tokens=20) for i in range(count)]


def test_split_lines_respects_request_and_byte_limits():
    lines = [b"x" * 10] * 7
    assert split_lines(lines, max_requests=3, max_bytes=1000) == [[0, 1, 2], [3, 4, 5], [6]]
    assert split_lines(lines, max_requests=100, max_bytes=25) == [[0, 1], [2, 3], [4, 5], [6]]
    with pytest.raises(ValueError, match="over the 5-byte file limit"):
        split_lines(lines, max_requests=100, max_bytes=5)


def test_batch_answers_match_live_ones_and_land_in_the_cache(openai_server, tmp_path):
    cache = ResponseCache(tmp_path / "cache.sqlite")
    llm = make(openai_server, cache, max_requests_per_file=4)
    results = generate_sync(llm, prompts(10))
    assert [r.text for r in results] == [f"echo: b{i} #0" for i in range(10)]
    stats = openai_server.stats
    assert stats.batches_created == 3 and stats.batch_requests == 10  # split at 4 per file
    assert stats.requests == 0  # nothing went to /chat/completions
    state = json.loads((tmp_path / "batches.json").read_text())
    assert len(state["batches"]) == 3 and all(b["collected"] for b in state["batches"])
    # Every answer is in the cache: a rerun sends nothing.
    again = generate_sync(make(openai_server, cache), prompts(10))
    assert all(r.cached for r in again) and openai_server.stats.batches_created == 3
    cache.close()


def test_failed_and_expired_requests_are_resubmitted(openai_server, tmp_path):
    openai_server.configure(batch_fail_rate=0.25, batch_expire_rate=0.2)
    cache = ResponseCache(tmp_path / "cache.sqlite")
    # Each attempt of a request fails with p = 0.45 (drawn from its custom_id, which holds the
    # server's port): 8 rounds left 40 requests ~7 % likely to see one fail every time (flaky);
    # 16 rounds make that ~1e-4.
    llm = make(openai_server, cache, max_rounds=16)
    results = generate_sync(llm, prompts(40, "f"))
    assert [r.error for r in results] == [None] * 40
    assert [r.text for r in results] == [f"echo: f{i} #0" for i in range(40)]
    stats = openai_server.stats
    assert stats.batches_created > 1  # the first batch left failures behind
    assert stats.batch_requests > 40
    assert len(cache) == 40
    cache.close()


def test_batch_cost_uses_the_batch_price(openai_server, tmp_path, monkeypatch):
    monkeypatch.setenv("DATAGEN_CACHE", str(tmp_path))  # no cache: batch ids go to the user cache dir
    budget = Budget(10.0)
    rate = Rate(100.0, 1000.0, batch_share=0.5)
    llm = make_llm("openai:test", cache=None, base_url=openai_server.base_url, api_key="k", batch=True,
                   batch_options=FAST, budget=budget, price=rate)
    results = generate_sync(llm, prompts(6, "c"))
    full = sum(rate.cost(r.prompt_tokens, r.completion_tokens) for r in results)
    assert budget.spent == pytest.approx(full / 2) and budget.reserved == pytest.approx(0.0)
    assert (tmp_path / "batches.json").exists()


SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from datagen.llm import ChatRequest, ResponseCache, generate_sync, make_llm
cache = ResponseCache({cache!r})
llm = make_llm("openai:test", cache=cache, base_url={url!r}, api_key="k", batch=True,
               batch_options={{"poll_initial": 0.05, "poll_max": 0.2, "max_requests_per_file": 5}})
results = generate_sync(llm, [ChatRequest.chat(f"k{{i}}", max_tokens=20) for i in range(12)])
print(sum(r.ok for r in results))
"""


def test_kill_9_while_polling_then_rerun_reattaches(openai_server, tmp_path):
    openai_server.configure(batch_delay=30.0)  # still running when we kill the client
    cache_path = tmp_path / "cache.sqlite"
    script = tmp_path / "client.py"
    script.write_text(SCRIPT.format(root=str(ROOT), cache=str(cache_path), url=openai_server.base_url))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    state = tmp_path / "batches.json"
    try:
        for _ in range(600):  # the ids are written before polling; wait for all three
            if state.exists() and len(json.loads(state.read_text())["batches"]) == 3:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    assert openai_server.stats.batches_created == 3
    openai_server.configure(batch_delay=0.0)  # the same batches now finish
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "12", proc.stderr
    stats = openai_server.stats
    assert stats.batches_created == 3 and stats.batch_requests == 12  # one creation per chunk, ever
    cache = ResponseCache(cache_path)
    assert len(cache) == 12
    cache.close()


def test_pipeline_with_batch_flag_sends_batches_and_costs_the_batch_price(openai_server, tmp_path, monkeypatch):
    import yaml

    from datagen.cli import main

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = {
        "name": "batched",
        "llm": "openai:test",
        "llm_options": {"openai": {"base_url": openai_server.base_url, "batch_options": FAST}},
        "prices": {"openai:test": {"input_per_million": 100.0, "output_per_million": 1000.0}},
        "input": {"path": str(ROOT / "seeds" / "seed_tasks.jsonl"), "limit": 12},
        "stages": [{"distill": {"n": 2, "ranker": "none", "max_tokens": 10}}],
        "export": {"formats": ["records"]},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    assert main(["run", str(path), "--run-dir", str(run_dir), "--no-progress", "--batch", "--budget", "5"]) == 0
    stats = openai_server.stats
    assert stats.requests == 0 and stats.batches_created == 1 and stats.batch_requests == 12
    assert (run_dir / "batches.json").exists()
    done = json.loads((run_dir / "distill" / "done.json").read_text())
    usage = done["llm_usage"]["openai:test"]
    full = (usage["prompt_tokens"] * 100.0 + usage["completion_tokens"] * 1000.0) / 1e6
    assert done["cost_usd"] == pytest.approx(full / 2, abs=1e-6)
    assert done["out"] == 12
