"""Direct preference optimisation (DPO) with TRL's `DPOTrainer`, LoRA or full.

Why its own module beside the SFT loop: the data (prompt + chosen + rejected, not one
conversation), the trainer and what is worth reporting (reward margins and how often the
tuned model prefers the chosen answer on held-out pairs, not a loss on answers) all differ;
the config, base-model resolution, LoRA settings and the atomic output folder are shared.

The reference model is the model training starts from: with LoRA it is that model with the
adapter switched off (TRL does this when no `ref_model` is given: no second copy in memory),
with full fine-tuning TRL loads a frozen copy. So a DPO step whose `base_model` is the SFT
step's output compares against the SFT model, and one on the base against the base.
Recipe measured on this CPU (DESIGN.md): LoRA r=8 on q/v in fp32 with `use_cpu`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datagen.jsonl import jsonl_lines
from datagen.preference_io import PreferencePair, checked_record_pairs, read_pairs
from datagen.records import Record
from finetune.config import FinetuneConfig
from finetune.data import eval_count, load_records
from finetune.trainer_setup import (
    build_peft_config,
    model_load_kwargs,
    on_cpu,
    resolve_base_model,
    shared_training_args,
)

Row = dict[str, Any]


def load_pairs(source: Sequence[Record] | str | Path) -> list[PreferencePair]:
    """Checked pairs from records (`meta.chosen`/`meta.rejected`, the preference stage's output),
    a `dpo`/`dpo_text` export, or a records file; a bad pair is a one-line error."""
    if isinstance(source, str | Path):
        path = Path(source)
        first = next((line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()), "")
        if path.suffix == ".jsonl" and '"chosen"' in first and '"meta"' not in first:
            return read_pairs(path)
        try:
            return checked_record_pairs(load_records(path))
        except ValueError as exc:
            raise ValueError(_at_line(path, str(exc))) from None
    return checked_record_pairs(load_records(source))


def _at_line(path: Path, message: str) -> str:
    """A "record ID: ..." error from a records file as "path:line: ..." (the line of that id)."""
    record_id, sep, rest = message.removeprefix("record ").partition(": ")
    if message.startswith("record ") and sep and path.suffix == ".jsonl":
        for number, line in jsonl_lines(path.read_text(encoding="utf-8")):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and str(row.get("id")) == record_id:
                return f"{path}:{number}: record {record_id}: {rest}"
    return f"{path}: {message}"


def pair_rows(pairs: Sequence[PreferencePair], system_prompt: str | None = None) -> list[Row]:
    """TRL's conversational preference rows."""
    rows = []
    for pair in pairs:
        prompt = list(pair.prompt)
        if system_prompt and prompt[0]["role"] != "system":
            prompt.insert(0, {"role": "system", "content": system_prompt})
        rows.append({
            "id": pair.id,
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": pair.chosen}],
            "rejected": [{"role": "assistant", "content": pair.rejected}],
        })
    return rows


def split_pairs(rows: list[Row], eval_fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Held-out pairs by a hash of (seed, prompt): every pair of one prompt lands on the same
    side, so held-out accuracy is measured on prompts the model never trained on."""
    def key(row: Row) -> str:
        prompt = "\x1e".join(m["content"] for m in row["prompt"])
        return hashlib.sha256(f"{seed}\x1f{prompt}".encode()).hexdigest()

    prompts = sorted({key(r) for r in rows})
    held = set(prompts[: eval_count(len(prompts), eval_fraction)])
    return [r for r in rows if key(r) not in held], [r for r in rows if key(r) in held]


def build_dpo_config(config: FinetuneConfig, output_dir: str | Path, has_eval: bool, progress: bool) -> Any:
    """The `trl.DPOConfig` for `config` (pure: no model, no data)."""
    from trl import DPOConfig

    return DPOConfig(
        **shared_training_args(config, output_dir, progress),
        beta=config.beta,
        loss_type=[config.loss_type] if isinstance(config.loss_type, str) else list(config.loss_type),
        precompute_ref_log_probs=config.precompute_ref_log_probs,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        max_length=config.max_length,
        eval_strategy="no",  # held-out pairs are measured before and after, by us
    )


def make_dpo_trainer(model: Any, tokenizer: Any, train_rows: list[Row], eval_rows: list[Row],
                     config: FinetuneConfig, output_dir: str | Path, progress: bool = False) -> Any:
    """The `trl.DPOTrainer` a run uses, for a loaded model (apart so bench/gpu.py can time exactly it)."""
    from datasets import Dataset
    from trl import DPOTrainer

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    strip = [{k: v for k, v in r.items() if k != "id"} for r in train_rows]
    held = [{k: v for k, v in r.items() if k != "id"} for r in eval_rows]
    return DPOTrainer(
        model=model,
        args=build_dpo_config(config, output_dir, bool(eval_rows), progress),
        train_dataset=Dataset.from_list(strip),
        eval_dataset=Dataset.from_list(held) if held else None,
        processing_class=tokenizer,
        peft_config=build_peft_config(config),
    )


def dpo_into(folder: Path, train_rows: list[Row], eval_rows: list[Row], config: FinetuneConfig,
             progress: bool) -> dict[str, Any]:
    """Train with DPO and save into `folder` (adapter/ and merged model/, or model/); the metrics."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    base = resolve_base_model(config)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, **model_load_kwargs(config))
    trainer = make_dpo_trainer(model, tokenizer, train_rows, eval_rows, config, folder / "_trainer", progress)
    held = eval_rows
    metrics: dict[str, Any] = {
        "objective": "dpo", "method": config.method, "base_model": base, "reference": base,
        "beta": config.beta, "loss_type": config.loss_type, "learning_rate": config.learning_rate,
        "train_pairs": len(train_rows), "eval_pairs": len(eval_rows),
        "device": "cpu" if on_cpu(config) else "cuda",
    }
    metrics["trainable_params"] = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if held and config.eval_before:
        metrics["held_out_before"] = _held_out(trainer.evaluate())
    result = trainer.train()
    history = trainer.state.log_history
    steps = [h for h in history if "loss" in h and "step" in h]
    metrics.update(
        steps=trainer.state.global_step,
        epochs_done=_round(trainer.state.epoch),
        train_loss=_round(result.training_loss),
        train_seconds=round(result.metrics.get("train_runtime", 0.0), 2),
        loss_curve=[[h["step"], _round(h["loss"])] for h in steps],
        reward_margin_curve=[[h["step"], _round(h.get("rewards/margins"))] for h in steps],
        train_pair_accuracy_curve=[[h["step"], _round(h.get("rewards/accuracies"))] for h in steps],
    )
    if held:
        after = _held_out(trainer.evaluate())
        metrics["held_out"] = after
        metrics["held_out_pair_accuracy"] = after.get("pair_accuracy")
        metrics["held_out_reward_margin"] = after.get("reward_margin")
    model_to_save = trainer.model
    if config.method == "lora":
        model_to_save.save_pretrained(folder / "adapter")
        tokenizer.save_pretrained(folder / "adapter")
        model_to_save = model_to_save.merge_and_unload() if config.save_merged else None
    if model_to_save is not None:
        model_to_save.save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")
    from finetune.train_loop import write_json

    write_json(folder / "train_log.json", history)
    if eval_rows:  # the held-out pairs, in the dpo layout: `datagen eval --pairs` measures other models on them
        (folder / "held_out_pairs.jsonl").write_text(
            "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in eval_rows), encoding="utf-8")
    write_json(folder / "finetune_config.json",
               {**config.model_dump(mode="json"), "resolved": {"base_model": base, "learning_rate": config.learning_rate}})
    shutil.rmtree(folder / "_trainer", ignore_errors=True)
    return metrics


def implicit_reward_accuracy(
    policy_dir: str | Path,
    reference_dir: str | Path,
    pairs: Sequence[PreferencePair] | str | Path,
    *,
    beta: float = 0.1,
    max_length: int = 2048,
    system_prompt: str | None = None,
    cpu: bool = False,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """How often `policy_dir`'s implicit reward, beta * (log p_policy - log p_reference), prefers
    the chosen answer of each pair, and the mean margin, for any two saved models.

    Measured by the same `DPOTrainer.evaluate()` that gives a DPO step its held-out numbers
    (same tokenisation, truncation and log-probs), so `datagen eval` on a DPO step's held-out
    pairs against its start model repeats the step's `held_out_pair_accuracy`. One pair per
    batch: TRL averages per batch, so only then is the result the exact share over pairs."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging
    from trl import DPOTrainer

    loaded = list(pairs) if not isinstance(pairs, str | Path) else load_pairs(pairs)
    if not loaded:
        raise ValueError(f"{pairs}: no preference pairs" if isinstance(pairs, str | Path) else "no preference pairs")
    if num_threads:
        torch.set_num_threads(num_threads)
    rows = [{k: v for k, v in r.items() if k != "id"} for r in pair_rows(loaded, system_prompt)]
    config = FinetuneConfig(base_model=str(policy_dir), objective="dpo", method="full", beta=beta,
                            max_length=max_length, batch_size=1, cpu=cpu)
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        policy = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
        reference = AutoModelForCausalLM.from_pretrained(reference_dir, dtype=torch.float32)
        with tempfile.TemporaryDirectory(prefix="datagen-pairs-") as scratch:
            trainer = DPOTrainer(
                model=policy,
                ref_model=reference,
                args=build_dpo_config(config, scratch, has_eval=True, progress=False),
                train_dataset=Dataset.from_list(rows[:1]),  # required by TRL; never trained on
                eval_dataset=Dataset.from_list(rows),
                processing_class=tokenizer,
            )
            result = _held_out(trainer.evaluate())
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    result.pop("loss", None)
    return {**result, "pairs": len(rows), "beta": beta}


def _held_out(result: dict[str, Any]) -> dict[str, Any]:
    """TRL's eval metrics under plain names: the share of held-out pairs whose implicit reward
    (beta * log-ratio to the reference) is higher for the chosen answer, and the mean margin."""
    return {
        "loss": _round(result.get("eval_loss")),
        "pair_accuracy": _round(result.get("eval_rewards/accuracies")),
        "reward_margin": _round(result.get("eval_rewards/margins")),
        "reward_chosen": _round(result.get("eval_rewards/chosen")),
        "reward_rejected": _round(result.get("eval_rewards/rejected")),
    }


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)
