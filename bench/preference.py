"""Preference data and DPO: pairs per second through the whole path, DPO step tokens/s LoRA vs full.

(a) Pairs/s. The loopback server (tests/openai_test_server.py, in its own process, `--latency`
per reply) plays teacher and judge: the teacher's n choices differ, the judge scores each
answer by a hash of it. Measured path: `distill` (n=4 in one request per instruction, judged
answer by answer, response cache on as in a pipeline, 256 requests in flight) -> `preference`
(best vs worst, min_margin 1) -> the `dpo` export file. Baseline, same run: a minimal aiohttp
client sends the very same requests (same bodies: the same judge prompt rendered from the same
answers, same response format), with the same dependency (judging starts when the answers are
in) and the same 256 in flight, and does nothing else: no cache, retries, parsing beyond the
reply's text, records or files. Its time is the floor of this workload on this server, so
"pairs/s of the path / pairs/s the floor allows" says what our machinery costs on top.
Both alternate `--repeats` times; each row is the median run, with the spread (min-max).

(b) DPO tokens/s. TRL's DPOTrainer as `finetune.dpo` configures it (fp32, CPU), on the embedded
SmolLM2-135M, 32 pairs from the seed tasks (chosen: the seed's answer, rejected: its first
sentence only), batch 2 pairs, LoRA r=16 on the default modules vs full fine-tuning. Each timed
step is the Trainer's `training_step` (policy forward and backward on chosen+rejected, plus
the reference forward: the adapter switched off for LoRA, a frozen copy for full) and the
optimizer step; real (non-pad) tokens/s. Steps alternate LoRA, full, LoRA, ... after an untimed
warm-up step each; the median step's tokens/s per mode, with the spread.

    python bench/preference.py            # ~3-4 min on the shared 2-core machine

The last line: DPO tokens/s LoRA / full (and pairs/s path / floor on the line before).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from client_throughput import control  # noqa: E402  (the loopback server's control endpoint)
from sft import timed_optimizer_step  # noqa: E402  (the SFT bench's timed step)

RESULTS = ROOT / "bench" / "results" / "preference.json"

# The server process: the test server with a responder that judges by a hash of the answer.
SERVER = r"""
import hashlib, json, re, sys
sys.path.insert(0, sys.argv[1])
from openai_test_server import OpenAITestServer

ANSWER = re.compile(r"<answer>\n(.*?)\n</answer>", re.S)

def responder(messages, choice, seed):
    prompt = messages[-1]["content"]
    if "Grade on a scale" in prompt:
        found = ANSWER.search(prompt)
        answer = found.group(1) if found else prompt
        return json.dumps({"reason": "hashed", "score": 1 + hashlib.sha256(answer.encode()).digest()[0] % 10})
    words = hashlib.sha256(f"{prompt}|{choice}".encode()).hexdigest()
    return f"Answer {choice}: " + " ".join(words[i:i + 5] for i in range(0, 40, 5))

