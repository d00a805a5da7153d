"""Evol-Instruct's options (the one place their defaults live) and its operation names."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

IN_DEPTH_OPS = ("add_constraints", "deepen", "concretize", "reasoning_steps", "complicate_input")
OPS = (*IN_DEPTH_OPS, "breadth")

DEFAULT_LEAK_WORDS = [
    "#Given Prompt#",
    "#Rewritten Prompt#",
    "#Created Prompt#",
    "given prompt",
    "rewritten prompt",
    "created prompt",
    # The labels our own prompts use: a rewrite that mentions them talks about the template.
    "original instruction",
    "rewritten instruction",
    "created instruction",
    "given instruction",
]

DEFAULT_REFUSAL_PHRASES = [
    "sorry",
    "apologize",
    "apologise",
    "apologies",
    "i cannot",
    "i can't",
    "i can not",
    "i am unable",
    "i'm unable",
    "i am not able",
    "i'm not able",
    "as an ai",
    "as a language model",
]

class EvolConfig(BaseModel):
    """Evol-Instruct settings. Defaults follow WizardLM: 4 rounds, all operations equally likely."""

    model_config = ConfigDict(extra="forbid")

    rounds: int = Field(4, ge=0, description="evolution rounds; each instruction gets one attempt per round")
    ops: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(OPS, 1.0),
        description=(
            "operation -> relative weight of being drawn; ops left out are never used. In-depth: "
            + ", ".join(IN_DEPTH_OPS)
            + "; in-breadth: breadth. Prompt of op X: prompts/evol_X.txt"
        ),
    )
    temperature: float = Field(0.7, ge=0, description="sampling temperature of the rewrite")
    max_tokens: int = Field(
        512, ge=1, description="token limit of a rewrite (a truncated rewrite is dropped)"
    )
    answer: bool = Field(
        True,
        description="answer each rewrite (kept as output); needed by the refusal and degenerate-response rules",
    )
    answer_temperature: float = Field(0.7, ge=0, description="sampling temperature of the answer")
    answer_max_tokens: int = Field(512, ge=1, description="token limit of the answer")
    equality_check: bool = Field(
        True, description="ask the LLM whether a rewrite adds information over its parent"
    )
    equality_max_tokens: int = Field(16, ge=1, description="token limit of the equality check reply")
    keep_all_rounds: bool = Field(
        True,
        description="emit every successful evolution of every round; false: only each chain's last one",
    )
    keep_originals: bool = Field(
        True, description="also emit the input records unchanged (WizardLM mixes them in)"
    )
    leak_words: list[str] = Field(
        default_factory=lambda: list(DEFAULT_LEAK_WORDS),
        description="a rewrite containing any of these (case-insensitive) is dropped as template_leak",
    )
    refusal_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES),
        description="an answer containing one of these and shorter than refusal_max_words is a refusal",
    )
    refusal_max_words: int = Field(
        80, ge=0, description="answers with at least this many words are never refusals"
    )
    turns: Literal["first", "each", "keep"] = Field(
        "first", exclude_if=lambda v: v == "first",  # at its default: the config (and its hash) as before
        description="multi-turn records: 'first' evolves the first user turn into a single-turn task, 'each' "
        "evolves every user turn and re-answers every assistant turn (needs answer), 'keep' passes them "
        "through unevolved",
    )
    llm: str | None = Field(None, description="backend spec for this stage (default: the pipeline's)")

    @model_validator(mode="after")
    def _each_needs_answers(self) -> EvolConfig:
        if self.turns == "each" and not self.answer:
            raise ValueError("turns: each needs answer: true (every assistant turn answered a question that "
                             "was rewritten, so the stage answers each again)")
        return self

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, ops: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(ops) - set(OPS))
        if unknown:
            raise ValueError(f"unknown evolution op(s) {unknown}: choose from {list(OPS)}")
        if any(w < 0 for w in ops.values()):
            raise ValueError("op weights must be >= 0")
        if not any(w > 0 for w in ops.values()):
            raise ValueError("at least one op needs a positive weight")
        return ops
