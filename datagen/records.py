"""The data that flows between stages.

Every stage consumes and produces `Record`s, so stages compose in any order. Pydantic
validates at the edges (files, configs); inside a run the same objects are passed around.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer


class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: str = ""
    output: str


class SeedTask(BaseModel):
    """One task in the Self-Instruct `seed_tasks.jsonl` format."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    instruction: str
    instances: list[Instance] = Field(min_length=1)
    is_classification: bool

    @field_validator("instruction")
    @classmethod
    def _instruction_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("instruction is empty")
        return value


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str

    @field_validator("role")
    @classmethod
    def _known_role(cls, value: str) -> str:
        if value not in {"system", "user", "assistant"}:
            raise ValueError(f"unknown role {value!r} (expected system, user or assistant)")
        return value


class RecordMeta(BaseModel):
    """The contract between stages: every key a stage writes for a later one is declared here.

    A stage that reads a key reads a declared field, so a writer and a reader can never drift
    apart silently (a misspelt key once disabled the truncation filter). Extra keys are still
    allowed, for what users' own files carry (`extra`) and for forward compatibility, but no
    stage of ours reads an undeclared key (tests/test_meta_contract.py checks it)."""

    model_config = ConfigDict(extra="allow")

    # lineage
    source: str = Field("unknown", description="which stage or file made the record")
    parent_id: str | None = Field(None, description="the record this one was evolved from")
    root_id: str | None = Field(None, description="the first ancestor of an evolution chain")
    evol_op: str | None = Field(None, description="the Evol-Instruct operation that made it")
    evol_depth: int = Field(0, description="how many evolutions separate it from its root")
    round: int = Field(0, description="Self-Instruct / Evol-Instruct round that made it")
    model: str | None = Field(None, description="backend spec that wrote the answer")
    system_prompt: str | None = Field(None, description="magpie: the system prompt the query was written under")
    is_classification: bool | None = None
    classification_guessed: bool | None = Field(None, description="self_instruct: the model never said yes/no")
    task_id: str | None = Field(None, description="self_instruct: the task a record is an instance of")
    instance_index: int | None = Field(None, description="self_instruct: which instance of its task")
    request: int | None = Field(None, description="self_instruct: the generation request a drop came from")
    # what a file brought along
    name: str | None = Field(None, description="a seed task's name (Self-Instruct format)")
    instances: list[dict[str, Any]] | None = Field(None, description="a task's examples: [{input, output}]")
    extra: dict[str, Any] | None = Field(None, description="keys of the input row no reader understood, kept")
    # answers and their scores
    answer_finish_reason: str | None = Field(None, description="finish reason of the kept answer ('length' = cut off)")
    scores: dict[str, float] = Field(default_factory=dict, description="judge / reward / quality scores by name")
    candidates: list[dict[str, Any]] | None = Field(None, description="distill: every candidate with score")
    best_candidate: int | None = Field(None, description="distill: index of the kept candidate")
    previous_output: str | None = Field(None, description="distill: the answer the record came with")
    unscored: bool | None = Field(None, description="distill: kept without a judge score (on_unscored=keep)")
    ranked_by: str | None = Field(None, description="distill: the judge backend or reward model that scored the candidates")
    # preference pairs (the preference stage; `output` is the chosen answer)
    chosen: str | None = Field(None, description="preference: the preferred answer")
    rejected: str | None = Field(None, description="preference: the dispreferred answer")
    chosen_score: float | None = Field(None, description="preference: the chosen answer's score (ranked_by's scale)")
    rejected_score: float | None = Field(None, description="preference: the rejected answer's score")
    preference_reason: str | None = Field(None, description="preference: the judge's rationale for the pair")
    quality_judge_reason: str | None = Field(None, description="quality: the judge's one-line reason")
    # dialogues and personas. Keys added after 0.1.0 are left out of a record's JSON while unset
    # (`exclude_if`), so records that never met them serialise, hash and resume exactly as before.
    persona: str | None = Field(
        None, exclude_if=lambda v: v is None, description="the persona a synthesis prompt was conditioned on"
    )
    conversation_stop: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="conversation: why the dialogue ended (turns, user_ended, length_cap, truncated:REASON)",
    )
    # drops
    drop_reason: str | None = None
    drop_detail: dict[str, Any] | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_new_keys(self, handler: Any) -> dict[str, Any]:
        """Keys added after 0.1.0 are written only when set: a record that does not use them
        serializes byte for byte as before, so earlier run directories keep their stage hashes
        (tests/test_legacy_resume.py)."""
        data = handler(self)
        for key in OMIT_WHEN_NONE:
            if data.get(key, 0) is None:
                del data[key]
        return data


OMIT_WHEN_NONE = ("system_prompt",)


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    instruction: str
    input: str = ""
    output: str = ""
    messages: list[Message] | None = None
    meta: RecordMeta = Field(default_factory=RecordMeta)

    def prompt_text(self) -> str:
        """The user turn: instruction plus input, as a model sees it."""
        if self.input.strip():
            return f"{self.instruction.strip()}\n\n{self.input.strip()}"
        return self.instruction.strip()

    def to_messages(self, system_prompt: str | None = None) -> list[dict[str, str]]:
        """Chat form; multi-turn records keep their own messages."""
        if self.messages:
            msgs = [m.model_dump() for m in self.messages]
            if system_prompt and msgs[0]["role"] != "system":
                msgs.insert(0, {"role": "system", "content": system_prompt})
            return msgs
        msgs = [{"role": "system", "content": system_prompt}] if system_prompt else []
        msgs.append({"role": "user", "content": self.prompt_text()})
        if self.output:
            msgs.append({"role": "assistant", "content": self.output})
        return msgs


def stable_id(*parts: str, prefix: str = "r") -> str:
    """Content-derived id: the same text gives the same id in every run (needed for resume)."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]
    return f"{prefix}_{digest}"


def dropped(record: Record, reason: str, **detail: Any) -> Record:
    """A copy of `record` marked with a machine-readable drop reason."""
    copy = record.model_copy(deep=True)
    copy.meta.drop_reason = reason
    copy.meta.drop_detail = detail or None
    return copy


@dataclass
class StageResult:
    kept: list[Record]
    dropped: list[Record]
    stats: dict[str, Any] = field(default_factory=dict)

    def drop_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for rec in self.dropped:
            reason = rec.meta.drop_reason or "unspecified"
            counts[reason] = counts.get(reason, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
