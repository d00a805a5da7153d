"""Human review decisions: appended to `review.jsonl` in the run directory, applied at export.

The viewer writes a decision (accept, reject, edit) as one JSON line with who and when; the
file is only ever appended to, under a file lock, so two reviewers (or two browser tabs) never
lose each other's lines and the history stays readable. The latest decision per record wins.

Why the export applies them and not a `review` stage: a stage's output is hashed into every
later stage's marker, so a review stage placed last would still need re-placing whenever
stages are added, and a decision on a record that an earlier stage dropped (restore it) has no
place in a stream that no longer holds it. At the export, every stage is finished and its
files are on disk: rejected records leave the export, edited ones carry the reviewer's text,
accepted drops come back from their stage's `dropped.jsonl`. No LLM call, no stage re-runs.
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from datagen.records import Record

DECISIONS = ("accept", "reject", "edit")
EDITABLE = ("instruction", "input", "output")


def review_path(run_dir: Path) -> Path:
    return Path(run_dir) / "review.jsonl"


def append_decision(run_dir: str | Path, record_id: str, decision: str, *, stage: str, who: str,
                    fields: dict[str, str] | None = None) -> dict[str, Any]:
    """Append one decision line (one write, flushed and fsynced, under a lock)."""
    from filelock import FileLock

    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, not {decision!r}")
    entry: dict[str, Any] = {"id": record_id, "stage": stage, "decision": decision, "who": who or "anonymous",
                             "when": datetime.now(UTC).isoformat(timespec="seconds")}
    if decision == "edit":
        entry["fields"] = {k: v for k, v in (fields or {}).items() if k in EDITABLE}
    path = review_path(Path(run_dir))
    line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
    with FileLock(str(path) + ".lock"):
        with open(path, "ab") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
    return entry


def read_decisions(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every decision, oldest first; a line cut by a crash mid-write is skipped."""
    path = review_path(Path(run_dir))
    if not path.exists():
        return []
    found = []
    for raw in path.read_bytes().split(b"\n"):
        try:
            entry = json.loads(raw)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("decision") in DECISIONS and entry.get("id"):
            found.append(entry)
    return found


def latest_decisions(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    latest: dict[str, dict[str, Any]] = {}
    for entry in read_decisions(run_dir):
        latest[entry["id"]] = entry
    return latest


def review_digest(run_dir: str | Path) -> str | None:
    path = review_path(Path(run_dir))
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def apply_review(records: list[Record], run_dir: str | Path) -> tuple[list[Record], dict[str, int]]:
    """The export's records after the latest decision per id, and how many of each applied."""
    latest = latest_decisions(run_dir)
    if not latest:
        return records, {}
    counts = {"accepted": 0, "rejected": 0, "edited": 0, "restored": 0, "unmatched": 0}
    out: list[Record] = []
    present = set()
    for record in records:
        present.add(record.id)
        entry = latest.get(record.id)
        if entry is None:
            out.append(record)
        elif entry["decision"] == "reject":
            counts["rejected"] += 1
        elif entry["decision"] == "edit":
            out.append(record.model_copy(update=entry.get("fields") or {}))
            counts["edited"] += 1
        else:
            out.append(record)
            counts["accepted"] += 1
    for record_id, entry in latest.items():
        if record_id in present or entry["decision"] == "reject":
            continue
        restored = _dropped_record(Path(run_dir), entry.get("stage", ""), record_id)
        if restored is not None:
            restored.meta.drop_reason, restored.meta.drop_detail = None, None
            if entry["decision"] == "edit":
                restored = restored.model_copy(update=entry.get("fields") or {})
            out.append(restored)
            counts["restored"] += 1
        else:
            counts["unmatched"] += 1  # an id no stage kept or dropped (another run's file?)
    return out, {k: v for k, v in counts.items() if v}


def _dropped_record(run_dir: Path, stage: str, record_id: str) -> Record | None:
    """A record a stage dropped, for a reviewer who accepted it anyway: looked up in the stage
    the reviewer saw it in, else in whichever stage dropped it (the latest first)."""
    from datagen.jsonl import read_jsonl

    order = [stage] if stage and "/" not in stage else []
    manifest = run_dir / "manifest.json"
    if manifest.exists():
        labels = [s["label"] for s in json.loads(manifest.read_text(encoding="utf-8")).get("stages", [])]
        order += [label for label in reversed(labels) if label != stage]
    for label in order:
        path = run_dir / label / "dropped.jsonl"
        if path.exists():
            for row in read_jsonl(path):
                if row.get("id") == record_id:
                    return Record.model_validate(row)
    return None
