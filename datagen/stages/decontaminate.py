"""Decontamination: drop training records that overlap a held-out (evaluation) set.

A generated dataset can contain the very questions a model will be judged on: the teacher
saw them on the web, or seeds and benchmarks share sources. Two checks, as the GPT-3 and
Llama reports do (simplified):

- n-gram overlap: a record whose instruction (+ input) or answer shares any word n-gram
  (default 13 words, case and punctuation ignored) with a held-out prompt or reference;
- embedding similarity: a record whose instruction (+ input) has cosine similarity at or
  above `threshold` with a held-out prompt, which catches paraphrases and short questions
  that no 13-gram can.

Each dropped record names the held-out item it matched and both texts, so the report can
show them side by side. The stage records each held-out file's fingerprint in its stats
(and so in the run manifest): `datagen eval` checks it to warn when it is judging on a set
the training data was never screened against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from datagen.context import StageContext
from datagen.records import Record, StageResult, dropped
from datagen.registry import NO_LLM_CALLS, Command, Stage, register
from datagen.text_units import word_units


class DecontaminateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    held_out: list[str] = Field(
        ..., min_length=1, description="held-out sets (any supported format) the training data must not overlap"
    )
    ngram: int = Field(13, ge=1, description="n-gram size in words (a CJK character counts as one); one shared n-gram is a match")
    check_answers: bool = Field(True, description="also compare record answers with held-out prompts and references")
    semantic: bool = Field(True, description="also drop records whose instruction is similar to a held-out prompt")
    threshold: float = Field(
        0.8, ge=0.0, le=1.0, description="cosine similarity of instruction embeddings at or above which it is a match"
    )
    model: str | None = Field(None, description="embedding model (None = the project's default embedder)")
    batch_size: int = Field(64, ge=1, description="embedding batch size")


@dataclass
class HeldOutItem:
    set_path: str
    id: str
    prompt: str
    reference: str


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """Word n-grams of `text`, casefolded, punctuation dropped (so formatting never hides a copy).
    A CJK character is a word of its own: Chinese has no spaces, and a whole paragraph taken as
    one "word" would never share an n-gram with its own copy once one comma differs."""
    words = word_units(text)
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def held_out_fingerprint(path: str | Path) -> str:
    """sha256 of a held-out file's bytes (of every file, in name order, for a folder).

    The decontaminate stage records this for each set it screened against; eval compares."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()



def load_held_out(paths: Sequence[str]) -> tuple[list[HeldOutItem], list[dict[str, Any]]]:
    """Items of every held-out set, and per set its path, fingerprint and size (for the manifest)."""
    from datagen.io import read_records
    from datagen.resources import shipped_path

    items: list[HeldOutItem] = []
    sets = []
    for path in paths:
        # A bundled pipeline's set (`pipelines/data/heldout.jsonl`) is found from any folder.
        file = Path(path) if Path(path).exists() else shipped_path(path)
        if file is None:
            raise FileNotFoundError(f"decontaminate: held_out: {path}: no such file")
        records = read_records(file)
        items += [HeldOutItem(str(path), r.id, r.prompt_text(), r.output.strip()) for r in records]
        sets.append({"path": str(path), "sha256": held_out_fingerprint(file), "items": len(records)})
    return items, sets


def user_turns(record: Record) -> list[tuple[str, str]]:
    """(field name, text) of every user turn: the instruction (with input), then a dialogue's
    later user messages as `user_turn_2`, `user_turn_3`, ... (a benchmark question asked as a
    follow-up leaks just the same)."""
    out = [("instruction", record.prompt_text())]
    later = [m.content for m in record.messages or [] if m.role == "user"][1:]
    return out + [(f"user_turn_{k}", text) for k, text in enumerate(later, start=2)]


def answer_turns(record: Record) -> list[tuple[str, str]]:
    """(field name, text) of every assistant turn: `output`, then `assistant_turn_2`, ..."""
    later = [m.content for m in record.messages or [] if m.role == "assistant"][1:]
    return [("output", record.output)] + [(f"assistant_turn_{k}", text) for k, text in enumerate(later, start=2)]


