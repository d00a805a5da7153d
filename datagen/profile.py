"""Dataset profile: how new, how varied and how spread out a set of records is.

Self-Instruct judged its data by exactly these numbers (ROUGE-L of each instruction to its
nearest seed, leading verbs, lengths); distinct-n and embedding spread are the usual
diversity measures on top. They are computed per stage and for the export so the report
shows what each stage did to diversity, not only to the count. Everything here is fast on
CPU: ROUGE-L goes through `datagen.novelty`'s indexed search, embeddings through the
project's embedder on at most `max_embed` records (a seeded sample above that).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from datagen.records import Record

# Words that open an instruction without being its verb ("Please write", "Can you explain").
_OPENERS = frozenset("please kindly can could would will you i we let's lets now then also so ok okay".split())
_WORD = re.compile(r"[\w'-]+")


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique word n-grams over all n-grams in `texts` (Li et al. 2016): 1 = nothing repeats."""
    total, unique = 0, set()
    for text in texts:
        words = _WORD.findall(text.casefold())
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        total += len(grams)
        unique.update(grams)
    return round(len(unique) / total, 4) if total else 0.0


def leading_verb(instruction: str) -> str:
    """The word an instruction opens with, past politeness ("Please write" -> "write")."""
    words = _WORD.findall(instruction.casefold())
    while words and words[0] in _OPENERS:
        words = words[1:]
    return words[0] if words else ""


def rouge_to_seeds(instructions: Sequence[str], seeds: Sequence[str]) -> list[float]:
    """ROUGE-L F1 of each instruction to its most similar seed instruction."""
    from datagen.novelty import NoveltyIndex

    if not seeds:
        return []
    index = NoveltyIndex(seeds)
    return [round(index.max_similarity(text), 4) for text in instructions]


def embedding_spread(vectors: np.ndarray, cluster_threshold: float = 0.6) -> dict[str, Any]:
    """Mean pairwise cosine (lower = more spread out) and the number of clusters a greedy
    leader pass finds: a record joins the first leader it has cosine >= `cluster_threshold`
    with, else it becomes a leader. Rows must be unit length."""
    n = len(vectors)
    if n < 2:
        return {"mean_pairwise_cosine": None, "clusters": n}
    total = vectors.sum(axis=0)
    mean_cos = (float(total @ total) - n) / (n * (n - 1))  # sum over i != j of v_i . v_j
    leaders: list[int] = []
    for i in range(n):
        if not leaders or float((vectors[leaders] @ vectors[i]).max()) < cluster_threshold:
            leaders.append(i)
    return {"mean_pairwise_cosine": round(mean_cos, 4), "clusters": len(leaders), "cluster_threshold": cluster_threshold}


def profile_records(
    records: Sequence[Record],
    seeds: Sequence[str] = (),
    embed: bool = True,
    max_embed: int = 2000,
    embed_model: str | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every number of the profile for one set of records (see the module docstring)."""
    instructions = [r.instruction for r in records]
    answers = [r.output for r in records]
    verbs = Counter(leading_verb(text) for text in instructions if text.strip())
    rouge = rouge_to_seeds(instructions, seeds)
    profile: dict[str, Any] = {
        "records": len(records),
        "distinct_1_instruction": distinct_n(instructions, 1),
        "distinct_2_instruction": distinct_n(instructions, 2),
        "distinct_1_answer": distinct_n(answers, 1),
        "distinct_2_answer": distinct_n(answers, 2),
        "leading_verbs": dict(verbs.most_common(20)),
        "distinct_leading_verbs": len(verbs),
        "rouge_l_to_seed": rouge,
        "rouge_l_to_seed_mean": round(float(np.mean(rouge)), 4) if rouge else None,
        "instruction_words": [len(text.split()) for text in instructions],
        "answer_words": [len(text.split()) for text in answers],
        "scores": _scores(records),
        "mean_pairwise_cosine": None,
        "clusters": None,
    }
    turns = [sum(m.role == "user" for m in r.messages) for r in records if r.messages]
    if turns:
        profile["turns_per_dialogue"] = {str(k): turns.count(k) for k in sorted(set(turns))}
    with_persona = [r for r in records if r.meta.persona]
    if with_persona:
        profile["personas"] = len({r.meta.persona for r in with_persona})
        split = persona_diversity(records, embed=embed, embed_model=embed_model, per_group=max_embed, seed=seed)
        if split:  # some records were made with a persona and some without: what personas bought
            profile["persona_diversity"] = split
    if embed and len(records) >= 2:
        from datagen.embed import embed_texts, record_text

        chosen = list(records)
        if len(chosen) > max_embed:
            chosen = random.Random(seed).sample(chosen, max_embed)
            profile["embedded_sample"] = max_embed
        vectors = embed_texts([record_text(r) for r in chosen], model=embed_model, progress=False)
        profile.update(embedding_spread(vectors))
    return profile


def persona_diversity(records: Sequence[Record], embed: bool = True, embed_model: str | None = None,
                      per_group: int | None = None, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Diversity of the records made with a persona against those made without, side by side:
    distinct leading verbs, distinct-2, embedding spread and clusters (each group cut to the
    same size, so the counts compare). Empty when either group is missing."""
    groups = {"with_personas": [r for r in records if r.meta.persona],
              "without_personas": [r for r in records if not r.meta.persona]}
    if not all(groups.values()):
        return {}
    size = min(len(g) for g in groups.values())
    if per_group is not None:
        size = min(size, per_group)
    out: dict[str, dict[str, Any]] = {}
    for name, group in groups.items():
        chosen = random.Random(seed).sample(group, size) if len(group) > size else group
        # What a persona changes: every user turn (a dialogue's follow-ups are the persona's words).
        texts = [t for r in chosen for t in _user_texts(r)]
        row: dict[str, Any] = {
            "records": len(chosen),
            "distinct_leading_verbs": len({leading_verb(t) for t in texts if t.strip()}),
            "distinct_2_instruction": distinct_n(texts, 2),
        }
        if embed and len(chosen) >= 2:
            from datagen.embed import embed_texts

            row.update(embedding_spread(embed_texts(texts, model=embed_model, progress=False)))
        out[name] = row
    return out


def _user_texts(record: Record) -> list[str]:
    if record.messages:
        return [m.content for m in record.messages if m.role == "user"]
    return [record.instruction]


def _scores(records: Sequence[Record]) -> dict[str, list[float]]:
    found: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.meta.scores.items():
            if isinstance(value, (int, float)) and "sim" not in key:
                found.setdefault(key, []).append(float(value))
    return found
