"""The SFT stage's settings, with the defaults the field expects: LoRA lr 2e-4 / full 2e-5,
3 epochs, warmup 3 %, cosine schedule, assistant-only loss, bfd packing, NEFTune off.
One validated model, shared by `datagen finetune`, the pipeline's `finetune:` section and
the launcher for multi-process training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_LR = {"lora": 2e-4, "full": 2e-5}
# DPO moves a model much less far than SFT: the usual recipes (Zephyr, TRL's examples) use
# 5e-7 full and ~5e-6..5e-5 with LoRA.
DEFAULT_DPO_LR = {"lora": 5e-5, "full": 5e-7}
DPO_LOSSES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")
# torchrun's own default: every machine must name the same port, so a free port picked on one
# machine is no use across machines (on one machine it is: nothing else needs to know it).
MULTI_MACHINE_PORT = 29500
SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup", "cosine_with_min_lr", "inverse_sqrt")


class FinetuneConfig(BaseModel):
    """Everything `datagen finetune` and the pipeline's finetune stage can set."""

    model_config = ConfigDict(extra="forbid")

    base_model: str | None = Field(
        None, description="HF model id or local folder; default: the embedded SmolLM2-135M-Instruct"
    )
    method: Literal["lora", "full"] = Field(
        "lora", description="LoRA adapter or full fine-tuning ('dpo' is short for objective: dpo with LoRA)"
    )
    objective: Literal["sft", "dpo"] = Field(
        "sft", description="sft: learn the answers; dpo: prefer chosen over rejected answers (TRL DPOTrainer; "
        "needs preference pairs). The reference model is the start model: the base, or the SFT step's output"
    )
    beta: float = Field(0.1, gt=0, description="dpo: strength of the pull towards the reference model")
    loss_type: str | list[str] = Field("sigmoid", description=f"dpo: TRL loss type(s): {', '.join(DPO_LOSSES)}")
    precompute_ref_log_probs: bool = Field(
        False, description="dpo: compute the reference log-probs once before training (saves a forward pass per "
        "step when training several epochs; with LoRA the reference is the model with its adapter off)"
    )
    step_dir: str | None = Field(
        None, description="pipeline: this step's folder in the run dir (default model/ for the first step, "
        "model_<objective>/ for a later one)"
    )
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
    # Speed knobs for GPUs (bench/gpu.py measures them). Default None = unset: left out of the
    # config's dump, so adding them changed no finished run's hash (pipeline.finetune_step).
    attn_implementation: Literal["sdpa", "flex_attention", "flash_attention_2", "flash_attention_3", "eager"] | None = (
        Field(None, exclude_if=lambda v: v is None,
              description="attention kernel the model is loaded with (default: transformers' choice, sdpa). With "
              "packing, flash_attention_2/3 (need the flash-attn package) and flex_attention skip the blocks "
              "between examples; sdpa computes them masked")
    )
    rows_per_pass: int | None = Field(
        None, ge=1, exclude_if=lambda v: v is None,
        description="packed rows per forward pass, the rest of batch_size accumulated (same optimizer batch and "
        "loss). Default: 1 on CPU; on a GPU all batch_size rows, which TRL concatenates into one sequence",
    )
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
    num_processes: int = Field(
        1, ge=1, description="training processes in all, over all machines (GPUs, or CPU processes over gloo); "
        "each machine runs num_processes / num_machines of them"
    )
    num_machines: int = Field(
        1, ge=1, description="machines taking part; run the same command on each, only machine_rank differs"
    )
    machine_rank: int = Field(0, ge=0, description="this machine's rank: 0 at main_process_ip (it writes the output), "
                              "1 .. num_machines-1 on the others")
    main_process_ip: str | None = Field(
        None, description="address of machine 0 that every machine can reach (needed when num_machines > 1)"
    )
    main_process_port: int | None = Field(
        None, ge=1, le=65535, description=f"rendezvous port on machine 0 (default: a free one on one machine, "
        f"{MULTI_MACHINE_PORT} across machines)"
    )
    distributed: Literal["auto", "ddp", "fsdp"] = Field(
        "auto", description="auto: DDP for LoRA (small trainable part, replicated), FSDP for full fine-tuning "
        "(sharded weights, gradients and optimizer state)"
    )

    @model_validator(mode="before")
    @classmethod
    def _dpo_method(cls, data: object) -> object:
        """`method: dpo` is what users write first: DPO with a LoRA adapter."""
        if isinstance(data, dict) and data.get("method") == "dpo":
            if data.get("objective", "dpo") != "dpo":
                raise ValueError("method 'dpo' conflicts with objective " + repr(data["objective"]))
            return {**data, "method": "lora", "objective": "dpo"}
        return data

    @field_validator("loss_type")
    @classmethod
    def _loss_types(cls, value: str | list[str]) -> str | list[str]:
        unknown = [t for t in ([value] if isinstance(value, str) else value) if t not in DPO_LOSSES]
        if unknown or not value:
            raise ValueError(f"unknown DPO loss_type {unknown[0] if unknown else value!r}; "
                             f"choose from {', '.join(DPO_LOSSES)}")
        return value

    @field_validator("lora_target_modules")
    @classmethod
    def _targets(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("lora_target_modules is empty")
        if isinstance(value, list) and any(name in {"lm_head"} for name in value):
            raise ValueError("an adapter on lm_head is never trained by TRL's fused LM head loss; remove it")
        return value

    @model_validator(mode="after")
    def _launch_plan(self) -> FinetuneConfig:
        """Refuse a launch plan accelerate would reject with a traceback, or hang on, or ignore."""
        if (self.num_processes > 1 or self.num_machines > 1) and self.launcher != "accelerate":
            raise ValueError(f"num_processes {self.num_processes} / num_machines {self.num_machines} need "
                             "launcher: accelerate (--launcher accelerate)")
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError(f"num_machines {self.num_machines} needs main_process_ip: the address of machine 0 "
                             "that every machine can reach (--main-process-ip)")
        if self.machine_rank >= self.num_machines:
            raise ValueError(f"machine_rank {self.machine_rank} must be below num_machines {self.num_machines} "
                             f"(machines are numbered 0 to {self.num_machines - 1})")
        if self.objective == "dpo" and self.launcher != "none":
            raise ValueError("objective dpo trains in one process (launcher: none)")
        if self.rows_per_pass is not None and self.batch_size % self.rows_per_pass:
            raise ValueError(f"rows_per_pass {self.rows_per_pass} must divide batch_size {self.batch_size}")
        if self.num_processes % self.num_machines:
            raise ValueError(f"num_processes {self.num_processes} is the total over all machines and must split "
                             f"evenly over num_machines {self.num_machines}")
        return self

    @property
    def learning_rate(self) -> float:
        if self.lr is not None:
            return self.lr
        return (DEFAULT_DPO_LR if self.objective == "dpo" else DEFAULT_LR)[self.method]