def run(records: list[Record], ctx: StageContext, config: DecontaminateConfig) -> StageResult:
    """Drop records that share an n-gram with, or are a paraphrase of, a held-out item."""
    items, sets = load_held_out(config.held_out)
    matches: dict[int, dict[str, Any]] = {}

    index: dict[tuple[str, ...], int] = {}  # n-gram -> first held-out item holding it
    for k, item in enumerate(items):
        for text in (item.prompt, item.reference):
            for gram in ngrams(text, config.ngram):
                index.setdefault(gram, k)
    for i, rec in enumerate(records):
        fields = user_turns(rec) + (answer_turns(rec) if config.check_answers else [])
        for field_name, text in fields:
            hit = next((g for g in ngrams(text, config.ngram) if g in index), None)
            if hit is not None:
                matches[i] = _detail(items[index[hit]], "ngram", field_name, text, ngram=" ".join(hit))
                break
    n_ngram = len(matches)

    if config.semantic and items and records:
        from datagen.embed import embed_texts

        # Every user turn of every record not matched yet (a dialogue's later turns too).
        todo = [(i, name, text) for i in range(len(records)) if i not in matches
                for name, text in user_turns(records[i])]
        if todo:
            mine = embed_texts([text for _, _, text in todo], model=config.model,
                               batch_size=config.batch_size, progress=ctx.progress)
            theirs = embed_texts([item.prompt for item in items], model=config.model,
                                 batch_size=config.batch_size, progress=ctx.progress)
            best, where = nearest(mine, theirs)
            for pos, (i, name, text) in enumerate(todo):
                if i not in matches and best[pos] >= config.threshold - 1e-6:
                    item = items[int(where[pos])]
                    matches[i] = _detail(item, "embedding", name, text, similarity=round(float(best[pos]), 4))

    kept, gone = [], []
    for i, rec in enumerate(records):
        if i in matches:
            gone.append(dropped(rec, "contaminated", **matches[i]))
        else:
            kept.append(rec.model_copy(deep=True))
    stats = {
        "input": len(records),
        "held_out_sets": sets,
        "held_out_items": len(items),
        "ngram": config.ngram,
        "ngram_matches": n_ngram,
        "embedding_matches": len(matches) - n_ngram,
        "threshold": config.threshold if config.semantic else None,
        "kept": len(kept),
    }
    return StageResult(kept=kept, dropped=gone, stats=stats)


def nearest(queries: np.ndarray, keys: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """For each (unit-length) query row: highest cosine with any key row, and that key's index."""
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    where = np.zeros(len(queries), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ keys.T
        where[start : start + chunk] = sims.argmax(axis=1)
        best[start : start + chunk] = sims.max(axis=1)
    return best, where


def _detail(item: HeldOutItem, method: str, field_name: str, text: str, **extra: Any) -> dict[str, Any]:
    return {
        "method": method,
        "field": field_name,
        "text": text[:500],
        "held_out_set": item.set_path,
        "held_out_id": item.id,
        "held_out_prompt": item.prompt[:500],
        "held_out_reference": item.reference[:500],
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# CLI


STAGE = register(Stage(
    name="decontaminate",
    config=DecontaminateConfig,
    run=run,
    plan=NO_LLM_CALLS,
    position=60,
    help="drop records that overlap held-out evaluation sets (n-grams, embeddings)",
    command=Command(
        verb="decontaminate",
        description=(
            "Drop records whose instruction or answer shares a word n-gram (--ngram) with a held-out prompt or\n"
            "reference, or whose instruction is an embedding paraphrase of a held-out prompt (--threshold).\n"
            "Each dropped record names the held-out item it matched.\n"
            "Example: datagen decontaminate --input train.jsonl --held-out heldout.jsonl --out clean.jsonl"
        ),
        flag_aliases={"held_out": ["--held-out-sets"]},
        value_parsers={"held_out": lambda text: [part for part in text.split(",") if part]},
    ),
))
