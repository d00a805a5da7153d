"""Side by side: our client, distilabel and bespokelabs-curator against the same server, with
`wrk` measuring that server's ceiling at the same concurrency.

Setup, the same for every row: tests/openai_test_server.py in its own process, 200 ms per
reply, N distinct prompts, C requests in flight. Rows:
- wrk (Debian package `wrk`, `-c C`): the most that server answers at C connections;
- datagen: `make_llm("openai:test", cache=<fresh SQLite>)`, i.e. with the response cache on
  as in a pipeline (answers committed in groups by the cache's writer thread), adaptive
  concurrency on and starting at C (`initial_concurrency`: wrk and the peers open C
  connections at once; the default slow start from 8 would measure its ramp); the JSON also records the client's CPU ms per request (a figure a busy
  machine distorts less than req/s) and the cache's commits;
- distilabel (==1.5.3, its own venv): `OpenAILLM.generate_outputs` over batches of C inputs
  (its pipeline's concurrency is the input batch size);
- curator (bespokelabs-curator, its own venv): `curator.LLM(..., backend="openai")` with
  `max_concurrent_requests=C` and limits far above what the server can do. curator counts
  tokens with tiktoken, which downloads its BPE file on first use; this machine cannot,
  so the bench gives curator a local stand-in encoder (`len(text) // 4` tokens). It only
  feeds curator's rate-limit bookkeeping, which is far from binding here.

    python bench/orchestration.py  # N=5120, C=256; --peers-venvs to point at the venvs

wrk and ours alternate `--repeats` times (default 3) and each row is its median run: the
machine is shared, and single runs swing by tens of percent. Peers run once (distilabel
takes a minute). Peers whose venv is missing are reported as skipped. The last line is our
median requests/s as a share of wrk's median ceiling (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datagen.llm import ChatRequest, ResponseCache, generate_sync, make_llm  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from client_throughput import control, start_server  # noqa: E402  (one loopback-server driver)

SERVER = ROOT / "tests" / "openai_test_server.py"
RESULTS = ROOT / "bench" / "results" / "orchestration.json"
GOAL = 0.95

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
counter = 0
request = function()
  counter = counter + 1
  local body = '{"model": "test", "max_tokens": 32, "messages": [{"role": "user", "content": "wrk request ' .. counter .. '"}]}'
  return wrk.format(nil, "/v1/chat/completions", nil, body)
end
"""

DISTILABEL = """
import json, sys, time, asyncio
from distilabel.models.llms import OpenAILLM
base_url, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = OpenAILLM(model="test", base_url=base_url, api_key="bench", max_retries=0, timeout=120,
                generation_kwargs={"max_new_tokens": 32})
llm.load()
inputs = [[{"role": "user", "content": f"distilabel request {i}"}] for i in range(count)]
t0 = time.perf_counter()
ok = 0
for start in range(0, count, concurrency):
    outs = llm.generate_outputs(inputs=inputs[start:start + concurrency], num_generations=1,
                                max_new_tokens=32)
    ok += sum(1 for o in outs if o["generations"] and o["generations"][0])
print(json.dumps({"seconds": time.perf_counter() - t0, "ok": ok}))
"""

CURATOR = """
import json, os, sys, time
import tiktoken

class _StandIn:
    # tiktoken needs to download its BPE file; this machine cannot. ~4 characters a token.
    name = "stand-in"
    def encode(self, text, *args, **kwargs):
        return [0] * (len(text) // 4)

tiktoken.get_encoding = lambda *a, **k: _StandIn()
tiktoken.encoding_for_model = lambda *a, **k: _StandIn()
import tiktoken.core
from bespokelabs import curator

base_url, count, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = curator.LLM(
    model_name="gpt-4o-mini",
    backend="openai",
    generation_params={"max_tokens": 32},
    backend_params={"base_url": base_url, "api_key": "bench", "max_requests_per_minute": 10_000_000,
                    "max_tokens_per_minute": 10_000_000_000, "max_retries": 0,
                    "max_concurrent_requests": concurrency, "request_timeout": 120},
)
prompts = [f"curator request {i}" for i in range(count)]
t0 = time.perf_counter()
out = llm(prompts)
seconds = time.perf_counter() - t0
try:
    ok = len(out.dataset)
except AttributeError:
    ok = len(out)
print(json.dumps({"seconds": seconds, "ok": ok}))
"""


def server_counts(base_url: str) -> dict:
    stats = control(base_url, "stats")
    return {"server_requests": stats["requests"], "server_max_in_flight": stats["max_in_flight"]}


def run_wrk(base_url: str, concurrency: int, seconds: int) -> dict:
    if shutil.which("wrk") is None:
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as handle:
        handle.write(WRK_SCRIPT)
    root = base_url.rsplit("/v1", 1)[0]
    control(base_url, "reset", {})
    out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s", "-s", handle.name,
                          root], capture_output=True, text=True, timeout=seconds + 60)
    os.unlink(handle.name)
    match = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
    if not match:
        return {"skipped": f"wrk output not understood: {out.stdout[-300:]} {out.stderr[-300:]}"}
    return {"rps": float(match.group(1)), "seconds": seconds, **server_counts(base_url)}


