"""Requests/s of our OpenAI-compatible client against a server with fixed latency.

With latency L per request and at most C requests in flight, no client can beat C / L
requests/s (Little's law); a client that adds no overhead of its own reaches it. We run
the test server (tests/openai_test_server.py, 200 ms per reply) in a separate process so
it does not share our event loop or GIL, then time `make_llm("openai:test", cache=None)`
at concurrency 1/16/64/256 and compare with that bound. Baseline: the plain `openai`
client sending one request at a time, as a simple script would.

    python bench/client_throughput.py            # ~1 minute; writes bench/results/client_throughput.json

The last printed line is the headline: our throughput at concurrency 256 over the bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datagen.llm import ChatRequest, generate_sync, make_llm  # noqa: E402

SERVER = ROOT / "tests" / "openai_test_server.py"
RESULTS = ROOT / "bench" / "results" / "client_throughput.json"
GOAL = 0.95


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0", "--latency", str(latency)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return proc, line.split()[1]


def control(base_url: str, path: str, payload: dict | None = None) -> dict:
    root = base_url.rsplit("/v1", 1)[0]
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(
        f"{root}/_control/{path}", data=data, method="POST" if data is not None else "GET"
    )
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def run_ours(base_url: str, concurrency: int, count: int, tag: str) -> dict:
    llm = make_llm("openai:test", cache=None, base_url=base_url, api_key="bench", max_concurrency=concurrency,
                       initial_concurrency=concurrency)
    # Distinct prompts: identical ones would be deduplicated before reaching the wire.
    requests = [ChatRequest.chat(f"{tag} request {i}", max_tokens=32) for i in range(count)]
    control(base_url, "reset", {})
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    results = generate_sync(llm, requests)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    stats = control(base_url, "stats")
    failed = sum(not r.ok for r in results)
    return {
        "requests": count,
        "seconds": wall,
        "rps": count / wall,
        "failed": failed,
        "server_max_in_flight": stats["max_in_flight"],
        "client_cpu_ms_per_request": 1000 * cpu / count,
    }


def run_baseline(base_url: str, count: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="bench", max_retries=0)
    control(base_url, "reset", {})
    t0 = time.perf_counter()
    for i in range(count):
        client.chat.completions.create(
            model="test", messages=[{"role": "user", "content": f"baseline request {i}"}], max_tokens=32
        )
    wall = time.perf_counter() - t0
    client.close()
    return {
        "requests": count,
        "seconds": wall,
        "rps": count / wall,
        "failed": 0,
        "server_max_in_flight": control(base_url, "stats")["max_in_flight"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="server latency per request, seconds")
    parser.add_argument("--levels", default="1,16,64,256", help="concurrency levels")
    parser.add_argument("--waves", type=int, default=20, help="requests per level = concurrency x waves")
    parser.add_argument(
        "--serial", type=int, default=30, help="requests at concurrency 1 and for the baseline"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    levels = [int(x) for x in args.levels.split(",")]

    proc, base_url = start_server(args.latency)
    rows: list[dict] = []
    try:
        # Warm-up: imports, first connections, server code paths; not measured.
        run_ours(base_url, 8, 16, "warmup")
        base = run_baseline(base_url, args.serial)
        rows.append(
            {"client": "openai, one at a time", "concurrency": 1, "bound_rps": 1 / args.latency, **base}
        )
        for c in levels:
            count = args.serial if c == 1 else c * args.waves
            row = run_ours(base_url, c, count, f"c{c}")
            rows.append({"client": "datagen", "concurrency": c, "bound_rps": c / args.latency, **row})
    finally:
        proc.terminate()
        proc.wait(10)
    for row in rows:
        row["ratio"] = row["rps"] / row["bound_rps"]

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"client throughput vs bound (server latency {args.latency * 1000:.0f} ms)")
    for col in (
        "client",
        "concurrency",
        "requests",
        "seconds",
        "req/s",
        "bound req/s",
        "ratio",
        "max in flight",
        "cpu ms/req",
    ):
        table.add_column(col, justify="left" if col == "client" else "right")
    for row in rows:
        table.add_row(
            row["client"],
            str(row["concurrency"]),
            str(row["requests"]),
            f"{row['seconds']:.2f}",
            f"{row['rps']:.1f}",
            f"{row['bound_rps']:.0f}",
            f"{row['ratio']:.3f}",
            str(row["server_max_in_flight"]),
            f"{row['client_cpu_ms_per_request']:.2f}" if "client_cpu_ms_per_request" in row else "-",
        )
    Console(width=150).print(table)

    top = next((r for r in rows if r["client"] == "datagen" and r["concurrency"] == max(levels)), rows[-1])
    serial = next(r for r in rows if r["client"] != "datagen")
    report = {
        "latency_s": args.latency,
        "rows": rows,
        "ratio_at_max_concurrency": top["ratio"],
        "speedup_vs_one_at_a_time": top["rps"] / serial["rps"],
        "goal": GOAL,
        "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)
    print(
        f"speedup at {top['concurrency']} vs one-at-a-time openai: {report['speedup_vs_one_at_a_time']:.1f}x"
    )
    print(
        f"ratio at {top['concurrency']}: {top['ratio']:.3f} of the bound {top['bound_rps']:.0f} req/s "
        f"(goal >= {GOAL})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
