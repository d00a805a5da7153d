"""What the run's permit gate costs per request under `executor: ray` (datagen/llm/ray_gate.py).

Every attempt of every actor asks the gate once (budget + rate permit) and reports back once
(fire-and-forget). Two measurements on a real two-node cluster (`ray start --head` + `ray
start --address`, one CPU each) and the loopback OpenAI-compatible server:

- permit round trip: one actor on the second node runs `acquire` + `settle` cycles of the
  client's limiter back to back, with the gate (its stand-in, a budget and a rate limit set
  high enough never to bind) and without (the actor's own `RequestLimiter`, as before);
- end to end: the same requests through the LLM actor pool (2 actors) against a server that
  answers at once, with the gate and without it (the control: each actor on its own), so
  the difference over the requests is the gate's cost per request as the pool feels it.

    python bench/ray_gate.py      # ~2 min on 2 busy cores; writes bench/results/ray_gate.json

The last line is the headline: the gate's cost per request, against a 1 s teacher request.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

RESULTS = ROOT / "bench" / "results" / "ray_gate.json"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def permit_cycles(gate, cycles: int, use_gate: bool) -> float:
    """Seconds per acquire + settle cycle, measured inside one actor process."""
    import asyncio

    from datagen.llm.budget import Rate
    from datagen.llm.ratelimit import RequestLimiter
    from datagen.llm.ray_gate import GatedBudget, GatedLimiter

    local = RequestLimiter(64)
    budget = GatedBudget(gate, cap=1e9) if use_gate else None
    limiter = GatedLimiter(gate, "openai:bench", local, budget) if use_gate else local
    rate = Rate(1.0, 1.0)

    async def run() -> float:
        started = time.perf_counter()
        for _ in range(cycles):
            held = await budget.reserve_when_settled(rate, (("user", "hello"),), 16) if budget else None
            ticket = await limiter.acquire(20, priority=0)
            limiter.settle(ticket, latency=0.001, status=200, tokens_used=10)
            if budget is not None:
                budget.settle(held, rate, 5, 5)
        if use_gate:
            limiter.flush()
        return (time.perf_counter() - started) / cycles

    return asyncio.run(run())


def end_to_end(server, address: str, count: int, use_gate: bool) -> dict:
    from datagen.llm import ChatRequest, generate_sync
    from datagen.llm.budget import Budget, Rate
    from datagen.llm.ray_pool import make_ray_backend
    from datagen.ray_cluster import RayConfig

    options = {"base_url": server.base_url, "api_key": "k", "max_concurrency": 16,
               "max_requests_per_minute": 10_000_000, "budget": Budget(1e9), "price": Rate(1.0, 1.0)}
    backend = make_ray_backend("openai:bench", options, RayConfig(address=address, actors=2, batch_size=64))
    if not use_gate:
        backend.gate_limits = None
    requests = [ChatRequest.chat(f"e{use_gate}{i}") for i in range(count)]
    generate_sync(backend, requests[:64])  # actor start-up outside the timing
    server.reset()
    started = time.perf_counter()
    results = generate_sync(backend, requests[64:])
    seconds = time.perf_counter() - started
    backend.close()
    assert all(r.ok for r in results)
    return {"requests": len(results), "seconds": round(seconds, 3), "ms_per_request": 1000 * seconds / len(results),
            "load": loadavg()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=2064)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from openai_test_server import OpenAITestServer
    from ray_cluster_helpers import LocalRayCluster

    from datagen.llm.ray_gate import ClusterGate
    from datagen.ray_cluster import RayConfig, connect, disconnect

    server = OpenAITestServer().start()
    cluster = LocalRayCluster().start(nodes=2)
    rows: dict[str, dict] = {}
    try:
        ray = connect(RayConfig(address=cluster.address))
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from datagen.llm.budget import Budget

        gate = ClusterGate(Budget(1e9))
        handle = gate.handle(ray, "openai:bench", 10_000_000, None, 60.0, 300.0)
        head = ray.get_runtime_context().get_node_id()
        other = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)
        remote = ray.remote(num_cpus=0.5)(permit_cycles).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=other, soft=False))
        for use_gate in (False, True):
            ray.get(remote.remote(handle, 100, use_gate))  # warm-up
            per_cycle = ray.get(remote.remote(handle, args.cycles, use_gate))
            rows["permit, " + ("gate" if use_gate else "actor's own limiter")] = {
                "us_per_attempt": round(1e6 * per_cycle, 1), "load": loadavg()}
        gate.close()
        for use_gate in (False, True):
            rows["pool, " + ("gate" if use_gate else "no gate")] = end_to_end(
                server, cluster.address, args.requests, use_gate)
    finally:
        disconnect()
        cluster.stop()
        server.stop()

    own, gated = rows["permit, actor's own limiter"], rows["permit, gate"]
    bare, with_gate = rows["pool, no gate"], rows["pool, gate"]
    print(f"permit round trip from the second node, {args.cycles} attempts back to back; {os.cpu_count()} CPUs")
    print(f"{'run':<32} {'us/attempt':>11} {'load':>6}")
    for name in ("permit, actor's own limiter", "permit, gate"):
        print(f"{name:<32} {rows[name]['us_per_attempt']:>11.1f} {rows[name]['load']:>6}")
    print(f"LLM actor pool (2 actors, 16 in flight), {bare['requests']} requests, server answers at once")
    print(f"{'run':<32} {'s':>11} {'ms/req':>8} {'load':>6}")
    for name in ("pool, no gate", "pool, gate"):
        print(f"{name:<32} {rows[name]['seconds']:>11.2f} {rows[name]['ms_per_request']:>8.3f} {rows[name]['load']:>6}")
    extra_ms = with_gate["ms_per_request"] - bare["ms_per_request"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                    "gate_ms_per_request": extra_ms, "python": platform.python_version()},
                                   indent=2) + "\n")
    print(f"permit round trip: {gated['us_per_attempt'] / 1000:.2f} ms per attempt "
          f"(own limiter {own['us_per_attempt']:.1f} us)")
    print(f"headline: the gate adds {extra_ms:.2f} ms per request through the pool "
          f"= {extra_ms / 10:.3f}% of a 1 s teacher request ({with_gate['ms_per_request'] / bare['ms_per_request']:.2f}x "
          "the pool's time per request against an instant server)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