def run_ours(base_url: str, count: int, concurrency: int, use_cache: bool = True) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cache = ResponseCache(Path(tmp) / "cache.sqlite") if use_cache else None
        llm = make_llm("openai:test", cache=cache, base_url=base_url, api_key="bench", max_concurrency=concurrency,
                       initial_concurrency=concurrency)
        requests = [ChatRequest.chat(f"datagen request {i}", max_tokens=32) for i in range(count)]
        control(base_url, "reset", {})
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        results = generate_sync(llm, requests)
        seconds = time.perf_counter() - t0
        cpu = time.process_time() - cpu0  # this process: event loop and cache writer thread
        commits = {}
        if cache is not None:
            commits = {"cache_commits": cache.commits, "cache_put_waits": cache.put_waits}
            cache.close()
    return {"rps": count / seconds, "seconds": seconds, "ok": sum(r.ok for r in results),
            "client_cpu_ms_per_request": round(1000 * cpu / count, 4), **commits, **server_counts(base_url)}


def run_peer(python: Path, code: str, base_url: str, count: int, concurrency: int) -> dict:
    if not python.exists():
        return {"skipped": f"{python} not found"}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "peer.py"
        script.write_text(code)
        env = {**os.environ, "CURATOR_CACHE_DIR": str(Path(tmp) / "curator"), "CURATOR_DISABLE_CACHE": "1",
               "HF_HUB_OFFLINE": "1", "OPENAI_API_KEY": "bench", "CURATOR_DISABLE_RICH_DISPLAY": "1",
               "TIKTOKEN_CACHE_DIR": str(Path(tmp) / "tiktoken")}
        env.pop("PYTHONPATH", None)
        control(base_url, "reset", {})
        proc = subprocess.run([str(python), str(script), base_url, str(count), str(concurrency)],
                              capture_output=True, text=True, timeout=1800, env=env, cwd=tmp)
    lines = [line for line in proc.stdout.split("\n") if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"skipped": f"failed (rc {proc.returncode}): {proc.stderr.strip()[-400:]}"}
    result = json.loads(lines[-1])
    return {"rps": count / result["seconds"], "seconds": result["seconds"], "ok": result["ok"],
            **server_counts(base_url)}


def _median_run(measured: list[dict]) -> dict:
    """The run with the median req/s, with every run's req/s alongside."""
    done = sorted((m for m in measured if "rps" in m), key=lambda m: m["rps"])
    if not done:
        return measured[0]
    return {**done[len(done) // 2], "all_rps": [round(m["rps"], 1) for m in measured if "rps" in m]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--count", type=int, default=5120)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--wrk-seconds", type=int, default=8)
    parser.add_argument("--distilabel-python", type=Path, default=Path("/tmp/cost12-distilabel/bin/python"))
    parser.add_argument("--curator-python", type=Path, default=Path("/tmp/cost12-curator/bin/python"))
    parser.add_argument("--no-peers", action="store_true", help="only wrk and ours")
    parser.add_argument("--repeats", type=int, default=3,
                        help="wrk and ours alternate this many times; the table shows each one's median run "
                             "(the machine is shared: single runs swing by tens of percent)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    proc, base_url = start_server(args.latency)
    rows: dict[str, dict] = {}
    try:
        run_ours(base_url, 256, 64)  # warm-up: imports, first connections; not measured
        runs: dict[str, list[dict]] = {"wrk (ceiling)": [], "datagen (cache on)": [], "datagen (no cache)": []}
        for _ in range(args.repeats):
            runs["wrk (ceiling)"].append(run_wrk(base_url, args.concurrency, args.wrk_seconds))
            runs["datagen (cache on)"].append(run_ours(base_url, args.count, args.concurrency))
            runs["datagen (no cache)"].append(run_ours(base_url, args.count, args.concurrency, use_cache=False))
        for name, measured in runs.items():
            rows[name] = _median_run(measured)
        if not args.no_peers:
            rows["distilabel 1.5.3"] = run_peer(args.distilabel_python, DISTILABEL, base_url, args.count,
                                                args.concurrency)
            rows["curator"] = run_peer(args.curator_python, CURATOR, base_url, args.count, args.concurrency)
    finally:
        proc.terminate()
        proc.wait(10)

    ceiling = rows["wrk (ceiling)"].get("rps")
    little = args.concurrency / args.latency
    print(f"N={args.count}, concurrency {args.concurrency}, server latency {args.latency * 1000:.0f} ms, "
          f"Little's bound {little:.0f} req/s, load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'client':<22}{'req/s':>10}{'seconds':>10}{'ok':>8}{'of bound':>10}{'of wrk':>9}  runs (req/s)")
    for name, row in rows.items():
        if "rps" not in row:
            print(f"{name:<22}  skipped: {row['skipped']}")
            continue
        of_wrk = f"{row['rps'] / ceiling:.3f}" if ceiling else "-"
        print(f"{name:<22}{row['rps']:>10.1f}{row['seconds']:>10.2f}{row.get('ok', '-'):>8}"
              f"{row['rps'] / little:>10.3f}{of_wrk:>9}  {' '.join(map(str, row.get('all_rps', [])))}")
    ours = rows["datagen (cache on)"]["rps"]
    report = {"count": args.count, "concurrency": args.concurrency, "latency_s": args.latency, "rows": rows,
              "wrk_ceiling_rps": ceiling, "little_bound_rps": little,
              "ours_over_wrk": ours / ceiling if ceiling else None, "goal": GOAL,
              "machine": {"cpus": os.cpu_count(), "load_avg": os.getloadavg(), "python": platform.python_version()},
              "when": time.strftime("%Y-%m-%dT%H:%M:%S")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(args.out)
    if ceiling:
        print(f"datagen / wrk ceiling: {ours:.0f} / {ceiling:.0f} req/s = {ours / ceiling:.3f} (goal >= {GOAL})")
    else:
        print(f"datagen: {ours:.0f} req/s = {ours / little:.3f} of Little's bound (wrk unavailable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
