"""`executor: ray` on a real cluster: a head and a second node (`ray start`), one CPU each.

The pipeline runs in this process as the Ray driver; the loopback OpenAI-compatible server
also lives here and counts every request it gets, so "nothing lost" and "no completed call
paid twice" are checked as exact exports and request counts, not as log lines.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="executor: ray needs `pip install 'datagen[ray]'`")

from ray_cluster_helpers import tcp_ports, two_node_cluster  # noqa: E402, F401 - a fixture

from datagen.pipeline import Pipeline  # noqa: E402
from datagen.pipeline_config import validate_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow  # a Ray cluster takes ~20 s to start on 2 busy cores


@pytest.fixture
def cluster(two_node_cluster):  # noqa: F811
    return two_node_cluster


def _config(base_url: str, executor: str, address: str | None = None, **ray_options) -> dict:
    return {
        "name": "ray",
        "llm": "openai:test-model",
        "llm_options": {"openai": {"base_url": base_url, "max_concurrency": 4, "backoff_initial": 0.01,
                                   "backoff_max": 0.05, "max_attempts": 8}},
        "input": {"path": str(ROOT / "seeds" / "seed_tasks.jsonl"), "limit": 24},
        "stages": [
            {"evol_instruct": {"rounds": 1}},
            {"distill": {"n": 2}},
            {"dedup": {"threshold": 0.95}},
            {"quality": {"min_judge_score": 4.5}},
        ],
        "export": {"formats": ["alpaca", "sharegpt", "messages", "records"]},
        "executor": executor,
        "ray": {"address": address, "actors": 2, "batch_size": 8, "embed_actors": 2, "embed_batch_size": 16,
                **ray_options},
    }


def _run(config: dict, run_dir: Path):
    return Pipeline(validate_config(config)).run(run_dir=run_dir, progress=False)


def _exports(run_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((run_dir / "export").iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def local_baseline(tmp_path_factory, scripted_module_server):
    folder = tmp_path_factory.mktemp("local")
    scripted_module_server.reset()
    _run(_config(scripted_module_server.base_url, "local"), folder / "run")
    return {"exports": _exports(folder / "run"), "requests": scripted_module_server.stats.requests,
            "ok_replies": _ok_replies(scripted_module_server)}


def _ok_replies(server) -> Counter:
    """How many successful replies each distinct request got."""
    return Counter((e.prompt, e.seed, e.n) for e in server.stats.log if e.outcome == "ok")


def test_cluster_run_is_byte_identical_to_local(tmp_path: Path, cluster, scripted_server, local_baseline) -> None:
    seen_on_second_node: list[int] = []

    def watch() -> None:  # proves the second node did work, not just the head
        while not done.is_set():
            seen_on_second_node.extend(cluster.workers(1, "LLMWorker"))
            time.sleep(0.2)

    done = threading.Event()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        result = _run(_config(scripted_server.base_url, "ray", cluster.address), tmp_path / "run")
    finally:
        done.set()
        watcher.join()
    assert _exports(tmp_path / "run") == local_baseline["exports"]
    assert scripted_server.stats.requests == local_baseline["requests"]  # every call once, as locally
    assert seen_on_second_node
    assert result.manifest["llm_usage_total"]["calls"] == local_baseline["requests"]

    # An identical rerun on the cluster resumes from the run's cache: zero calls.
    scripted_server.reset()
    _run(_config(scripted_server.base_url, "ray", cluster.address), tmp_path / "run")
    assert scripted_server.stats.requests == 0


def test_worker_killed_mid_stage_loses_nothing_and_pays_no_completed_call_twice(
    tmp_path: Path, cluster, scripted_server, local_baseline
) -> None:
    """kill -9 of the LLM actor on node 2 once it has finished 3 calls of its current batch
    (and has 2 more in flight): Ray restarts it and retries the batch; the retry must skip
    the finished calls (already in the driver's sink) and resend only the 2 in flight."""
    per_actor = 2
    scripted_server.configure(latency=0.25)
    kill: dict[str, object] = {}

    def kill_mid_batch() -> None:
        while not stop.is_set():
            time.sleep(0.02)
            pids = cluster.workers(1, "LLMWorker")
            if not pids:
                continue
            ports = tcp_ports(pids[0])
            mine = [e for e in list(scripted_server.stats.log) if e.client_port in ports]
            finished = [e for e in mine if e.end and e.outcome == "ok"]
            in_flight = [e for e in mine if not e.end]
            now = time.monotonic()
            # Not within 50 ms of a reply: that reply must have reached the sink before the kill.
            if len(finished) >= 3 and in_flight and now - max(e.end for e in finished) > 0.05:
                os.kill(pids[0], signal.SIGKILL)
                kill.update(pid=pids[0], finished=len(finished), in_flight=len(in_flight))
                return

    stop = threading.Event()
    killer = threading.Thread(target=kill_mid_batch, daemon=True)
    killer.start()
    try:
        _run(_config(scripted_server.base_url, "ray", cluster.address, max_concurrency=per_actor, batch_size=16),
             tmp_path / "run")
    finally:
        stop.set()
        killer.join()
    assert kill, "the run ended before a worker could be killed mid-batch"
    # Nothing lost: the same data as the uninterrupted local run.
    assert _exports(tmp_path / "run") == local_baseline["exports"]
    # No completed call paid twice: every request got as many successful replies as in the
    # local run (once each); the only
    # repeats are the calls that were in flight on the killed actor (cut off, never answered).
    assert _ok_replies(scripted_server) == local_baseline["ok_replies"]
    repaid = scripted_server.stats.requests - local_baseline["requests"]
    assert repaid <= per_actor, kill
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert all("llm_error" not in s["drop_reasons"] for s in manifest["stages"])


def test_cli_flags_select_the_executor(tmp_path: Path) -> None:
    from datagen.commands_run import executor_overrides
    from datagen.config_errors import ConfigError

    path = tmp_path / "p.yaml"
    path.write_text("name: x\nstages: [dedup]\n")
    assert Pipeline.from_yaml(path).config.executor == "local"
    pipeline = Pipeline.from_yaml(path, overrides=executor_overrides(None, "10.0.0.1:6379"))
    assert (pipeline.config.executor, pipeline.config.ray.address) == ("ray", "10.0.0.1:6379")
    pipeline = Pipeline.from_yaml(path, overrides=executor_overrides("ray", None))
    assert (pipeline.config.executor, pipeline.config.ray.address) == ("ray", None)
    with pytest.raises(ConfigError, match=r"ray\.actrs: unknown key \(did you mean 'actors'\?\)"):
        Pipeline.from_yaml(path, overrides=["ray.actrs=4"])
    with pytest.raises(ConfigError, match="executor"):
        Pipeline.from_yaml(path, overrides=["executor=slurm"])


def test_vllm_on_ray_is_built_up_to_the_engine(cluster) -> None:
    """The vLLM path needs GPUs and vLLM, which CI lacks: everything up to the engine call
    is built for real (rows, processor config, the processor and its lazy dataset)."""
    from datagen.llm import ChatRequest
    from datagen.llm.ray_pool import (
        RayVLLMLLM,
        assemble_vllm_completion,
        make_ray_backend,
        vllm_processor_config,
        vllm_rows,
    )
    from datagen.ray_cluster import RayConfig, connect

    config = RayConfig(address=cluster.address, vllm_replicas=3, tensor_parallel_size=2, vllm_batch_size=16,
                       vllm_engine_kwargs={"max_model_len": 4096})
    connect(config)
    schema = {"type": "json_schema", "json_schema": {"name": "s", "schema": {"type": "object"}}}
    requests = [ChatRequest.chat("a", n=3, seed=5, max_tokens=7, stop=["\n"]),
                ChatRequest.chat("b", response_format=schema)]
    rows = vllm_rows(requests)
    assert [(r["index"], r["sample"], r["sampling_params"].get("seed")) for r in rows] == [
        (0, 0, 5), (0, 1, 1006), (0, 2, 1007), (1, 0, None)]
    assert rows[0]["sampling_params"] == {"temperature": 0.7, "top_p": 1.0, "max_tokens": 7, "stop": ["\n"],
                                          "seed": 5}
    assert rows[3]["sampling_params"]["structured_outputs"] == {"json": {"type": "object"}}
    assert rows[3]["messages"] == [{"role": "user", "content": "b"}]

    processor_config = vllm_processor_config("/models/teacher", config)
    assert processor_config.concurrency == 3 and processor_config.batch_size == 16
    assert {k: processor_config.engine_kwargs[k] for k in ("tensor_parallel_size", "max_model_len")} == {
        "tensor_parallel_size": 2, "max_model_len": 4096}

    backend = make_ray_backend("vllm:/models/teacher", {}, config)
    assert isinstance(backend, RayVLLMLLM) and backend.name == "vllm:/models/teacher"
    stages = list(backend.processor().stages)
    assert any("vLLMEngine" in name for name in stages), stages
    dataset = backend.build(requests)  # lazy: reading it would start the engine replicas
    assert type(dataset).__name__ == "Dataset"

    samples = {1: {"generated_text": "y", "num_input_tokens": 4, "num_generated_tokens": 7},
               0: {"generated_text": "x", "num_input_tokens": 4, "num_generated_tokens": 2}}
    completion = assemble_vllm_completion(requests[0], samples)
    assert (completion.texts, completion.finish_reasons) == (["x", "y"], ["stop", "length"])
    assert (completion.prompt_tokens, completion.completion_tokens) == (4, 9)


def test_fatal_endpoint_error_on_a_worker_stops_the_run_with_its_own_line(tmp_path: Path, cluster, scripted_server) -> None:
    """A wrong key fails on the actors; the driver must end with the same FatalLLMError (one
    line in the CLI) a local run gives, not a Ray traceback, and nothing is marked done."""
    from datagen.errors import FatalLLMError

    scripted_server.configure(api_key="the-right-key")
    with pytest.raises(FatalLLMError, match="401"):
        _run(_config(scripted_server.base_url, "ray", cluster.address), tmp_path / "run")
    assert not list((tmp_path / "run").glob("*/done.json"))


def test_a_small_call_is_spread_over_every_actor() -> None:
    from datagen.llm.ray_pool import rows_per_batch

    assert rows_per_batch(8, actors=2, batch_size=32) == 4  # a Self-Instruct round: both actors work
    assert rows_per_batch(7, actors=2, batch_size=32) == 4
    assert rows_per_batch(1000, actors=2, batch_size=32) == 32  # large calls keep the configured size
    assert rows_per_batch(1, actors=4, batch_size=32) == 1


def test_actor_options_split_concurrency_and_leave_rates_to_the_gate() -> None:
    from datagen.llm.ray_pool import RATE_OPTIONS, actor_options, gate_limits
    from datagen.ray_cluster import RayConfig

    options = {"base_url": "http://x/v1", "max_concurrency": 64, "max_requests_per_minute": 600,
               "max_tokens_per_minute": 90000, "price": object()}
    shared = actor_options("openai", options, RayConfig(actors=4), 64)
    # Concurrency is split; the rates are not: the run's permit gate holds them whole.
    assert shared["max_concurrency"] == 16 and not set(RATE_OPTIONS) & set(shared)
    assert shared["price"] is options["price"] and shared["base_url"] == "http://x/v1"
    assert gate_limits(options, 10.0) == {
        "requests_per_minute": 600, "tokens_per_minute": 90000, "period": 60.0, "lease": 80.0}
    assert actor_options("openai", options, RayConfig(actors=4, max_concurrency=8), 64)["max_concurrency"] == 8
    assert "budget" not in actor_options("openai", {**options, "budget": object()}, RayConfig(), 64)
    assert actor_options("local", {"batch_size": 4}, RayConfig(), 64) == {"batch_size": 4}
