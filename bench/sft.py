"""SFT throughput: packing (best-fit decreasing, padding-free) vs two padding baselines, same
data, same model.

All modes train LoRA on the embedded SmolLM2-135M with TRL's SFTTrainer exactly as
`finetune.train` configures it; they differ only in how rows are batched:
- `packing_bfd`: packing (`packing=True`, best-fit decreasing, no pad slots);
- `padding`: random batches padded to their longest example (the Trainer's default);
- `padding_grouped`: padded, but batches drawn by transformers' `LengthGroupedSampler`
  (`train_sampling_strategy="group_by_length"`), so examples of similar length share a batch
  and little is padding. This is the honest padding baseline: the headline ratio is packing
  over the better of the two padded modes. The data is 200 chat examples
of varied length: the 175 seed tasks plus 25 multi-turn conversations stitched from 2-5 seeds.

The padded batch size is chosen so that both modes see about the same number of *real* tokens
per optimizer step (rows * max_length for packing), so the comparison is per useful token, not
per step. Steps of the modes are interleaved (A B C A B C ...) after one untimed warm-up step
each, so load from other processes on the machine hits all alike. Each timed step is the
Trainer's own `training_step` (forward, loss, backward) plus the optimizer step.

Reported per mode: real tokens/s, slot tokens/s (real + pad), the share of non-pad tokens over
the whole epoch and over the timed steps. The last line is the speed ratio packing / the faster
padded mode.

    python bench/sft.py            # ~5 min on a busy 2-core machine, ~2 min idle
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datagen.records import Message, Record  # noqa: E402


def build_records(n: int, seed: int) -> list[Record]:
    """Seed tasks (single-turn, 50-340 tokens) plus multi-turn conversations (300-900 tokens)."""
    from datagen.io import default_seeds_path, read_seed_tasks, seed_to_record

    seeds = [seed_to_record(t) for t in read_seed_tasks(default_seeds_path())]
    rng = random.Random(seed)
    records = list(seeds[:n])
    while len(records) < n:
        parts = rng.sample(seeds, rng.randint(2, 5))
        messages = []
        for part in parts:
            messages += [
                Message(role="user", content=part.prompt_text()),
                Message(role="assistant", content=part.output),
            ]
        records.append(
            Record(id=f"multi{len(records)}", instruction=parts[0].prompt_text(), messages=messages)
        )
    return records


def batch_tokens(batch: dict[str, Any]) -> tuple[int, int]:
    """(real tokens, slots) of a collated batch: padding-free batches have no pad slots."""
    slots = int(batch["input_ids"].numel())
    real = int(batch["attention_mask"].sum()) if "attention_mask" in batch else slots
    return real, slots


def make_mode(
    name: str,
    packing: bool,
    batch_size: int,
    examples: list[dict],
    args: argparse.Namespace,
    sampling: str = "random",
) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.embedded import embedded_model_dir
    from finetune.train import FinetuneConfig
    from finetune.trainer_setup import make_trainer, prepare_tokenizer

    config = FinetuneConfig(
        method=args.method,
        packing=packing,
        max_length=args.max_length,
        batch_size=batch_size,
        eval_fraction=0,
        seed=args.seed,
        cpu=True,
    )
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    prepare_tokenizer(tokenizer, config, [e["messages"] for e in examples])
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    trainer = make_trainer(model, tokenizer, examples, [], config, Path(args.tmp) / name)
    trainer.args.train_sampling_strategy = sampling  # read when the dataloader is built, just below
    batches = list(trainer.get_train_dataloader())  # one epoch, in the trainer's (seeded) order
    real = sum(batch_tokens(b)[0] for b in batches)
    slots = sum(batch_tokens(b)[1] for b in batches)
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = (
        trainer.args.gradient_accumulation_steps
    )  # set in Trainer.train()
    trainer.model.train()
    return {
        "name": name,
        "trainer": trainer,
        "batches": batches,
        "epoch_real": real,
        "epoch_slots": slots,
        "batch_size": batch_size,
        "times": [],
        "real": [],
        "slots": [],
    }


def timed_optimizer_step(trainer: Any, micro_batches: list[dict[str, Any]]) -> float:
    """Seconds for one optimizer step as the Trainer takes it: its own `training_step`
    (forward, loss, backward) per micro-batch, then the update. Shared by the SFT and DPO
    benches so both time the same thing."""
    start = time.perf_counter()
    for batch in micro_batches:
        trainer.training_step(trainer.model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def step(mode: dict, index: int, timed: bool) -> None:
    """One optimizer step: `gradient_accumulation_steps` micro-batches (forward, loss, backward)
    through the Trainer's own `training_step`, then the optimizer update."""
    trainer = mode["trainer"]
    accum = trainer.args.gradient_accumulation_steps
    micro = [mode["batches"][(index * accum + k) % len(mode["batches"])] for k in range(accum)]
    real = sum(batch_tokens(b)[0] for b in micro)
    slots = sum(batch_tokens(b)[1] for b in micro)
    elapsed = timed_optimizer_step(trainer, micro)
    if timed:
        mode["times"].append(elapsed)
        mode["real"].append(real)
        mode["slots"].append(slots)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=512, help="packed row length and truncation length")
    parser.add_argument("--rows", type=int, default=2, help="packed rows per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per mode (after one warm-up step)")
    parser.add_argument("--method", choices=("lora", "full"), default="lora")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine two threads run 3-6x slower, see DESIGN.md)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default="/tmp/datagen-bench-sft")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "sft.json"))
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoTokenizer

    from datagen.embedded import embedded_model_dir
    from finetune.data import records_to_examples

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    examples, _ = records_to_examples(build_records(args.records, args.seed))
    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    lengths = sorted(
        min(
            len(tokenizer.apply_chat_template(e["messages"], tokenize=True, return_dict=False)),
            args.max_length,
        )
        for e in examples
    )
    mean_len = statistics.fmean(lengths)
    # Same real tokens per step on average: a packed step holds about rows * max_length of them.
    pad_batch = max(1, round(args.rows * args.max_length / mean_len))

    packed = make_mode("packing_bfd", True, args.rows, examples, args)
    padded = make_mode("padding", False, pad_batch, examples, args)
    grouped = make_mode("padding_grouped", False, pad_batch, examples, args, sampling="group_by_length")
    modes = (packed, padded, grouped)
    for mode in modes:
        step(mode, 0, timed=False)  # warm-up: allocator, kernels, optimizer state
    for i in range(1, args.steps + 1):
        for mode in modes:
            step(mode, i, timed=True)

    results: dict[str, Any] = {}
    for mode in modes:
        seconds = sum(mode["times"])
        results[mode["name"]] = {
            "batch_size": mode["batch_size"],
            "forward_passes_per_step": mode["trainer"].args.gradient_accumulation_steps,
            "timed_steps": len(mode["times"]),
            "seconds": round(seconds, 2),
            "real_tokens": sum(mode["real"]),
            "slot_tokens": sum(mode["slots"]),
            "tokens_per_second": round(sum(mode["real"]) / seconds, 1),
            "slots_per_second": round(sum(mode["slots"]) / seconds, 1),
            "non_pad_share_timed": round(sum(mode["real"]) / sum(mode["slots"]), 4),
            "non_pad_share_epoch": round(mode["epoch_real"] / mode["epoch_slots"], 4),
            "steps_per_epoch": len(mode["batches"]) // mode["trainer"].args.gradient_accumulation_steps,
            "real_tokens_per_step": round(sum(mode["real"]) / len(mode["real"]), 1),
        }
    best_padded = max(("padding", "padding_grouped"), key=lambda m: results[m]["tokens_per_second"])
    ratio = results["packing_bfd"]["tokens_per_second"] / results[best_padded]["tokens_per_second"]
    naive_ratio = results["packing_bfd"]["tokens_per_second"] / results["padding"]["tokens_per_second"]
    epoch_ratio = results["padding"]["steps_per_epoch"] and (
        results["padding"]["steps_per_epoch"] / results["packing_bfd"]["steps_per_epoch"]
    )
    report = {
        "bench": "sft_packing_vs_padding",
        "model": "SmolLM2-135M-Instruct (embedded)",
        "method": args.method,
        "records": len(examples),
        "max_length": args.max_length,
        "example_tokens": {
            "min": lengths[0],
            "median": statistics.median(lengths),
            "mean": round(mean_len, 1),
            "p90": lengths[int(0.9 * (len(lengths) - 1))],
            "max": lengths[-1],
        },
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch": torch.__version__,
        "results": results,
        "speed_ratio": round(ratio, 3),
        "speed_ratio_baseline": best_padded,
        "speed_ratio_vs_random_padding": round(naive_ratio, 3),
        "load_average": Path("/proc/loadavg").read_text().split()[:3]
        if Path("/proc/loadavg").exists()
        else None,
        "steps_per_epoch_ratio": round(epoch_ratio, 3),
        "wall_seconds": round(time.time() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    header = f"{'mode':<15} {'batch':>5} {'steps':>5} {'real tok':>8} {'tok/s':>7} {'slot/s':>7} {'non-pad':>7} {'epoch non-pad':>13}"
    print(
        f"SFT {args.method} on {report['model']}, {len(examples)} examples, tokens/example "
        f"{report['example_tokens']}, max_length {args.max_length}, {args.threads} threads"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        print(
            f"{name:<15} {r['batch_size']:>5} {r['timed_steps']:>5} {r['real_tokens']:>8} {r['tokens_per_second']:>7} "
            f"{r['slots_per_second']:>7} {r['non_pad_share_timed']:>7.1%} {r['non_pad_share_epoch']:>13.1%}"
        )
    print(f"wrote {out}")
    print(f"load average {report['load_average']}; packing / random padding {naive_ratio:.2f}x")
    print(f"speed ratio packing / best padding ({best_padded}) (real tokens/s): {ratio:.2f}x (goal >= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
