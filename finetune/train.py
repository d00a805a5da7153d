"""Supervised fine-tuning (LoRA or full) with TRL's `SFTTrainer` + PEFT.

We configure TRL rather than re-implement it: chat examples go in as `{"messages": [...]}`,
TRL renders them with the (training) chat template, masks everything but the assistant turns
(`assistant_only_loss`), packs them with best-fit decreasing (`packing_strategy="bfd"`, which is
padding-free with position ids reset per example, so examples never attend to each other),
and adds NEFTune noise when asked. What this module adds is the glue a dataset tool needs:
a validated config with sensible defaults, a held-out eval loss before and after, the outputs
a user wants (adapter, merged model, tokenizer, metrics, base-vs-tuned sample answers), and an
output folder that only appears once everything in it is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datagen.records import Record
from finetune.config import DEFAULT_LR, SCHEDULERS, FinetuneConfig  # noqa: F401 - also importable from here
from finetune.data import (
    DataStats,
    Example,
    load_records,
    prompt_messages,
    records_to_examples,
    reference_answer,
    split_examples,
)
from finetune.trainer_setup import (  # noqa: F401 - also importable from here
    build_peft_config,
    build_sft_config,
    make_trainer,
    on_cpu,
    prepare_tokenizer,
    resolve_base_model,
)

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- training


def train(
    records: Sequence[Record] | str | Path,
    config: FinetuneConfig | None = None,
    out_dir: str | Path = "model",
    progress: bool = True,
    wait: bool = False,
) -> dict[str, Any]:
    """Fine-tune on `records` (or a data file) and write everything to `out_dir`; returns the metrics.

    `out_dir` appears only when training and saving succeeded: all files are written to a hidden
    sibling folder that is renamed at the end, so a crashed run never looks finished. An existing
    finished result in `out_dir` is replaced; any other non-empty folder there is refused. On a
    machine other than machine 0 of a multi-machine run nothing is written: its processes trained
    their share, machine 0 saves the result; the returned summary says `saved: False`.
    One training per `out_dir`: while another process trains into it, this one raises
    `FolderBusy` (exit 2), or with `wait` waits for it to end.
    """
    config = config or FinetuneConfig()
    if config.machine_rank > 0:  # writes nothing; machine 0 holds the output folder
        return _train_and_publish(records, config, Path(out_dir), progress)
    from datagen.run_lock import hold, lock_file_beside

    with hold(lock_file_beside(Path(out_dir)), "datagen finetune", what=str(out_dir), wait=wait):
        return _train_and_publish(records, config, Path(out_dir), progress)


def _train_and_publish(
    records: Sequence[Record] | str | Path, config: FinetuneConfig, out: Path, progress: bool
) -> dict[str, Any]:
    _check_out_dir(out)
    started = time.time()
    examples, stats = records_to_examples(load_records(records), config.system_prompt)
    if not examples:
        raise ValueError(f"no trainable examples: {stats.skipped or 'no records'} (every record needs an output)")
    train_ex, eval_ex = split_examples(examples, config.eval_fraction, config.seed)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from transformers.utils import logging as hf_logging

    hf_bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()  # "Loading weights" etc.
    try:
        if config.launcher == "accelerate":
            from finetune.distributed import launch

            metrics = launch(tmp, train_ex, eval_ex, stats, config, progress)
            if config.machine_rank > 0:
                shutil.rmtree(tmp, ignore_errors=True)
                return metrics
        else:
            metrics = _train_into(tmp, train_ex, eval_ex, stats, config, progress)
        metrics["total_seconds"] = round(time.time() - started, 2)
        _write_json(tmp / "metrics.json", metrics)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()
    return metrics


def _train_into(
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
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
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
    _write_json(folder / "train_log.json", history)
    _write_json(
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


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "metrics.json").exists())):
        raise ValueError(f"{out}: exists and is not a finished fine-tuning result; choose another --out")


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished folder into place; an older result there is removed only afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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


def _write_json(path: Path, data: Any) -> None:
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
    (folder / "samples.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
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
