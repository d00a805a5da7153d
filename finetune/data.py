"""Records -> chat examples for SFT, and a deterministic train/eval split.

The trainer (TRL `SFTTrainer`) takes conversational examples `{"messages": [...]}` and renders
them with the tokenizer's chat template, so the model is trained on exactly the text it will
see at inference time. This module only decides *what* the conversations are:

- single-turn records: optional system prompt, user = instruction + input
  (`Record.prompt_text()`), assistant = output;
- multi-turn records (`Record.messages`): kept as they are, a system prompt is only added
  when the conversation has none;
- contents are stripped of outer whitespace: a leading newline in an answer would merge with
  the "\\n" that ends the assistant header into one token, which the model never sees at
  inference (the generation prompt ends on its own "\\n" token);
- records that cannot teach anything (no assistant turn with text) are skipped and counted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datagen.records import Record

Example = dict[str, Any]  # {"id": str, "messages": [{"role", "content"}, ...]}

# Below this many examples an eval split would starve training; evaluation is skipped instead.
MIN_EXAMPLES_FOR_EVAL = 4


@dataclass
class DataStats:
    """What happened to the input: how many records became examples and why others did not."""

    records: int = 0
    examples: int = 0
    multi_turn: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"records": self.records, "examples": self.examples, "multi_turn": self.multi_turn,
                "skipped": dict(sorted(self.skipped.items()))}


def record_to_example(record: Record, system_prompt: str | None = None) -> Example | None:
    """One record -> one chat example, or None when it has no assistant text to learn from."""
    messages = [
        {"role": m["role"], "content": m["content"].strip()} for m in record.to_messages(system_prompt)
    ]
    # Trailing user/system turns have no answer: they add tokens but no loss.
    while messages and messages[-1]["role"] != "assistant":
        messages.pop()
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        return None
    return {"id": record.id, "messages": messages}


def records_to_examples(
    records: Sequence[Record], system_prompt: str | None = None
) -> tuple[list[Example], DataStats]:
    stats = DataStats(records=len(records))
    examples: list[Example] = []
    for record in records:
        example = record_to_example(record, system_prompt)
        if example is None:
            stats.skip("no_assistant_text")
            continue
        if sum(m["role"] == "assistant" for m in example["messages"]) > 1:
            stats.multi_turn += 1
        examples.append(example)
    stats.examples = len(examples)
    return examples, stats


def load_records(source: str | Path | Sequence[Record]) -> list[Record]:
    """Records from memory, or from any file `datagen.io.read_records` understands."""
    if isinstance(source, (str, Path)):
        from datagen.io import read_records

        return read_records(source)
    return list(source)


def eval_count(n: int, eval_fraction: float) -> int:
    """How many of `n` examples to hold out: round(n * fraction), at least 1 once there is enough
    data (so a small dataset still gets an eval loss), never so many that training gets nothing."""
    if eval_fraction <= 0 or n < MIN_EXAMPLES_FOR_EVAL:
        return 0
    return min(max(1, round(n * eval_fraction)), n - 1)


def split_examples(
    examples: Sequence[Example], eval_fraction: float = 0.05, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """Deterministic train/eval split.

    Examples are ranked by a hash of (seed, id), not by their position, so the split does not
    depend on input order and the same example lands on the same side on every rerun. Both
    halves keep the input order, which keeps runs reproducible."""
    n_eval = eval_count(len(examples), eval_fraction)
    if n_eval == 0:
        return list(examples), []

    def rank(index: int) -> tuple[str, int]:
        key = f"{seed}\x1f{examples[index].get('id', index)}".encode()
        return hashlib.sha256(key).hexdigest(), index

    held_out = set(sorted(range(len(examples)), key=rank)[:n_eval])
    train = [ex for i, ex in enumerate(examples) if i not in held_out]
    evaluation = [ex for i, ex in enumerate(examples) if i in held_out]
    return train, evaluation


def prompt_messages(example: Example) -> list[dict[str, str]]:
    """The conversation up to (not including) its last assistant turn: what to ask a model when
    comparing answers, with the reference answer being that last turn."""
    messages = example["messages"]
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:last]


def reference_answer(example: Example) -> str:
    return next(m["content"] for m in reversed(example["messages"]) if m["role"] == "assistant")


def fit_whole_turns(examples: Sequence[Example], tokenizer: Any, max_length: int) -> tuple[list[Example], int]:
    """Dialogues longer than `max_length` tokens lose whole trailing exchanges until they fit.

    The trainer would otherwise truncate at the token limit, mid-answer: the model would learn
    an answer that stops in the middle of a sentence without its end-of-turn token. Cutting at
    an exchange boundary keeps every trained answer complete. An example whose first exchange
    alone is too long is left to the trainer's truncation (nothing shorter would teach anything).
    Returns the examples and how many were shortened."""
    out: list[Example] = []
    shortened = 0
    for example in examples:
        messages = example["messages"]
        ends = [i + 1 for i, m in enumerate(messages) if m["role"] == "assistant"]
        keep = ends[-1] if ends else len(messages)
        for end in reversed(ends):
            keep = end
            text = tokenizer.apply_chat_template(messages[:end], tokenize=False)
            if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_length:
                break
        if keep < len(messages):
            shortened += 1
            example = {**example, "messages": messages[:keep]}
        out.append(example)
    return out, shortened
