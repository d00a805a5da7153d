"""`datagen finetune`: train a model on a dataset file with LoRA or full fine-tuning.

Only the options a user sets are passed on; every default lives in `FinetuneConfig`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# argparse dest -> FinetuneConfig field, for the options that map one to one.
_FIELDS = {
    "base_model": "base_model",
    "method": "method",
    "epochs": "epochs",
    "lr": "lr",
    "max_steps": "max_steps",
    "warmup_ratio": "warmup_ratio",
    "lr_scheduler": "lr_scheduler",
    "max_length": "max_length",
    "batch_size": "batch_size",
    "grad_accum": "grad_accum",
    "neftune_alpha": "neftune_noise_alpha",
    "lora_r": "lora_r",
    "lora_alpha": "lora_alpha",
    "lora_dropout": "lora_dropout",
    "eval_fraction": "eval_fraction",
    "seed": "seed",
    "system_prompt": "system_prompt",
    "chat_template": "chat_template",
    "threads": "num_threads",
    "samples": "sample_prompts",
    "sample_tokens": "sample_max_new_tokens",
    "merged_dtype": "merged_dtype",
    "launcher": "launcher",
    "num_processes": "num_processes",
    "num_machines": "num_machines",
    "machine_rank": "machine_rank",
    "main_process_ip": "main_process_ip",
    "distributed": "distributed",
}


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on a dataset (LoRA or full; TRL + PEFT)",
        description=(
            "Supervised fine-tuning on chat examples made from the records (system prompt optional, user = "
            "instruction + input, assistant = output; multi-turn messages kept). Loss on assistant tokens only, "
            "examples packed (best-fit decreasing, no attention across examples), held-out eval loss before and "
            "after, and base-vs-tuned answers to held-out prompts in OUT/samples.md. OUT gets adapter/ (LoRA), "
            "model/ (merged, loadable with --llm local:OUT/model) and metrics.json; it appears only when "
            "everything is written."
        ),
    )
    parser.add_argument("--data", required=True, help="records: our jsonl, Alpaca, ShareGPT, messages, parquet, HF folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--method", choices=("lora", "full"), default=None, help="(default lora)")
    parser.add_argument("--base-model", default=None, help="HF id or local folder (default: embedded SmolLM2-135M)")
    parser.add_argument("--epochs", type=float, default=None, help="(default 3)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-4 LoRA, 2e-5 full)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (overrides --epochs)")
    parser.add_argument("--warmup-ratio", type=float, default=None, help="(default 0.03)")
    parser.add_argument("--lr-scheduler", default=None, help="cosine (default), linear, constant, ...")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per example / packed row (default 2048)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default 2)")
    parser.add_argument("--grad-accum", type=int, default=None, help="gradient accumulation steps (default 1)")
    parser.add_argument("--no-packing", action="store_true", help="pad each batch instead of packing examples")
    parser.add_argument(
        "--no-assistant-only-loss", action="store_true", help="train on every token, prompts included"
    )
    parser.add_argument("--neftune-alpha", type=float, default=None, help="NEFTune noise alpha (default off; paper 5-15)")
    parser.add_argument("--lora-r", type=int, default=None, help="(default 16)")
    parser.add_argument("--lora-alpha", type=int, default=None, help="(default 32)")
    parser.add_argument("--lora-dropout", type=float, default=None, help="(default 0.05)")
    parser.add_argument("--lora-targets", default=None, help="comma-separated module names (default all-linear)")
    parser.add_argument("--eval-fraction", type=float, default=None, help="held-out share (default 0.05)")
    parser.add_argument("--seed", type=int, default=None, help="(default 0)")
    parser.add_argument("--system-prompt", default=None, help="system message for examples without one")
    parser.add_argument("--chat-template", default=None, help=".jinja training template with {%% generation %%} markers")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-merge", action="store_true", help="LoRA: save only the adapter, not the merged model")
    parser.add_argument("--merged-dtype", choices=("auto", "float32", "bfloat16", "float16"), default=None)
    parser.add_argument("--samples", type=int, default=None, help="held-out prompts to compare base/tuned on (default 3)")
    parser.add_argument("--sample-tokens", type=int, default=None, help="max new tokens per sample answer (default 128)")
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even if a GPU is available")
    parser.add_argument("--launcher", choices=("none", "accelerate"), default=None,
                        help="accelerate: run --num-processes training processes (default none: this process)")
    parser.add_argument("--num-processes", type=int, default=None, help="training processes in all (GPUs)")
    parser.add_argument("--num-machines", type=int, default=None, help="machines; run the same command on each")
    parser.add_argument("--machine-rank", type=int, default=None, help="this machine's rank (0 = main)")
    parser.add_argument("--main-process-ip", default=None, help="address of machine 0 (multi-machine)")
    parser.add_argument("--distributed", choices=("auto", "ddp", "fsdp"), default=None,
                        help="auto: DDP for LoRA, FSDP for full fine-tuning")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace) -> Any:
    """Only what the user set; the rest comes from FinetuneConfig's defaults."""
    from finetune.train import FinetuneConfig

    values: dict[str, Any] = {
        field: getattr(args, dest) for dest, field in _FIELDS.items() if getattr(args, dest, None) is not None
    }
    if args.no_packing:
        values["packing"] = False
    if args.no_assistant_only_loss:
        values["assistant_only_loss"] = False
    if args.no_merge:
        values["save_merged"] = False
    if args.cpu:
        values["cpu"] = True
    if args.lora_targets:
        targets = [t.strip() for t in args.lora_targets.split(",") if t.strip()]
        values["lora_target_modules"] = targets[0] if targets == ["all-linear"] else targets
    try:
        return FinetuneConfig(**values)
    except Exception as exc:  # pydantic.ValidationError -> one clear line via datagen.cli
        raise ValueError(f"invalid finetune options: {exc}") from None


def _run(args: argparse.Namespace) -> int:
    from finetune.train import train

    config = config_from_args(args)
    metrics = train(args.data, config, args.out, progress=not args.no_progress)
    print(format_summary(metrics, args.out), file=sys.stderr)
    print(json.dumps(metrics, ensure_ascii=False))
    return 0


def format_summary(metrics: dict[str, Any], out: str) -> str:
    def fmt(value: Any, name: str) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.4f}" if "loss" in name else f"{value:.1f}"
        return str(value)

    rows = [
        ("method", metrics.get("method")),
        ("examples train / eval", f"{metrics.get('train_examples')} / {metrics.get('eval_examples')}"),
        ("steps", metrics.get("steps")),
        ("train loss", metrics.get("train_loss")),
        ("eval loss before", metrics.get("eval_loss_before")),
        ("eval loss after", metrics.get("eval_loss_after")),
        ("train tokens", metrics.get("train_tokens")),
        ("tokens/s", metrics.get("tokens_per_second")),
        ("train seconds", metrics.get("train_seconds")),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {fmt(value, name)}" for name, value in rows]
    lines.append(f"saved to {out}/ (model/, samples.md, metrics.json)")
    return "\n".join(lines)
