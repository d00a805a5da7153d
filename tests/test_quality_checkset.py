"""The quality rules measured on the labelled check set: our own seeds lose nothing, every rule
keeps its precision, and the set on disk is the one `bench/filter_checkset.py` builds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from datagen.stages.quality_checks import RULES
from datagen.stages.quality_config import RULE_NAMES

ROOT = Path(__file__).resolve().parent.parent


def _bench(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def measured() -> dict:
    filters = _bench("filters")
    return filters.evaluate(filters.load())


def test_check_set_is_the_one_the_builder_makes() -> None:
    builder = _bench("filter_checkset")
    built = builder.build()
    on_disk = [json.loads(line) for line in builder.CHECKSET.read_text(encoding="utf-8").splitlines()]
    assert built == on_disk, "run `python bench/filter_checkset.py` after changing the seeds or hand-written rows"
    assert len(on_disk) >= 500
    labelled = {row["heuristic"] for row in on_disk if row["label"] == "bad"}
    assert labelled == set(RULE_NAMES), f"rules without planted cases: {set(RULE_NAMES) - labelled}"
    languages = {row["lang"] for row in on_disk if row["label"] == "good"}
    assert {"en", "zh", "ja", "ko", "es", "de", "ru", "ar"} <= languages


def test_seeds_lose_none(measured: dict) -> None:
    seed_drops = [row for row in measured["false_drops"] if row["id"].startswith("seed_task_")]
    assert seed_drops == []


def test_rates_meet_the_goals(measured: dict) -> None:
    assert measured["false_drop_rate"] <= 0.01, measured["false_drops"]
    assert measured["catch_rate"] >= 0.90, measured["misses"]
    for name, counts in measured["per_rule"].items():
        assert counts.get("bad", 0) > 0, f"{name}: no planted case"


def test_filter_cli_keeps_every_seed_and_explains_drops(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from datagen.cli import main
    from datagen.io import read_records

    out = tmp_path / "kept.jsonl"
    code = main(["filter", "--input", str(ROOT / "seeds" / "seed_tasks.jsonl"), "--out", str(out), "--no-judge",
                 "--no-progress", "--no-cache"])
    assert code == 0 and len(read_records(out)) == 175

    src, drop = tmp_path / "in.jsonl", tmp_path / "drop.jsonl"
    src.write_text(json.dumps({"instruction": "Say hi.", "output": "I cannot do that for you."}) + "\n")
    capsys.readouterr()
    assert main(["filter", "--input", str(src), "--out", str(out), "--dropped", str(drop), "--no-judge",
                 "--no-progress", "--no-cache", "--explain"]) == 0
    printed = capsys.readouterr().err
    assert "refusal" in printed and '"i cannot do that"' in printed and "opens with a refusal" in printed
    detail = read_records(drop)[0].meta.drop_detail
    assert detail["matched"] == "i cannot do that" and detail["why"]
    assert main(["filter", "--input", str(src), "--out", str(out), "--no-judge", "--no-progress", "--no-cache",
                 "--keep-heuristic", "refusal,copies_instruction"]) == 0
    assert len(read_records(out)) == 1


def test_the_config_names_every_rule_of_the_rules_table() -> None:
    """`RULE_NAMES` is written out in quality_config (so the config needs nothing from the rules)."""
    assert RULE_NAMES == tuple(rule.name for rule in RULES)
