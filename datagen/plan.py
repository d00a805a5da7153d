"""What a stage's dry-run planner works with: upper bounds of records, requests and tokens.

Each stage's planner (declared in its registry entry) turns the records flowing in into the
calls it would make and the records it would pass on; `datagen.dryrun` walks a pipeline
through them and prints the table. Nothing here calls a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datagen.llm.budget import Rate
from datagen.llm.ratelimit import estimate_prompt_tokens


@dataclass
class Records:
    """What flows between stages, as upper bounds: how many, and tokens per record."""

    count: int
    instruction_tokens: int
    output_tokens: int
    turns: int = 1  # user turns per record (dialogues); a stage that rewrites every turn needs it


@dataclass
class Calls:
    spec: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, requests: int, prompt_each: int, completion_each: int) -> None:
        self.requests += requests
        self.prompt_tokens += requests * prompt_each
        self.completion_tokens += requests * completion_each


@dataclass
class StagePlan:
    label: str
    records_in: int
    records_out: int
    calls: list[Calls] = field(default_factory=list)
    iterative: bool = False
    out: Records | None = None  # what the next stage receives

    def usd(self, table: dict[str, Rate], batch: bool = False) -> float | None:
        total, priced = 0.0, False
        for call in self.calls:
            rate = table.get(call.spec)
            if rate is not None:
                priced = True
                total += rate.cost(call.prompt_tokens, call.completion_tokens, batch and call.spec.startswith("openai:"))
            elif call.spec.startswith("openai") and call.requests:
                return None  # a paid endpoint without a price: unknown, not free
        return total if priced or not self.calls else 0.0


def finish(stage: StagePlan, out: Records) -> StagePlan:
    stage.out = out
    return stage


def text_tokens(text: str) -> int:
    return estimate_prompt_tokens((("user", text),))


def template_tokens(name: str, prompts_dir: str | None) -> int:
    """Tokens of prompt template `name` (the user's override folder first, as at run time)."""
    from datagen.prompts import bundled_prompt

    for file in ([Path(prompts_dir) / f"{name}.txt"] if prompts_dir else []) + [bundled_prompt(f"{name}.txt")]:
        if file.is_file():
            return text_tokens(file.read_text(encoding="utf-8"))
    return 0


def judge_calls(calls: Calls, count: int, instruction: int, answer: int, max_tokens: int, template: int,
                retry_template: int) -> None:
    """One judge request per pair, plus (upper bound) one retry each for unparseable replies."""
    calls.add(count, template + instruction + answer, max_tokens)
    calls.add(count, retry_template + instruction + answer + max_tokens, max_tokens)


def merge_same_spec(calls: list[Calls]) -> list[Calls]:
    merged: dict[str, Calls] = {}
    for call in calls:
        into = merged.setdefault(call.spec, Calls(call.spec))
        into.requests += call.requests
        into.prompt_tokens += call.prompt_tokens
        into.completion_tokens += call.completion_tokens
    return list(merged.values())
