"""From our config to TRL's and PEFT's: the `SFTConfig`, the LoRA config, the tokenizer with the
training chat template, and the `SFTTrainer` itself. Kept apart from the training loop in
`train.py` so benches and tests can build exactly the trainer a run uses.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune.config import FinetuneConfig
from finetune.data import Example, fit_whole_turns


def on_cpu(config: FinetuneConfig) -> bool:
    import torch

    return config.cpu or not torch.cuda.is_available()


def build_sft_config(config: FinetuneConfig, output_dir: str | Path, has_eval: bool, progress: bool = True) -> Any:
    """The `trl.SFTConfig` for `config` (pure: no model, no data; tested directly)."""
    from trl import SFTConfig

    cpu = on_cpu(config)
    # TRL's padding-free collator concatenates the packed rows of a batch into ONE sequence. With
    # FlashAttention (varlen) that is free, but CPU attention (sdpa) is dense over the whole
    # sequence, so its cost grows with (rows * max_length)^2 although only the per-example blocks
    # count. On CPU each packed row therefore gets its own forward pass and the rows are
    # accumulated: the same optimizer batch (the loss is normalised over all of it), far less work.
    # `rows_per_pass` lets a GPU run choose the same (e.g. with sdpa, whose masked attention over
    # the concatenated rows grows with their square; flash/flex attention skip the masked blocks).
    rows_per_pass = 1 if (config.packing and cpu) else config.batch_size
    if config.packing and config.rows_per_pass is not None:
        rows_per_pass = config.rows_per_pass
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
        **shared_training_args(config, output_dir, progress),
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
        eval_strategy="epoch" if has_eval and config.max_steps is None else "no",
        remove_unused_columns=True,
    )


def shared_training_args(config: FinetuneConfig, output_dir: str | Path, progress: bool) -> dict[str, Any]:
    """The `transformers` training arguments SFT and DPO share, so both steps of a run train with
    the same schedule, precision and seeds, and the model is always saved by us, atomically."""
    import torch

    cpu = on_cpu(config)
    return {
        "output_dir": str(output_dir),
        "learning_rate": config.learning_rate,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps if config.max_steps is not None else -1,
        "warmup_steps": config.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps (transformers 5)
        "lr_scheduler_type": config.lr_scheduler,
        "weight_decay": config.weight_decay,
        "use_cpu": cpu,
        "bf16": (not cpu) and torch.cuda.is_bf16_supported(),
        "fp16": False,
        "gradient_checkpointing": config.gradient_checkpointing and not cpu,
        # transformers' default since torch 2.8; spelled out so an older stack cannot fall back
        # to the per-parameter loop (one kernel launch per tensor per step).
        "optim": "adamw_torch_fused",
        "seed": config.seed,
        "data_seed": config.seed,
        "logging_steps": config.logging_steps,
        "logging_first_step": True,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": not progress,
        "dataloader_num_workers": 0,
    }


def model_load_kwargs(config: FinetuneConfig) -> dict[str, Any]:
    """Keyword arguments for loading (or building) the model to train: float32 master weights
    (the Trainer computes in bf16 autocast on GPUs) and the attention kernel when one is set."""
    import torch

    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if config.attn_implementation is not None:
        kwargs["attn_implementation"] = config.attn_implementation
    return kwargs


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
    # Dialogues too long for a row are cut at an exchange boundary, never mid-answer.
    train_ex, _ = fit_whole_turns(train_ex, tokenizer, config.max_length)
    eval_ex, _ = fit_whole_turns(eval_ex, tokenizer, config.max_length)
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
