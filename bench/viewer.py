"""`datagen view` on a synthetic 100k-record run: index build, first page, filters, search.

Ours: the SQLite/FTS5 index (built once) behind the real Starlette app over HTTP. Baseline:
what a page costs without an index, reading and filtering the stage files with the project's
JSONL reader (the way a script over kept.jsonl / dropped.jsonl would). The last line is the
filter-latency ratio.

    python bench/viewer.py [--records 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

WORDS = ("orbit glacier ledger violin harbor quartz meadow cipher lantern tundra saffron beacon canyon falcon mosaic "
         "nectar pylon quiver ribbon summit thistle umber vortex willow yonder zephyr anchor bramble cobalt").split()
STAGES = [("evol_instruct", 0.0, []), ("distill", 0.08, ["no_valid_candidate", "judge_below_threshold"]),
          ("dedup", 0.1, ["exact_duplicate", "near_duplicate"]),
          ("quality", 0.2, ["truncated_output", "refusal", "judge_below_threshold", "too_short"])]


def make_run(run_dir: Path, total: int, seed: int = 0) -> None:
    """A run directory whose stage files hold `total` records in all, kept and dropped."""
    rng = random.Random(seed)
    per_stage = total // len(STAGES)
    manifest_stages = []
    for label, drop_share, reasons in STAGES:
        kept, dropped = [], []
        for i in range(per_stage):
            words = rng.choices(WORDS, k=rng.randint(8, 30))
            meta = {"source": rng.choice(["self_instruct", "evol_instruct", "seed"]), "parent_id": f"r{i - 1}" if i else None,
                    "scores": {"judge": rng.randint(1, 10)}}
            row = {"id": f"r{i}", "instruction": "Explain " + " ".join(words), "input": "",
                   "output": " ".join(rng.choices(WORDS, k=rng.randint(20, 120))), "meta": meta}
            if rng.random() < drop_share:
                meta["drop_reason"] = rng.choice(reasons)
                dropped.append(row)
            else:
                kept.append(row)
        (run_dir / label).mkdir(parents=True, exist_ok=True)
        for name, rows in (("kept", kept), ("dropped", dropped)):
            (run_dir / label / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        counts: dict[str, int] = {}
        for r in dropped:
            counts[r["meta"]["drop_reason"]] = counts.get(r["meta"]["drop_reason"], 0) + 1
        manifest_stages.append({"label": label, "stage": label, "in": per_stage, "out": len(kept),
                                "dropped": len(dropped), "drop_reasons": counts, "seconds": 0})
    (run_dir / "manifest.json").write_text(json.dumps({"name": "bench100k", "status": "finished",
                                                       "input": {"records": per_stage}, "stages": manifest_stages}))
    (run_dir / "config.yaml").write_text("name: bench100k\ninput:\n  path: none.jsonl\n")


def timed(fn, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best * 1000


def baseline_filter(run_dir: Path, reason: str) -> list[dict]:
    """No index: read every dropped file and keep the first page of one drop reason."""
    from datagen.jsonl import read_jsonl

    found = []
    for label, *_ in STAGES:
        found += [r for r in read_jsonl(run_dir / label / "dropped.jsonl") if r["meta"].get("drop_reason") == reason]
    return found[:50]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["DATAGEN_CACHE"] = str(Path(tmp) / "cache")  # the index only; no model is loaded here
        run_dir = Path(tmp) / "run"
        make_run(run_dir, args.records)
        from viewer_server import serving

        from datagen.view_index import open_index
        from datagen.viewer import build_app

        started = time.perf_counter()
        rows = open_index(run_dir).execute("SELECT COUNT(*) FROM records").fetchone()[0]
        build_s = time.perf_counter() - started
        results = {"records": rows, "index_build_s": round(build_s, 2)}
        with serving(build_app(run_dir)) as url:
            def fetch(path: str) -> None:
                with urllib.request.urlopen(url + path, timeout=60) as resp:
                    resp.read()

            pages = {"home": "/", "first page": "/records",
                     "filter: drop reason": "/records?status=dropped&reason=refusal",
                     "filter: stage+kept+score": "/records?stage=quality&status=kept&min_score=7&max_score=9",
                     "filter: length": "/records?min_length=400&max_length=500",
                     "full-text search": "/records?q=glacier+violin", "page 1000": "/records?page=1000",
                     "record page": "/record/50000"}
            for name, path in pages.items():
                results[f"{name} ms"] = round(timed(lambda p=path: fetch(p)), 1)
        results["baseline filter: drop reason ms"] = round(timed(lambda: baseline_filter(run_dir, "refusal"), 2), 1)
    results["load"] = os.getloadavg()[0]
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value}")
    ratio = results["baseline filter: drop reason ms"] / results["filter: drop reason ms"]
    results["filter_speedup"] = round(ratio, 1)
    (ROOT / "bench" / "results" / "viewer.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"drop-reason filter: indexed page {ratio:.0f}x faster than scanning the stage files")


if __name__ == "__main__":
    main()
