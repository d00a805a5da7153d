"""Dedup: exact duplicates on normalised text, then near duplicates by embedding similarity.

Exact: Unicode form, case, spacing, curly quotes and sentence punctuation are ignored, but not
the marks that make numbers and words differ ("3.5" vs "35", "-5" vs "5", "C#" vs "C").
Near: the records' texts are embedded (`embed.py`: a static model2vec embedder distilled from
the bundled MiniLM by default) and `datagen.near_dup` keeps, of each group of near duplicates,
the record ranked first by priority (judge score, then answer length, then input order); each
dropped record names the kept one and the similarity.
"""

from __future__ import annotations

import math
import time
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from datagen.context import StageContext
from datagen.near_dup import (
    semantic_dedup,
)
from datagen.records import Record, StageResult, dropped
from datagen.registry import NO_LLM_CALLS, Command, Stage, register


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="cosine similarity at or above which two records are near duplicates"
    )
    embed_field: str = Field(
        "instruction_input",
        pattern="^(instruction|instruction_input|all)$",
        description="text compared: instruction, instruction_input (instruction + input) "
        "or all (also the answer)",
    )
    embedder: str = Field(
        "static",
        description="static (model2vec distilled once from the bundled MiniLM: thousands of texts/s on a "
        "CPU), minilm (the bundled all-MiniLM-L6-v2 transformer), or a sentence-transformers / model2vec "
        "folder or hub id",
    )
    batch_size: int = Field(64, ge=1, description="embedding batch size (transformer embedders)")
    exact: bool = Field(
        True,
        description="drop exact duplicates (case, spacing, Unicode form and sentence punctuation around "
        "words ignored; digits, signs and decimal points kept)",
    )
    semantic: bool = Field(True, description="drop near duplicates by embedding similarity")
    ivf_threshold: int = Field(
        50_000,
        ge=2,
        description="above this many records compare within k-means cells (approximate) instead of exact search",
    )
    nlist: int | None = Field(None, ge=1, description="k-means cells (None = sqrt(2 N))")
    nprobe: int = Field(
        8, ge=1, description="most cells each record is compared with: higher = better recall, slower"
    )
    probe_margin: float = Field(
        0.05,
        ge=0.0,
        le=2.0,
        description="probe a cell beyond the nearest only if its centroid is within this cosine of the "
        "nearest one's (2 = always probe nprobe cells)",
    )
    train_size: int | None = Field(
        None, ge=1, description="vectors sampled to train the cells (None = 32 per cell, at most N)"
    )
    k: int = Field(
        32,
        ge=1,
        description="neighbours per exact search; rows whose k-th neighbour is still a duplicate are re-searched",
    )
    priority_scores: list[str] = Field(
        # quality's judge (1-5) when dedup runs after it, else distill's best-of-n judge
        # (1-10) or reward-model score, which is what a dedup placed before quality sees.
        default_factory=lambda: ["quality_judge", "judge", "reward"],
        description="meta.scores keys ranking which duplicate to keep (higher first, in turn); "
        "then the longer answer",
    )


# ---------------------------------------------------------------------------------------------
# exact duplicates


# Sentence punctuation that wraps words without changing what is asked. Anything else (signs,
# decimal points, %, #, +, punctuation inside a token) can change the meaning: "3.5" vs "35",
# "-5" vs "5", "50%" vs "50", "C#" vs "C" must not be exact duplicates.
_EDGE_PUNCT = ".,!?;:…\"'()[]{}«»„¿¡"
_DASHES = frozenset("-‐‑‒–—―")
_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"'})


def normalize_text(text: str) -> str:
    """The text as compared for exact duplicates: Unicode (NFKC), case, spacing and sentence
    punctuation at word edges ignored; digits and the signs and points around them kept.

    `Hello,  World!` == `hello world`, but `3.5` != `35` and `-5` != `5`: a punctuation mark
    is dropped only at the edge of a word, never inside one, and a leading one only when no
    digit follows it (`.5`, `(-5)` keep their point and sign).
    """
    text = unicodedata.normalize("NFKC", text).casefold().translate(_QUOTES)
    words = []
    for word in text.split():
        if all(ch in _DASHES for ch in word):  # a free-standing dash is sentence punctuation
            continue
        start, stop = 0, len(word)
        while start < stop and word[start] in _EDGE_PUNCT and not _digit_at(word, start + 1):
            start += 1
        while stop > start and word[stop - 1] in _EDGE_PUNCT:
            stop -= 1
        if start < stop:
            words.append(word[start:stop])
    return " ".join(words)


def _digit_at(word: str, pos: int) -> bool:
    return pos < len(word) and word[pos].isdigit()


def priority_order(records: Sequence[Record], score_keys: Sequence[str] = ("quality_judge",)) -> list[int]:
    """Indices best first: each score in `score_keys` (missing = lowest), then longer answer,
    then input order, so ties always break the same way."""

    def key(i: int) -> tuple:
        scores = records[i].meta.scores
        ranked = tuple(-float(scores[k]) if k in scores else math.inf for k in score_keys)
        return (*ranked, -len(records[i].output.strip()), i)

    return sorted(range(len(records)), key=key)


