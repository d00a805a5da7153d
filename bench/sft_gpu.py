"""The SFT stage on a GPU: LoRA and full fine-tuning through `finetune.train`, as a pipeline runs it.

For a lent GPU machine that cannot download models: `--init-from FOLDER` builds a model with
the architecture and tokenizer in FOLDER (config.json + tokenizer files) and random weights,
so the numbers are throughput and the GPU code path (bf16, device placement, packing,
assistant-only masking), not quality. With a real model folder use `--model FOLDER`.

    python bench/sft_gpu.py --init-from .gpu/smol --out /tmp/sft_gpu   # figures: bench/results/sft_gpu.json

bench/gpu.py supersedes this for sizes users train (1.7B, 8B shapes; MFU; TRL baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def random_init_model(init_from: Path, target: Path) -> Path:
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(init_from)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(target)
    for path in init_from.iterdir():
        if path.name != "config.json":
            shutil.copy(path, target / path.name)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a real causal-LM folder")
    parser.add_argument("--init-from", default=None, help="architecture + tokenizer folder for random weights")
    parser.add_argument("--out", default="/tmp/sft_gpu", help="work folder (random-init model, trained outputs)")
    parser.add_argument("--max-steps", type=int, default=60)
    args = parser.parse_args()

    import torch

    from bench.sft import build_records
    from finetune.train import FinetuneConfig, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = args.model or str(random_init_model(Path(args.init_from), out / "random_init"))
    records = build_records(400, seed=0)
    rows = []
    for method in ("lora", "full"):
        config = FinetuneConfig(base_model=model, method=method, max_steps=args.max_steps, batch_size=8,
                                max_length=1024, sample_prompts=2, sample_max_new_tokens=32, logging_steps=10)
        torch.cuda.reset_peak_memory_stats() if torch.cuda.is_available() else None
        started = time.perf_counter()
        metrics = train(records, config, out / method, progress=False)
        wall = time.perf_counter() - started
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0
        rows.append({"method": method, "device": metrics["device"], "steps": metrics["steps"],
                     "train_tokens": metrics["train_tokens"], "tokens_per_second": metrics["tokens_per_second"],
                     "eval_loss_before": metrics.get("eval_loss_before"), "eval_loss_after": metrics.get("eval_loss_after"),
                     "peak_gpu_gib": round(peak, 2), "wall_seconds": round(wall, 1)})
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device: {name}; model: {'random-init ' + str(args.init_from) if args.init_from else model}")
    print(f"{'method':6s} {'steps':>5s} {'tokens':>8s} {'tok/s':>9s} {'eval before':>11s} {'eval after':>10s} {'peak GiB':>8s}")
    for row in rows:
        print(f"{row['method']:6s} {row['steps']:5d} {row['train_tokens']:8d} {row['tokens_per_second']:9.1f} "
              f"{row['eval_loss_before']:11.4f} {row['eval_loss_after']:10.4f} {row['peak_gpu_gib']:8.2f}")
    results = ROOT / "bench" / "results" / "sft_gpu.json"
    results.write_text(json.dumps({"device": name, "rows": rows, "torch": torch.__version__,
                                   "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "load_average": list(os.getloadavg())}, indent=2) + "\n")
    lora, full = rows
    print(f"full / LoRA tokens/s: {full['tokens_per_second'] / lora['tokens_per_second']:.2f}")


if __name__ == "__main__":
    main()
