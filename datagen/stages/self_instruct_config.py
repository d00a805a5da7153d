"""The Self-Instruct stage's options: the one place their defaults live (the filters, the task
pool and the stage read them; the CLI and YAML are generated from them)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEFAULT_BLACKLIST = [
    "image", "graph", "picture", "file", "map", "draw", "plot", "go to",
    "video", "audio", "music", "flowchart", "diagram",
]  # fmt: skip


class SelfInstructConfig(BaseModel):
    """Settings of the Self-Instruct stage (defaults follow the paper where it gives one)."""

    model_config = ConfigDict(extra="forbid")

    num_instructions: int = Field(
        100, ge=1, description="stop once this many new tasks are kept (each with instances)"
    )
    num_prompt_tasks: int = Field(8, ge=1, description="example tasks shown in each generation prompt")
    num_human: int = Field(6, ge=0, description="of which human seed tasks")
    num_machine: int = Field(
        2,
        ge=0,
        description="of which earlier machine tasks (seeds fill in while the machine pool is smaller)",
    )
    new_per_request: int = Field(8, ge=1, description="new tasks asked for in each generation prompt")
    request_batch_size: int = Field(8, ge=1, description="generation prompts sent together per round")
    adaptive_batch: bool = Field(
        True,
        description="after the first round, send only about as many prompts as the remaining quota needs "
        "at the yield seen so far (up to request_batch_size)",
    )
    temperature: float = Field(0.8, ge=0, description="sampling temperature for generating tasks")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling for generating tasks")
    max_tokens: int = Field(768, ge=16, description="token budget of one task-list reply")
    instance_temperature: float = Field(0.7, ge=0, description="sampling temperature for instances")
    instance_max_tokens: int = Field(768, ge=16, description="token budget of one instances reply")
    classify_max_tokens: int = Field(16, ge=1, description="token budget of the yes/no classification reply")
    classify_examples: int = Field(
        8, ge=0, description="seed tasks shown as labelled examples in the yes/no prompt"
    )
    instance_examples: int = Field(
        2, ge=0, description="seed tasks (with instances) shown in each instance prompt"
    )
    novelty_threshold: float = Field(
        0.7, ge=0, le=1, description="drop a task whose ROUGE-L F1 with any pool task is > this"
    )
    novelty_cjk_tokens: bool = Field(
        True,
        description="also count each CJK character as a ROUGE token (rouge_score ignores non-ASCII text, so "
        "without it Chinese tasks never count as near-duplicates); English tasks score exactly as rouge_score",
    )
    min_words: int = Field(
        3, ge=0, description="drop tasks with <= this many words (a CJK run counts ceil(chars/2))"
    )
    max_words: int = Field(150, ge=1, description="drop tasks with more than this many words")
    blacklist: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLACKLIST),
        description="drop tasks containing one of these words (whole word, any case, plural s/es too)",
    )
    drop_write_a_program: bool = Field(True, description='drop tasks starting with "Write a program"')
    require_ascii_start: bool = Field(
        False,
        description="drop tasks whose first character is not ASCII (off: it would drop all Chinese tasks)",
    )
    max_instances: int = Field(5, ge=1, description="instances kept per task")
    accept_unlabelled_reply: bool = Field(
        True,
        description="for a non-classification task, take an instances reply with no Input/Output fields at "
        "all (a direct answer) as one instance with empty input; small models rarely follow the layout",
    )
    include_seeds: bool = Field(False, description="also emit the seed records among the kept ones")
    max_requests: int | None = Field(
        None,
        ge=1,
        description="cap on generation requests (None: 10 + 2 * num_instructions); stops a low-yield run",
    )
    personas: str | None = Field(
        None, exclude_if=lambda v: v is None,  # off: the config (and its resume hash) as before personas
        description="condition each generation prompt on a persona: 'bundled' (our set) or a .txt/.jsonl file; "
        "off by default (prompts and cache keys unchanged)",
    )
    llm: str | None = Field(None, description="backend spec for this stage (None: the run's default)")

    @model_validator(mode="after")
    def _check_mix(self) -> SelfInstructConfig:
        if self.num_human + self.num_machine != self.num_prompt_tasks:
            raise ValueError(
                f"num_human ({self.num_human}) + num_machine ({self.num_machine}) must equal "
                f"num_prompt_tasks ({self.num_prompt_tasks})"
            )
        if self.min_words >= self.max_words:
            raise ValueError("min_words must be smaller than max_words")
        return self

    def request_cap(self) -> int:
        return self.max_requests or 10 + 2 * self.num_instructions
