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
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from datagen.records import Record
from finetune.data import (
    DataStats,
    Example,
    load_records,
    prompt_messages,
    records_to_examples,
    reference_answer,
    split_examples,
)

logger = logging.getLogger(__name__)

DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr", "inverse_sqrt")


class FinetuneConfig(BaseModel):
    """Everything `datagen finetune` and the pipeline's finetune stage can set."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(
        None, description="HF model id or local folder; default: the embedded SmolLM2-135M-Instruct"
    )
    method: Literal["lora", "full"] = Field("lora", description="LoRA adapter or full fine-tuning")
    lr: float | None = Field(None, gt=0, description="peak learning rate; default 2e-4 for LoRA, 2e-5 for full")
    epochs: float = Field(3.0, gt=0, description="passes over the training split (ignored when max_steps is set)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (overrides epochs)")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="share of the steps spent warming up the lr")
    lr_scheduler: Literal[SCHEDULERS] = Field("cosine", description="learning-rate schedule after warmup")  # type: ignore[valid-type]
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_length: int = Field(
        2048, ge=16, description="tokens per example (longer ones are truncated); with packing, tokens per packed row"
    )
    batch_size: int = Field(
        2,
        ge=1,
        description="rows per optimizer step (times grad_accum): packed rows of up to max_length tokens, or padded "
        "examples. On CPU packed rows get one forward pass each and are accumulated",
    )
    grad_accum: int = Field(1, ge=1, description="gradient accumulation steps per optimizer step")
    packing: bool = Field(
        True,
        description="pack examples into max_length rows with best-fit decreasing (no attention across examples, "
        "no pad tokens). The 'wrapped' strategy is never used: it cuts examples and lets them attend to each other",
    )
    assistant_only_loss: bool = Field(
        True, description="train only on assistant tokens (answer + end-of-turn), not on system/user text"
    )
    neftune_noise_alpha: float | None = Field(
        None,
        ge=0,
        description="NEFTune embedding noise (paper: 5-15). Off by default: its gains were shown on 7B models "
        "judged by GPT-4, it makes losses noisy, and with packing transformers scales the noise by the packed "
        "row length, so alpha is weaker than the paper's",
    )
    lora_r: int = Field(16, ge=1, description="LoRA rank")
    lora_alpha: int = Field(32, ge=1, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the LoRA input")
    lora_target_modules: str | list[str] = Field(
        "all-linear", description="modules that get adapters: 'all-linear' (every linear layer but the LM head) or names"
    )
    eval_fraction: float = Field(
        0.05, ge=0, lt=1, description="held-out share for eval loss and sample answers (at least 1 example when >= 4)"
    )
    eval_before: bool = Field(True, description="also measure the eval loss before training (the base model's)")
    seed: int = Field(0, description="seed for the split, adapter init, shuffling and dropout")
    system_prompt: str | None = Field(None, description="system message added to every example that has none")
    chat_template: str | None = Field(
        None, description="training chat template (.jinja path or text) with {% generation %} markers; default: derived"
    )
    num_threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations to save memory (GPU, large models); always off on CPU"
    )
    cpu: bool = Field(False, description="train on the CPU even when a GPU is available")
    save_merged: bool = Field(True, description="LoRA: also save the base model with the adapter merged in")
    merged_dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="dtype of the saved model; auto = the base checkpoint's"
    )
    sample_prompts: int = Field(3, ge=0, description="held-out prompts answered by base and tuned model (samples.md)")
    sample_max_new_tokens: int = Field(128, ge=1, description="answer length for the sample comparison")
    logging_steps: int = Field(1, ge=1, description="log the training loss every N optimizer steps")
    launcher: Literal["none", "accelerate"] = Field(
        "none", description="none: train in this process; accelerate: `accelerate launch` num_processes workers "
        "(DDP for LoRA, FSDP for full), same data, masking, packing and optimizer batch"
    )
    num_processes: int = Field(1, ge=1, description="training processes in all (GPUs, or CPU processes over gloo)")
    num_machines: int = Field(1, ge=1, description="machines taking part; run the same command on each")
    machine_rank: int = Field(0, ge=0, description="this machine's rank (0 = the one at main_process_ip)")
    main_process_ip: str | None = Field(None, description="address of machine 0 (multi-machine only)")
    main_process_port: int | None = Field(None, ge=1, description="rendezvous port (default: a free one)")
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="auto: DDP for LoRA (small trainable part, replicated), FSDP for full fine-tuning "
        "(sharded weights, gradients and optimizer state)"
    )

    @field_validator("lora_target_modules")
    @classmethod
    def _targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("lora_target_modules is empty")
        if isinstance(value, list) and any(name in {"lm_head"} for name in value):
            raise ValueError("an adapter on lm_head is never trained by TRL's fused LM head loss; remove it")
        return value

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]


# ----------------------------------------------------------------------------- configs for TRL / PEFT


def on_cpu(config: FinetuneConfig) -> bool:
    import torch

    return config.cpu or not torch.cuda.is_available()


def build_sft_config(config: FinetuneConfig, output_dir: str | Path, has_eval: bool, progress: bool = True) -> Any:
    """The `trl.SFTConfig` for `config` (pure: no model, no data; tested directly)."""
    import torch
    from trl import SFTConfig

    cpu = on_cpu(config)
    bf16 = (not cpu) and torch.cuda.is_bf16_supported()
    # TRL's padding-free collator concatenates the packed rows of a batch into ONE sequence. With
    # FlashAttention (varlen) that is free, but CPU attention (sdpa) is dense over the whole
    # sequence, so its cost grows with (rows * max_length)^2 although only the per-example blocks
    # count. On CPU each packed row therefore gets its own forward pass and the rows are
    # accumulated: the same optimizer batch (the loss is normalised over all of it), far less work.
    rows_per_pass = 1 if (config.packing and cpu) else config.batch_size
    accumulate = config.grad_accum * (config.batch_size // rows_per_pass)
    # With N processes each accumulates 1/N of the optimizer batch: same batch, same loss curve.
    processes = config.num_processes if config.launcher == "accelerate" else 1
    if accumulate % processes:
        raise ValueError(
            f"finetune: num_processes {processes} must divide the optimizer batch of {accumulate} passes "
            f"(batch_size {config.batch_size} x grad_accum {config.grad_accum}{' of 1 packed row each' if cpu else ''})"
        )
    accumulate //= processes
    # Inside a launched worker (never in the parent: these make the Trainer join a process group).
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    distributed = {"ddp_backend": "gloo" if cpu else None, "ddp_find_unused_parameters": False} if launched else {}
    return SFTConfig(
        **distributed,
        output_dir=str(output_dir),
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps (transformers 5)
        lr_scheduler_type=config.lr_scheduler,
        weight_decay=config.weight_decay,
        per_device_train_batch_size=rows_per_pass,
        per_device_eval_batch_size=rows_per_pass,
        gradient_accumulation_steps=accumulate,
        max_length=config.max_length,
        packing=config.packing,
        packing_strategy="bfd",
        padding_free=False,  # implied by bfd packing; without packing it would need FlashAttention
        assistant_only_loss=config.assistant_only_loss,
        completion_only_loss=None,  # conversational data: assistant_only_loss decides the mask
        neftune_noise_alpha=config.neftune_noise_alpha,
        use_cpu=cpu,
        bf16=bf16,
        fp16=False,
        gradient_checkpointing=config.gradient_checkpointing and not cpu,
        seed=config.seed,
        data_seed=config.seed,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        eval_strategy="epoch" if has_eval and config.max_steps is None else "no",
        save_strategy="no",  # the final model is saved by us, atomically
        report_to="none",
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        remove_unused_columns=True,
    )


def build_peft_config(config: FinetuneConfig) -> Any:
    """`peft.LoraConfig` for LoRA, None for full fine-tuning."""
    if config.method != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def resolve_base_model(config: FinetuneConfig) -> str:
    if config.base_model:
        return config.base_model
    from datagen.embedded import embedded_model_dir

    return str(embedded_model_dir())


def prepare_tokenizer(
    tokenizer: Any, config: FinetuneConfig, conversations: Sequence[list[dict[str, str]]] = ()
) -> tuple[Any, Any]:
    """Give `tokenizer` the template to train with; returns (stock template, TrainingTemplate or None).

    With assistant-only loss the template needs `{% generation %}` markers (see finetune.template);
    TRL renders the examples with whatever template the tokenizer carries."""
    from finetune.template import load_user_template, resolve_training_template

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    stock = tokenizer.chat_template
    template = None
    if config.assistant_only_loss:
        template = resolve_training_template(tokenizer, config.chat_template, conversations)
        tokenizer.chat_template = template.template
    elif config.chat_template:
        tokenizer.chat_template = load_user_template(config.chat_template)
    return stock, template


def make_trainer(
    model: Any,
    tokenizer: Any,
    train_ex: Sequence[Example],
    eval_ex: Sequence[Example],
    config: FinetuneConfig,
    output_dir: str | Path,
    progress: bool = False,
) -> Any:
    """The `trl.SFTTrainer` for a loaded model and a tokenizer from `prepare_tokenizer`."""
    import datasets
    from transformers.trainer_callback import PrinterCallback, ProgressCallback
    from trl import SFTTrainer

    model.generation_config.pad_token_id = tokenizer.pad_token_id
    sft_args = build_sft_config(config, output_dir, has_eval=bool(eval_ex), progress=progress)
    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # one bar per preprocessing step is noise; ours shows training
    try:
        trainer = SFTTrainer(
            model=model,
            args=sft_args,
            train_dataset=datasets.Dataset.from_list([{"messages": ex["messages"]} for ex in train_ex]),
            eval_dataset=(
                datasets.Dataset.from_list([{"messages": ex["messages"]} for ex in eval_ex]) if eval_ex else None
            ),
            processing_class=tokenizer,
            peft_config=build_peft_config(config),
        )
    finally:
        if bars_were_on:
            datasets.enable_progress_bars()
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    if progress:
        trainer.add_callback(_progress_bar())
    return trainer


# ----------------------------------------------------------------------------- training


def train(
    records: Sequence[Record] | str | Path,
    config: FinetuneConfig | None = None,
    out_dir: str | Path = "model",
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune on `records` (or a data file) and write everything to `out_dir`; returns the metrics.

    `out_dir` appears only when training and saving succeeded: all files are written to a hidden
    sibling folder that is renamed at the end, so a crashed run never looks finished. An existing
    finished result in `out_dir` is replaced; any other non-empty folder there is refused.
    """
    config = config or FinetuneConfig()
    out = Path(out_dir)
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


def _progress_bar() -> Any:
    """One tqdm bar for the optimizer steps with loss, eval loss and tokens/s in the postfix
    (replaces transformers' bar, which prints every log dict and floods the terminal). Built
    lazily so importing this module stays free of transformers."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class ProgressBar(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None
            self.postfix: dict[str, str] = {}

        def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
            self.bar = tqdm(total=state.max_steps, desc="finetune", unit="step", dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
            if self.bar is None or not logs:
                return
            if "loss" in logs:
                self.postfix["loss"] = f"{logs['loss']:.4f}"
            if "eval_loss" in logs:
                self.postfix["eval_loss"] = f"{logs['eval_loss']:.4f}"
            elapsed = self.bar.format_dict.get("elapsed") or 0
            if logs.get("num_tokens") and elapsed:
                self.postfix["tok/s"] = f"{logs['num_tokens'] / elapsed:.0f}"
            self.bar.set_postfix(self.postfix, refresh=False)

        def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ProgressBar()
