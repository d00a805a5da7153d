"""The run's global limits under `executor: ray`, on a real two-node cluster: one budget, one
per-minute allowance and one 429 cool-down for all actors (datagen/llm/ray_gate.py), and the
Batch API sent from the driver.

Every check counts what the loopback server received (requests, 429s, its own timestamps and
the client ports that tell which actor sent what), or what the run's cache holds.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

ray = pytest.importorskip("ray", reason="executor: ray needs `pip install 'datagen[ray]'`")

from ray_cluster_helpers import tcp_ports, two_node_cluster  # noqa: E402, F401 - a fixture

from datagen.cli import main  # noqa: E402
from datagen.llm import ChatRequest, ResponseCache, generate_sync  # noqa: E402
from datagen.llm.budget import EXIT_BUDGET, spent_in_cache  # noqa: E402
from datagen.llm.ray_pool import make_ray_backend  # noqa: E402
from datagen.ray_cluster import RayConfig, disconnect  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a Ray cluster takes ~20 s to start on 2 busy cores
# $1000 per 1M completion tokens = $0.001 a token (as tests/test_budget.py).
PRICES = {"openai:test": {"input_per_million": 100.0, "output_per_million": 1000.0}}


def _pipeline(tmp_path: Path, base_url: str, address: str, records: int = 20) -> Path:
    config = {
        "name": "ray-limits",
        "llm": "openai:test",
        "llm_options": {"openai": {"base_url": base_url, "max_concurrency": 4, "backoff_initial": 0.01,
                                   "batch_options": {"poll_initial": 0.05, "poll_max": 0.2}}},
        "prices": PRICES,
        "input": {"path": str(ROOT / "seeds" / "seed_tasks.jsonl"), "limit": records},
        "stages": [{"distill": {"n": 1, "ranker": "none", "max_tokens": 10}}],
        "export": {"formats": ["records"]},
        "executor": "ray",
        "ray": {"address": address, "actors": 2, "batch_size": 4},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_budget_holds_across_actors_then_a_higher_cap_resumes_paying_nothing_twice(
    two_node_cluster, openai_server, tmp_path, capsys, monkeypatch  # noqa: F811
):
    """Two actors, one cap: per-actor budgets would each spend up to the cap (2x in all)."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pipeline, run_dir, cap = _pipeline(tmp_path, openai_server.base_url, two_node_cluster.address), tmp_path / "run", 0.05
    code = main(["run", str(pipeline), "--run-dir", str(run_dir), "--no-progress", "--budget", str(cap)])
    assert code == EXIT_BUDGET  # the same exit as a local run
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("budget: stopped")]
    assert len(lines) == 1 and f"of ${cap:.4f}" in lines[0], lines
    assert not (run_dir / "distill" / "done.json").exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "budget_exhausted"
    first_calls = openai_server.stats.requests
    assert 0 < first_calls < 20
    cache = ResponseCache(run_dir / "llm_cache.sqlite")
    spent, cached = spent_in_cache(cache, PRICES), len(cache)
    cache.close()
    assert 0 < spent <= cap  # the cluster as a whole never crossed the cap
    assert cached == first_calls  # every paid reply, in flight when the cap hit included, is in the cache
    # The driver's own budget shows what the actors spent (mirrored from the permit gate).
    assert manifest["budget"]["spent_usd"] == pytest.approx(spent)

    code = main(["run", str(pipeline), "--run-dir", str(run_dir), "--no-progress", "--budget", "10"])
    assert code == 0
    stats = openai_server.stats
    assert stats.requests == 20  # the first run's answers came from the cache
    assert set(stats.per_prompt.values()) == {1}  # no prompt was paid twice
    assert (run_dir / "distill" / "done.json").exists()


def _rate_backend(server, address: str, period: float, gate: bool = True):
    options = {"base_url": server.base_url, "api_key": "k", "max_concurrency": 4, "rate_period": period,
               "backoff_initial": 0.01, "backoff_max": 0.05, "max_attempts": 12, "retry_after_max": 0.2,
               "timeout": 10.0}
    backend = make_ray_backend("openai:test", options, RayConfig(address=address, actors=2, batch_size=16))
    if not gate:  # the control: each actor on its own, as without the permit gate
        backend.gate_limits = None
    return backend


RATE_PERIOD = 15.0  # a 4x faster "minute" on server and client alike
RPM = 300  # 20 requests/s


