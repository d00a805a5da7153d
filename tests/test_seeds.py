"""The bundled seed tasks: right count and schema, unique, a sensible classification share, and
no two seeds near-duplicates by the same novelty filter the Self-Instruct stage applies."""

from __future__ import annotations

import pytest

from datagen.io import default_seeds_path, read_seed_tasks
from datagen.novelty import NoveltyIndex
from datagen.records import SeedTask

SEEDS = default_seeds_path()


@pytest.fixture(scope="module")
def tasks() -> list[SeedTask]:
    return read_seed_tasks(SEEDS)


def test_count_and_schema(tasks: list[SeedTask]) -> None:
    assert len(tasks) == 175
    for task in tasks:
        assert task.instruction.strip() and task.name.strip()
        assert all(inst.output.strip() for inst in task.instances), task.id


def test_unique_ids_and_names(tasks: list[SeedTask]) -> None:
    assert len({t.id for t in tasks}) == len(tasks)
    assert len({t.name for t in tasks}) == len(tasks)
    assert len({" ".join(t.instruction.lower().split()) for t in tasks}) == len(tasks)


def test_classification_share(tasks: list[SeedTask]) -> None:
    assert 22 <= sum(t.is_classification for t in tasks) <= 28


def test_some_chinese_and_english(tasks: list[SeedTask]) -> None:
    chinese = [t for t in tasks if any("\u4e00" <= ch <= "\u9fff" for ch in t.instruction)]
    assert 0 < len(chinese) < len(tasks)


def test_no_near_duplicate_seeds(tasks: list[SeedTask]) -> None:
    """Every pair has ROUGE-L F1 <= 0.7 (the stage's threshold), checked incrementally: each
    seed against all earlier ones covers every pair since the score is symmetric."""
    index = NoveltyIndex(threshold=0.7)
    offenders = []
    for task in tasks:
        match = index.most_similar(task.instruction, above=0.7)
        if match is not None:
            offenders.append((task.id, match.text, task.instruction, round(match.score, 3)))
        index.add(task.instruction)
    assert not offenders, offenders
