"""One training run in one process (or one rank of a launched run): load the model, train with
TRL, measure the eval loss before and after, save adapter/merged model and sample answers.

`finetune.train.train` prepares the data and the output folder and calls this directly or
through the accelerate launcher (`finetune.distributed`), whose ranks call it too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from datagen.jsonl import dumps_jsonl
from finetune.config import FinetuneConfig
from finetune.data import (
    DataStats,
    Example,
    prompt_messages,
    reference_answer,
)
from finetune.trainer_setup import (
    make_trainer,
    model_load_kwargs,
    on_cpu,
    prepare_tokenizer,
    resolve_base_model,
)

logger = logging.getLogger(__name__)


def train_into(
    folder: Path,
    train_ex: list[Example],
    eval_ex: list[Example],
    stats: DataStats,
    config: FinetuneConfig,
    progress: bool,
) -> dict[str, Any]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    base = resolve_base_model(config)
    tokenizer = AutoTokenizer.from_pretrained(base)
    stock, template = prepare_tokenizer(tokenizer, config, [ex["messages"] for ex in (*train_ex, *eval_ex)])
    save_dtype = _save_dtype(config, AutoConfig.from_pretrained(base))
    model = AutoModelForCausalLM.from_pretrained(base, **model_load_kwargs(config))
    sample_ex = eval_ex[: config.sample_prompts]
    trainer = make_trainer(model, tokenizer, train_ex, eval_ex, config, folder / "_trainer", progress)

    data_tokens = _dataset_tokens(trainer.train_dataset)
    metrics: dict[str, Any] = {
        "method": config.method,
        "base_model": base,
        "train_examples": len(train_ex),
        "eval_examples": len(eval_ex),
        "data": stats.as_dict(),
        "train_dataset_tokens": data_tokens["tokens"],
        "assistant_tokens": data_tokens["trained"],
        "packed_rows": data_tokens["rows"] if config.packing else None,
        "learning_rate": config.learning_rate,
        "packing": "bfd" if config.packing else False,
        "assistant_only_loss": config.assistant_only_loss,
        "neftune_noise_alpha": config.neftune_noise_alpha,
        "chat_template_source": template.source if template else "stock",
        "device": "cpu" if on_cpu(config) else "cuda",
    }
    trainable, total = _param_counts(trainer.model)
    metrics.update(trainable_params=trainable, total_params=total)

    main = is_main_process()
    if not main:
        sample_ex = []  # only rank 0 writes; the others would only repeat its work
    base_answers = _generate(trainer.model, tokenizer, stock, sample_ex, config.sample_max_new_tokens)
    if eval_ex and config.eval_before:
        metrics["eval_loss_before"] = _round(trainer.evaluate()["eval_loss"])

    result = trainer.train()
    history = trainer.state.log_history
    train_tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    # train_runtime includes the evaluations at epoch ends; tokens/s is about training only.
    seconds = result.metrics.get("train_runtime", 0.0) - sum(h.get("eval_runtime", 0.0) for h in history)
    metrics.update(
        train_loss=_round(result.training_loss),
        train_loss_last=_round(next((h["loss"] for h in reversed(history) if "loss" in h), None)),
        steps=trainer.state.global_step,
        epochs_done=_round(trainer.state.epoch),
        train_tokens=int(train_tokens),
        train_seconds=round(seconds, 2),
        tokens_per_second=round(train_tokens / seconds, 1) if seconds else None,
        eval_loss_per_epoch=[_round(h["eval_loss"]) for h in history if "eval_loss" in h],
    )
    if eval_ex:
        metrics["eval_loss_after"] = _round(trainer.evaluate()["eval_loss"])

    tuned_answers = _generate(trainer.model, tokenizer, stock, sample_ex, config.sample_max_new_tokens)
    if fsdp_enabled():  # every rank takes part in gathering the sharded weights
        trainer.save_model(str(folder / "_full_state"))
    if not main:
        return metrics
    _write_samples(folder, sample_ex, base_answers, tuned_answers)

    # Save: the tokenizer with its own template (the markers are for training only).
    tokenizer.chat_template = stock
    model_to_save = trainer.model
    if fsdp_enabled():  # gathered above by every rank into one full checkpoint
        (folder / "_full_state").rename(folder / ("adapter" if config.method == "lora" else "model"))
        tokenizer.save_pretrained(folder / ("adapter" if config.method == "lora" else "model"))
        model_to_save = None
    elif config.method == "lora":
        model_to_save.save_pretrained(folder / "adapter")
        tokenizer.save_pretrained(folder / "adapter")
        model_to_save = model_to_save.merge_and_unload() if config.save_merged else None
    if model_to_save is not None:
        model_to_save.to(save_dtype).save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")
    if template is not None:
        (folder / "training_chat_template.jinja").write_text(template.template, encoding="utf-8")
    write_json(folder / "train_log.json", history)
    write_json(
        folder / "finetune_config.json",
        {**config.model_dump(mode="json"), "resolved": {"base_model": base, "learning_rate": config.learning_rate}},
    )
    shutil.rmtree(folder / "_trainer", ignore_errors=True)
    return metrics


# ----------------------------------------------------------------------------- helpers


def is_main_process() -> bool:
    """Rank 0 of a launched run, or a plain single-process run."""
    return int(os.environ.get("RANK", "0")) == 0


def fsdp_enabled() -> bool:
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in {"1", "true"}


def _save_dtype(config: FinetuneConfig, base_config: Any) -> Any:
    import torch

    if config.merged_dtype != "auto":
        return getattr(torch, config.merged_dtype)
    dtype = getattr(base_config, "dtype", None) or getattr(base_config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return dtype if isinstance(dtype, torch.dtype) else torch.float32


def _dataset_tokens(dataset: Any) -> dict[str, int]:
    tokens = trained = rows = 0
    for row in dataset:
        rows += 1
        tokens += len(row["input_ids"])
        trained += sum(1 for label in row["labels"] if label != -100)
    return {"tokens": tokens, "trained": trained, "rows": rows}


def _param_counts(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(float(value), digits)


def write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _generate(model: Any, tokenizer: Any, template: str | None, examples: list[Example], max_new_tokens: int) -> list[str]:
    """Greedy answers, decoded like the `local` backend does (repetition penalty 1.1), so the
    samples show what `--llm local:OUT/model` will produce."""
    if not examples:
        return []
    import torch

    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        texts = [
            tokenizer.apply_chat_template(prompt_messages(ex), chat_template=template, tokenize=False,
                                          add_generation_prompt=True)
            for ex in examples
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        was_training = model.training
        model.eval()
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=1.1,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        if was_training:
            model.train()
    finally:
        tokenizer.padding_side = side
    new = out[:, enc["input_ids"].shape[1] :]
    return [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]


def _write_samples(folder: Path, examples: list[Example], base: list[str], tuned: list[str]) -> None:
    rows = [
        {"id": ex["id"], "prompt": prompt_messages(ex), "reference": reference_answer(ex), "base": b, "tuned": t}
        for ex, b, t in zip(examples, base, tuned, strict=True)
    ]
    (folder / "samples.jsonl").write_text(dumps_jsonl(rows), encoding="utf-8")
    lines = ["# Held-out prompts: base vs tuned model", "",
             "Greedy decoding (repetition penalty 1.1). The reference is the answer in the data.", ""]
    for k, row in enumerate(rows, start=1):
        prompt = "\n\n".join(f"**{m['role']}**: {m['content']}" for m in row["prompt"])
        lines += [f"## {k}. `{row['id']}`", "", prompt, "", "### Reference", "", row["reference"], "",
                  "### Base model", "", row["base"] or "_(empty)_", "", "### Tuned model", "",
                  row["tuned"] or "_(empty)_", ""]
    if not rows:
        lines.append("_No held-out examples (eval_fraction is 0 or the dataset is too small)._")
    (folder / "samples.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
