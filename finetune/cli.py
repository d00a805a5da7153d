"""`datagen finetune`: train a model on a dataset file with LoRA or full fine-tuning.

Only the options a user sets are passed on; every default lives in `FinetuneConfig`.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# Older flag spellings kept as aliases of the generated `--field-name` flags.
_ALIASES = {
    "neftune_noise_alpha": ["--neftune-alpha"],
    "lora_target_modules": ["--lora-targets"],
    "num_threads": ["--threads"],
    "sample_prompts": ["--samples"],
    "sample_max_new_tokens": ["--sample-tokens"],
    "save_merged": ["--merge"],  # gives --no-merge
}


def _targets(text: str) -> str | list[str]:
    targets = [t.strip() for t in text.split(",") if t.strip()]
    return targets[0] if targets == ["all-linear"] else targets


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from datagen.cli_config import add_config_flags
    from finetune.train import FinetuneConfig

    parser = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on a dataset (LoRA or full; TRL + PEFT)",
        description=(
            "Supervised fine-tuning on chat examples made from the records (system prompt optional, user =\n"
            "instruction + input, assistant = output; multi-turn messages kept). Loss on assistant tokens only,\n"
            "examples packed (best-fit decreasing, no attention across examples), held-out eval loss before and\n"
            "after, and base-vs-tuned answers to held-out prompts in OUT/samples.md. OUT gets adapter/ (LoRA),\n"
            "model/ (merged, loadable with --llm local:OUT/model) and metrics.json; it appears only when\n"
            "everything is written. Every FinetuneConfig field is a flag; --set FIELD=VALUE sets any of them."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input", "--data", dest="data", required=True,
                        help="records: our jsonl, Alpaca, ShareGPT, messages, parquet, HF folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--set", dest="set_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config field (YAML value), e.g. --set lora_r=8")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--wait", action="store_true",
                        help="when another process trains into --out, wait for it to end (default: stop, exit 2)")
    fields = add_config_flags(parser, FinetuneConfig, aliases=_ALIASES, value_parsers={"lora_target_modules": _targets})
    parser.set_defaults(func=_run, finetune_fields=fields)


def config_from_args(args: argparse.Namespace) -> Any:
    """Only what the user set; the rest comes from FinetuneConfig's defaults."""
    from datagen.cli_config import config_from_args as validated
    from finetune.train import FinetuneConfig

    try:
        return validated(args, FinetuneConfig, args.finetune_fields)
    except ValueError as exc:  # one clear line via datagen.cli
        raise ValueError(f"invalid finetune options: {exc}") from None


def _run(args: argparse.Namespace) -> int:
    from finetune.train import train

    config = config_from_args(args)
    metrics = train(args.data, config, args.out, progress=not args.no_progress, wait=args.wait)
    if metrics.get("saved") is False:
        print(f"machine {config.machine_rank} of {config.num_machines}: its processes trained their share; "
              f"machine 0 ({config.main_process_ip}) saved the model and metrics in its --out", file=sys.stderr)
    else:
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

    if metrics.get("objective") == "dpo":
        accuracy = metrics.get("held_out_pair_accuracy")
        return "\n".join([
            f"DPO ({metrics.get('method')}, beta {metrics.get('beta')}): {metrics.get('train_pairs')} train / "
            f"{metrics.get('eval_pairs')} held-out pairs, {metrics.get('steps')} steps, "
            f"train loss {fmt(metrics.get('train_loss'), 'loss')}",
            f"held-out pair accuracy {fmt(accuracy, 'loss')}, reward margin "
            f"{fmt(metrics.get('held_out_reward_margin'), 'loss')}",
            f"saved to {out}/ (model/, metrics.json, train_log.json)",
        ])
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
