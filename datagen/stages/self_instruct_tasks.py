"""The data of a Self-Instruct run: a task with its instances, a candidate on its way through
the filters, and how both turn into prompts and output records. The algorithm that moves
them (rounds, filters, novelty, classification, instances) is `self_instruct.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from datagen.records import Record, RecordMeta, stable_id
from datagen.stages.self_instruct_filters import guess_is_classification
from datagen.stages.self_instruct_replies import Instance


@dataclass
class Task:
    instruction: str
    instances: list[Instance]
    is_classification: bool


@dataclass
class Candidate:
    instruction: str
    round: int
    request: int
    item: int
    is_classification: bool = False
    classified: bool = False
    classification_guessed: bool = False
    instances: list[Instance] = field(default_factory=list)
    persona: str | None = None  # the persona its generation prompt asked for, when personas are on


def seed_task(record: Record) -> Task:
    raw = record.meta.instances
    instances = []
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict) and str(item.get("output", "")).strip():
                instances.append(Instance(str(item.get("input") or ""), str(item["output"])))
    if not instances and record.output.strip():
        instances = [Instance(record.input, record.output)]
    is_cls = record.meta.is_classification
    if is_cls is None:
        is_cls = guess_is_classification(record.instruction)
    return Task(record.instruction.strip(), instances, bool(is_cls))


def pick_examples(tasks: list[Task], k: int, rng: Any, classification: bool | None) -> list[Task]:
    """k seed tasks with instances (short ones preferred, to keep prompts small), fixed per run."""
    pool = [
        t for t in tasks if t.instances and (classification is None or t.is_classification == classification)
    ]
    short = [t for t in pool if max(len(i.input) + len(i.output) for i in t.instances) <= 600] or pool
    return rng.sample(short, min(k, len(short)))


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def as_prompt_task(task: Task) -> dict[str, Any]:
    return {
        "instruction": task.instruction,
        "is_classification": task.is_classification,
        "instances": [{"input": i.input, "output": i.output} for i in task.instances],
    }


def classify_examples(seeds: list[Task], k: int, rng: Any) -> list[dict[str, Any]]:
    """Balanced labelled examples (half yes, half no), interleaved so the order gives no hint."""
    yes = [t for t in seeds if t.is_classification]
    no = [t for t in seeds if not t.is_classification]
    n_yes = min(len(yes), math.ceil(k / 2))
    chosen = rng.sample(yes, n_yes) + rng.sample(no, min(len(no), k - n_yes))
    rng.shuffle(chosen)
    return [as_prompt_task(t) for t in chosen]


def task_records(cand: Candidate, model: str) -> list[Record]:
    task_id = stable_id(cand.instruction, prefix="task")
    return [
        Record(
            id=stable_id(cand.instruction, inst.input, inst.output, prefix="si"),
            instruction=cand.instruction,
            input=inst.input,
            output=inst.output,
            meta=RecordMeta(
                source="self_instruct",
                round=cand.round,
                model=model,
                is_classification=cand.is_classification,
                task_id=task_id,
                instance_index=j,
                classification_guessed=cand.classification_guessed,
                persona=cand.persona,
            ),
        )
        for j, inst in enumerate(cand.instances)
    ]