# ---------------------------------------------------------------------------------------------
# the stage


def run(records: list[Record], ctx: StageContext, config: DedupConfig) -> StageResult:
    """Exact then near-duplicate removal; kept records stay in input order."""
    from datagen.embed import record_text

    n = len(records)
    texts = [record_text(r, config.embed_field) for r in records]
    order = priority_order(records, config.priority_scores)
    drop_reason: dict[int, str] = {}
    kept_of: dict[int, int] = {}  # dropped index -> kept index
    sim_of: dict[int, float] = {}
    max_sim: dict[int, float] = {}
    stats: dict[str, Any] = {"input": n, "threshold": config.threshold, "embed_field": config.embed_field}

    if config.exact:
        first: dict[str, int] = {}
        for i in order:
            norm = normalize_text(texts[i])
            if norm in first:
                drop_reason[i] = "exact_duplicate"
                kept_of[i], sim_of[i], max_sim[i] = first[norm], 1.0, 1.0
            else:
                first[norm] = i
    survivors = [i for i in order if i not in drop_reason]  # still in priority order
    stats["exact_duplicates"] = len(drop_reason)

    near = 0
    if config.semantic and len(survivors) > 1:
        started = time.perf_counter()
        vectors = ctx.embed_texts(
            [texts[i] for i in survivors],
            model=config.embedder,
            batch_size=config.batch_size,
            progress=ctx.progress,
        )
        stats["embed_seconds"] = round(time.perf_counter() - started, 3)
        with ctx.bar(len(survivors), "dedup search", unit="rec") as bar:
            result = semantic_dedup(
                vectors,
                rank=np.arange(len(survivors)),
                threshold=config.threshold,
                k=config.k,
                ivf_threshold=config.ivf_threshold,
                nlist=config.nlist,
                nprobe=config.nprobe,
                train_size=config.train_size,
                seed=ctx.seed,
                probe_margin=config.probe_margin,
                on_progress=bar.update,
            )
            near = int((~result.keep).sum())
            bar.set_postfix(kept=len(survivors) - near, dropped=near + len(drop_reason))
        stats.update(result.stats)
        for pos, i in enumerate(survivors):
            if not np.isnan(result.max_sim[pos]):
                max_sim[i] = float(result.max_sim[pos])
            if not result.keep[pos]:
                drop_reason[i] = "near_duplicate"
                kept_of[i] = survivors[int(result.kept_by[pos])]
                sim_of[i] = float(result.by_sim[pos])
    stats["near_duplicates"] = near

    # An exact duplicate's representative may itself have gone as a near duplicate: point the
    # exact duplicate at the record that was finally kept (similarity: its twin's, as it was
    # never embedded), so every kept_id names a kept record; `via` names the twin.
    via: dict[int, int] = {}
    for i, reason in drop_reason.items():
        if reason == "exact_duplicate" and drop_reason.get(kept_of[i]) == "near_duplicate":
            rep = kept_of[i]
            via[i] = rep
            kept_of[i], sim_of[i] = kept_of[rep], sim_of[rep]

    kept: list[Record] = []
    gone: list[Record] = []
    for i, rec in enumerate(records):
        if i in drop_reason:
            detail: dict[str, Any] = {"kept_id": records[kept_of[i]].id, "similarity": round(sim_of[i], 4)}
            if i in via:
                detail["via"] = records[via[i]].id
            out = dropped(rec, drop_reason[i], **detail)
            out.meta.scores["max_sim"] = round(sim_of[i], 4)
            gone.append(out)
        else:
            out = rec.model_copy(deep=True)
            if i in max_sim:
                out.meta.scores["max_sim"] = round(max_sim[i], 4)
            kept.append(out)
    stats["kept"] = len(kept)
    return StageResult(kept=kept, dropped=gone, stats=stats)


# ---------------------------------------------------------------------------------------------
# registration


STAGE = register(Stage(
    name="dedup",
    config=DedupConfig,
    run=run,
    plan=NO_LLM_CALLS,
    position=40,
    help="drop exact and near-duplicate records (embeddings + FAISS)",
    command=Command(
        verb="dedup",
        description=(
            "Exact duplicates (case, spacing and sentence punctuation ignored; numbers kept), then near\n"
            "duplicates by cosine similarity of embeddings (a static model distilled from the bundled\n"
            "all-MiniLM-L6-v2 by default). Of each duplicate pair the record with the higher judge score,\n"
            "else the longer answer, is kept; each dropped record names the kept one."
        ),
        flag_aliases={"embedder": ["--model"], "embed_field": ["--field"]},
    ),
    uses=frozenset({"scores"}),
    writes=frozenset({"scores"}),  # the near-duplicate similarity, `max_sim`
))
