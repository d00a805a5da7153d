"""How often each quality heuristic agrees with people: precision and recall on a labelled set.

Runs every rule of `datagen.stages.quality_checks.RULES` (default `QualityConfig`, no judge) over
`tests/data/filter_checkset.jsonl` (built by `bench/filter_checkset.py`: good answers that must
be kept, planted bad ones labelled with the rule that should catch them) and prints, per rule,
the good answers it drops and the bad ones it catches; then the same by language. The last line
is the overall false-drop rate (goal <= 1 %) and catch rate (goal >= 90 %). JSON goes to
`bench/results/filters.json`.

    python bench/filters.py            # the committed check set
    python bench/filters.py --rebuild  # rebuild it from the seeds and hand-written rows first
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from datagen.jsonl import read_jsonl  # noqa: E402
from datagen.records import Record, RecordMeta  # noqa: E402
from datagen.stages.quality import QualityConfig  # noqa: E402
from datagen.stages.quality_checks import first_verdict  # noqa: E402
from datagen.stages.quality_config import RULE_NAMES  # noqa: E402

CHECKSET = ROOT / "tests" / "data" / "filter_checkset.jsonl"
RESULTS = ROOT / "bench" / "results" / "filters.json"


def load(path: Path = CHECKSET) -> list[dict[str, Any]]:
    return read_jsonl(path)


def as_record(row: dict[str, Any]) -> Record:
    meta = RecordMeta(is_classification=row.get("is_classification"), answer_finish_reason=row.get("finish_reason"))
    return Record(id=row["id"], instruction=row["instruction"], input=row.get("input", ""), output=row["output"],
                  meta=meta)


def evaluate(rows: list[dict[str, Any]], config: QualityConfig | None = None) -> dict[str, Any]:
    """Every row's verdict, and the per-rule, per-language and overall counts."""
    config = config or QualityConfig(use_judge=False)
    per_rule: dict[str, Counter] = {name: Counter() for name in RULE_NAMES}
    per_lang: dict[str, Counter] = defaultdict(Counter)
    false_drops, misses = [], []
    for row in rows:
        found = first_verdict(as_record(row), config)
        rule = found[0] if found else None
        lang = per_lang[row.get("lang", "?")]
        if row["label"] == "good":
            lang["good"] += 1
            if rule:
                lang["good_dropped"] += 1
                per_rule[rule]["good_dropped"] += 1
                false_drops.append({"id": row["id"], "rule": rule, **found[1]})
        else:
            lang["bad"] += 1
            target = per_rule[row["heuristic"]]
            target["bad"] += 1
            if rule:
                lang["bad_caught"] += 1
                target["bad_caught"] += 1
                target["bad_caught_by_own_rule"] += rule == row["heuristic"]
                if rule != row["heuristic"]:
                    per_rule[rule]["caught_for_other_rules"] += 1
            else:
                misses.append({"id": row["id"], "heuristic": row["heuristic"], "source": row["source"],
                               "tail": row["output"][-60:]})
    good = sum(c["good"] for c in per_lang.values())
    bad = sum(c["bad"] for c in per_lang.values())
    dropped = sum(c["good_dropped"] for c in per_lang.values())
    caught = sum(c["bad_caught"] for c in per_lang.values())
    return {
        "rows": len(rows), "good": good, "bad": bad, "good_dropped": dropped, "bad_caught": caught,
        "false_drop_rate": dropped / good if good else 0.0, "catch_rate": caught / bad if bad else 0.0,
        "per_rule": {name: dict(counts) for name, counts in per_rule.items()},
        "per_language": {lang: dict(counts) for lang, counts in sorted(per_lang.items())},
        "false_drops": false_drops, "misses": misses,
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"{'heuristic':<22} {'good dropped':>12} {'bad caught':>12} {'by own rule':>12}")
    for name, c in result["per_rule"].items():
        print(f"{name:<22} {c.get('good_dropped', 0):>12} {c.get('bad_caught', 0):>7} / {c.get('bad', 0):<3}"
              f" {c.get('bad_caught_by_own_rule', 0):>12}")
    print()
    print(f"{'language':<10} {'good dropped':>14} {'bad caught':>12}")
    for lang, c in result["per_language"].items():
        print(f"{lang:<10} {c.get('good_dropped', 0):>6} / {c.get('good', 0):<6} {c.get('bad_caught', 0):>5} / "
              f"{c.get('bad', 0):<4}")
    for row in result["false_drops"]:
        print(f"  false drop {row['id']}: {row['rule']} {row.get('matched', '')[:60]!r} - {row.get('why', '')}")
    for row in result["misses"]:
        print(f"  missed {row['id']} ({row['source']}): ...{row['tail']!r}")
    print(f"overall on {result['rows']} labelled answers: false-drop rate {result['false_drop_rate']:.1%} "
          f"({result['good_dropped']}/{result['good']} good dropped; goal <= 1 %), catch rate "
          f"{result['catch_rate']:.1%} ({result['bad_caught']}/{result['bad']} bad caught; goal >= 90 %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rebuild", action="store_true", help="rebuild the check set first")
    args = parser.parse_args()
    if args.rebuild:
        sys.path.insert(0, str(ROOT / "bench"))
        from filter_checkset import build, write

        write(build())
    result = evaluate(load())
    print_table(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result["load_average"] = list(os.getloadavg())  # irrelevant to these figures, recorded like every bench's
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