server = OpenAITestServer(port=0, latency=float(sys.argv[2]))
server.responder = responder
server.serve_forever()
"""


def start_server(latency: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(ROOT / "tests"), str(latency)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("LISTENING "):
        proc.kill()
        raise RuntimeError(f"test server did not start: {line!r}")
    return proc, line.split()[1]


def instructions(count: int) -> list[str]:
    from datagen.io import default_seeds_path, read_seed_tasks, seed_to_record

    seeds = [seed_to_record(t).prompt_text() for t in read_seed_tasks(default_seeds_path())]
    return [f"{seeds[i % len(seeds)]} (variant {i})" for i in range(count)]


# ------------------------------------------------------------------------------------ (a) pairs/s


def run_path(base_url: str, prompts: list[str], concurrency: int, n: int) -> dict[str, Any]:
    """distill (n, judge) -> preference -> dpo export, as a pipeline runs them; a fresh cache."""
    from datagen.context import StageContext
    from datagen.io import write_records
    from datagen.llm import ResponseCache
    from datagen.pipeline_config import validate_config
    from datagen.records import Record, RecordMeta
    from datagen.stages.distill import DistillConfig
    from datagen.stages.distill import run as distill
    from datagen.stages.preference import PreferenceConfig
    from datagen.stages.preference import run as preference

    config = validate_config({"name": "bench", "llm": "openai:test", "input": {"path": "unused.jsonl"},
                              "llm_options": {"openai": {"base_url": base_url, "max_concurrency": concurrency}},
                              "stages": []}, "bench")
    records = [Record(id=f"r{i}", instruction=p, meta=RecordMeta(source="bench")) for i, p in enumerate(prompts)]
    control(base_url, "reset", {})
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext.from_config(config, ResponseCache(Path(tmp) / "cache.sqlite"), progress=False)
        try:
            start = time.perf_counter()
            distilled = distill(records, ctx, DistillConfig(n=n, max_tokens=64))
            pairs = preference(distilled.kept, ctx, PreferenceConfig(min_margin=1))
            write_records(pairs.kept, Path(tmp) / "dpo.jsonl", fmt="dpo")
            seconds = time.perf_counter() - start
        finally:
            ctx.close()
    stats = control(base_url, "stats")
    return {"seconds": seconds, "pairs": len(pairs.kept), "pairs_per_s": len(pairs.kept) / seconds,
            "requests": stats["requests"], "max_in_flight": stats["max_in_flight"],
            "dropped": _count(pairs.dropped + distilled.dropped)}


def _count(dropped: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for record in dropped:
        out[record.meta.drop_reason] = out.get(record.meta.drop_reason, 0) + 1
    return out


def run_floor(base_url: str, prompts: list[str], concurrency: int, n: int, pairs: int) -> dict[str, Any]:
    """The same requests from a bare aiohttp client: answers (n each), then one judge call per answer."""
    import aiohttp

    from datagen.judge import fence, judge_schema
    from datagen.prompts import render

    schema = judge_schema(1, 10)

    async def go() -> tuple[float, int]:
        limit = asyncio.Semaphore(concurrency)
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:
            async def post(body: dict[str, Any]) -> list[str]:
                async with limit, session.post(f"{base_url}/chat/completions", json=body) as resp:
                    reply = await resp.json()
                return [c["message"]["content"] for c in reply["choices"]]

            start = time.perf_counter()
            answers = await asyncio.gather(*(post({
                "model": "test", "messages": [{"role": "user", "content": p}], "n": n, "max_tokens": 64,
                "temperature": 0.8, "top_p": 0.95}) for p in prompts))
            judged = await asyncio.gather(*(post({
                "model": "test", "max_tokens": 256, "temperature": 0.0, "response_format": schema,
                "messages": [{"role": "user", "content": render(
                    name="judge_rubric", instruction=fence(p), input=fence(""), answer=fence(a), output=fence(a),
                    low="1", high="10")}]}) for p, texts in zip(prompts, answers, strict=True) for a in texts))
            return time.perf_counter() - start, len(judged)

    control(base_url, "reset", {})
    seconds, judged = asyncio.run(go())
    stats = control(base_url, "stats")
    return {"seconds": seconds, "judge_requests": judged, "pairs_per_s": pairs / seconds,
            "requests": stats["requests"], "max_in_flight": stats["max_in_flight"]}


# ---------------------------------------------------------------------------------- (b) DPO tokens/s


def dpo_rows(count: int) -> list[dict[str, Any]]:
    from datagen.io import default_seeds_path, read_seed_tasks, seed_to_record

    rows = []
    for seed in (seed_to_record(t) for t in read_seed_tasks(default_seeds_path())):
        first = re.split(r"(?<=[.!?])\s", seed.output.strip(), maxsplit=1)[0]
        if len(seed.output.split()) < 12 or first.strip() == seed.output.strip():
            continue
        rows.append({"prompt": [{"role": "user", "content": seed.prompt_text()}],
                     "chosen": [{"role": "assistant", "content": seed.output}],
                     "rejected": [{"role": "assistant", "content": first}]})
        if len(rows) == count:
            break
    return rows


def make_dpo_mode(method: str, rows: list[dict[str, Any]], args: argparse.Namespace, tmp: str) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from datagen.embedded import embedded_model_dir
    from finetune.config import FinetuneConfig
    from finetune.dpo import build_dpo_config
    from finetune.trainer_setup import build_peft_config

    config = FinetuneConfig(objective="dpo", method=method, batch_size=args.dpo_batch, max_length=args.max_length,
                            cpu=True, eval_fraction=0, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    trainer = DPOTrainer(model=model, args=build_dpo_config(config, Path(tmp) / method, False, False),
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=build_peft_config(config))
    batches = list(trainer.get_train_dataloader())
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps
    trainer.model.train()
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"name": method, "trainer": trainer, "batches": batches, "trainable_params": trainable,
            "rates": [], "tokens": [], "times": []}


def dpo_step(mode: dict[str, Any], index: int, timed: bool) -> None:
    trainer = mode["trainer"]
    batch = mode["batches"][index % len(mode["batches"])]
    tokens = int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())
    elapsed = timed_optimizer_step(trainer, [batch])
    if timed:
        mode["times"].append(elapsed)
        mode["tokens"].append(tokens)
        mode["rates"].append(tokens / elapsed)


# ------------------------------------------------------------------------------------------ main


def _median_row(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    ordered = sorted(runs, key=lambda r: r[key])
    values = [round(r[key], 2) for r in runs]
    return {**ordered[len(ordered) // 2], "runs": values, "spread": [min(values), max(values)]}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=1024, help="instructions per pairs/s run")
    parser.add_argument("--n", type=int, default=4, help="answers per instruction")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the server takes per reply")
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of path and floor")
    parser.add_argument("--dpo-pairs", type=int, default=32)
    parser.add_argument("--dpo-batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=384)
    parser.add_argument("--dpo-steps", type=int, default=3, help="timed steps per mode (after a warm-up step)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on the shared 2-core machine)")
    parser.add_argument("--skip-dpo", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started, load_start = time.time(), load()

    prompts = instructions(args.prompts)
    proc, base_url = start_server(args.latency)
    path_runs: list[dict[str, Any]] = []
    floor_runs: list[dict[str, Any]] = []
    try:
        run_path(base_url, prompts[:64], 64, args.n)  # warm-up: imports, connections; not measured
        for _ in range(args.repeats):
            path_runs.append(run_path(base_url, prompts, args.concurrency, args.n))
            floor_runs.append(run_floor(base_url, prompts, args.concurrency, args.n, path_runs[-1]["pairs"]))
    finally:
        proc.terminate()
        proc.wait(10)
    path, floor = _median_row(path_runs, "pairs_per_s"), _median_row(floor_runs, "pairs_per_s")
    pair_ratio = path["pairs_per_s"] / floor["pairs_per_s"]
    little = args.concurrency / args.latency
    print(f"(a) {args.prompts} instructions x n={args.n}, judge per answer, {args.concurrency} in flight, server "
          f"{args.latency * 1000:.0f} ms/reply (Little's bound {little:.0f} req/s); load {load()}")
    print(f"{'':<32}{'pairs/s':>9}{'seconds':>9}{'pairs':>7}{'requests':>10}{'max in flight':>15}  runs (pairs/s)")
    for name, row in (("datagen distill -> preference", path), ("bare aiohttp, same requests", floor)):
        print(f"{name:<32}{row['pairs_per_s']:>9.1f}{row['seconds']:>9.2f}{row.get('pairs', path['pairs']):>7}"
              f"{row['requests']:>10}{row['max_in_flight']:>15}  {row['runs']}")

    dpo: dict[str, Any] = {}
    if not args.skip_dpo:
        import torch

        torch.set_num_threads(args.threads)
        rows = dpo_rows(args.dpo_pairs)
        with tempfile.TemporaryDirectory() as tmp:
            modes = [make_dpo_mode("lora", rows, args, tmp), make_dpo_mode("full", rows, args, tmp)]
            for mode in modes:
                dpo_step(mode, 0, timed=False)
            for i in range(1, args.dpo_steps + 1):
                for mode in modes:
                    dpo_step(mode, i, timed=True)
        for mode in modes:
            rates = mode["rates"]
            dpo[mode["name"]] = {"tokens_per_s": round(statistics.median(rates), 1),
                                 "spread": [round(min(rates), 1), round(max(rates), 1)],
                                 "runs": [round(r, 1) for r in rates], "tokens_per_step": mode["tokens"],
                                 "seconds_per_step": [round(t, 2) for t in mode["times"]],
                                 "trainable_params": mode["trainable_params"]}
        print(f"(b) DPO on SmolLM2-135M (embedded), CPU fp32, {args.threads} thread(s), {len(rows)} pairs, "
              f"batch {args.dpo_batch} pairs, max_length {args.max_length}; load {load()}")
        for name, row in dpo.items():
            print(f"  {name:<5} {row['tokens_per_s']:>8.1f} tokens/s (median of {len(row['runs'])} steps, spread "
                  f"{row['spread'][0]}-{row['spread'][1]}), {row['trainable_params']:,} trainable parameters")

    report = {
        "bench": "preference",
        "pairs": {"prompts": args.prompts, "n": args.n, "concurrency": args.concurrency, "latency_s": args.latency,
                  "little_bound_rps": little, "path": path, "floor": floor, "path_over_floor": round(pair_ratio, 3)},
        "dpo": {"model": "SmolLM2-135M-Instruct (embedded)", "device": "cpu", "threads": args.threads,
                "pairs": args.dpo_pairs, "batch_pairs": args.dpo_batch, "max_length": args.max_length,
                "modes": dpo,
                "lora_over_full": round(dpo["lora"]["tokens_per_s"] / dpo["full"]["tokens_per_s"], 3) if dpo else None},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_start": load_start, "load_avg_end": load()},
        "wall_seconds": round(time.time() - started, 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")
    print(f"pairs/s datagen path / bare-client floor: {path['pairs_per_s']:.1f} / {floor['pairs_per_s']:.1f} = "
          f"{pair_ratio:.3f}")
    if dpo:
        print(f"DPO tokens/s LoRA / full: {dpo['lora']['tokens_per_s']:.1f} / {dpo['full']['tokens_per_s']:.1f} = "
              f"{report['dpo']['lora_over_full']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