def _limited_server(server) -> None:
    # No client limit is configured: the server announces its limit in x-ratelimit-* headers
    # and the client adopts it. Each actor adopting it for itself would send twice the limit.
    # The server banks 2 s of allowance (it shares this process's cores with the driver).
    server.configure(rpm_limit=RPM, limit_period=RATE_PERIOD, limit_burst_share=2 / RATE_PERIOD)


def test_announced_rate_limit_holds_for_the_whole_cluster(two_node_cluster, openai_server):  # noqa: F811
    _limited_server(openai_server)
    backend = _rate_backend(openai_server, two_node_cluster.address, RATE_PERIOD)
    try:
        results = generate_sync(backend, [ChatRequest.chat(f"r{i}") for i in range(240)])
        admitted = backend.gate.sync(ray).admitted
    finally:
        backend.close()
        disconnect()
    assert all(r.ok for r in results)
    stats = openai_server.stats
    assert stats.rate_limited == 0, stats
    assert admitted == stats.requests  # every attempt asked the gate
    starts = sorted(e.start for e in stats.log)
    skip = 45  # the opening: the server's banked 2 s of allowance (40) and the first wave
    steady_rate = (len(starts) - 1 - skip) / (starts[-1] - starts[skip])
    assert steady_rate <= 1.1 * RPM / RATE_PERIOD, steady_rate


def test_without_the_gate_each_actor_adopts_the_whole_limit_and_gets_429s(two_node_cluster, openai_server):  # noqa: F811
    """The control for the test above (so it can fail): actors limiting themselves apart."""
    _limited_server(openai_server)
    backend = _rate_backend(openai_server, two_node_cluster.address, RATE_PERIOD, gate=False)
    try:
        generate_sync(backend, [ChatRequest.chat(f"r{i}") for i in range(240)])
    finally:
        backend.close()
        disconnect()
    assert openai_server.stats.rate_limited > 0


def test_a_429_on_one_actor_pauses_the_other(two_node_cluster, openai_server):  # noqa: F811
    """Prompt c60 gets one 429 with Retry-After 2 s while both actors are busy: after it,
    nobody sends anything until the cool-down ends (replies already on the wire aside)."""
    retry_after = 2.0
    openai_server.configure(latency=0.1, fail_first=1, fail_kind="429", fail_prompts=("c60",),
                            retry_after=retry_after)
    ports: dict[int, int] = {}  # client port -> the LLM actor process that owns it
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for node in (0, 1):
                for pid in two_node_cluster.workers(node, "LLMWorker"):
                    ports.update(dict.fromkeys(tcp_ports(pid), pid))
            time.sleep(0.03)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    options = {"base_url": openai_server.base_url, "api_key": "k", "max_concurrency": 4, "backoff_initial": 0.01,
               "retry_after_max": 5.0, "timeout": 10.0}
    backend = make_ray_backend("openai:test", options,
                               RayConfig(address=two_node_cluster.address, actors=2, batch_size=4))
    try:
        results = generate_sync(backend, [ChatRequest.chat(f"c{i}") for i in range(120)])
    finally:
        done.set()
        watcher.join()
        backend.close()
        disconnect()
    assert all(r.ok for r in results)
    log = sorted(openai_server.stats.log, key=lambda e: e.start)
    [limited] = [e for e in log if e.outcome == "429"]
    before = {ports.get(e.client_port) for e in log if limited.end - 0.5 <= e.start <= limited.end}
    assert len(before - {None}) == 2, before  # both actors were sending when the 429 came
    # Requests admitted before the gate heard of the 429 may still start (allow 0.5 s on 2
    # busy cores); after that, nothing from either actor until Retry-After has passed.
    after = [e.start - limited.end for e in log if e.start > limited.end + 0.5]
    assert after and min(after) >= retry_after - 0.2, after[:3]


def test_batch_api_under_ray_runs_on_the_driver(two_node_cluster, openai_server, tmp_path, caplog,  # noqa: F811
                                                monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pipeline, run_dir = _pipeline(tmp_path, openai_server.base_url, two_node_cluster.address, 12), tmp_path / "run"
    assert main(["run", str(pipeline), "--run-dir", str(run_dir), "--no-progress", "--batch", "--budget", "5"]) == 0
    said = [r.getMessage() for r in caplog.records if "Batch API" in r.getMessage()]
    assert said == ["executor: ray: openai:test uses the Batch API, so its batches are sent from the driver"]
    stats = openai_server.stats
    assert stats.requests == 0 and stats.batches_created == 1 and stats.batch_requests == 12
    assert (run_dir / "batches.json").exists()  # batch ids in the run directory, as locally
    done = json.loads((run_dir / "distill" / "done.json").read_text())
    assert done["out"] == 12
