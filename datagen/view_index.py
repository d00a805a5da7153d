"""The viewer's SQLite index of a run directory (or of one records file).

A run of 100k records is a few hundred MB of JSON Lines spread over every stage's kept and
dropped files; reading them per page would take seconds. They are read once into one table
(one row per record per stage, with the columns the filters need) plus an FTS5 table over the
texts, so a page or a filter is one indexed query. The index lives in the datagen cache, not
in the run directory (the run stays as the pipeline wrote it), and is rebuilt when a file it
was built from changes size or mtime.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 2
_COLUMNS = ("id", "stage", "stage_pos", "status", "drop_reason", "source", "language", "length", "score",
            "parent_id", "root_id", "instruction", "input", "output", "meta")


def index_path(target: Path) -> Path:
    from datagen.paths import cache_root

    digest = hashlib.sha256(str(target.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "view" / f"{digest}.sqlite"


def sources(target: Path) -> list[tuple[str, int, str, Path]]:
    """(stage label, position, kept|dropped, file) for every file the index reads, in run order."""
    if target.is_file():
        return [(target.stem, 0, "kept", target)]
    found: list[tuple[str, int, str, Path]] = []
    manifest_path = target / "manifest.json"
    stages = json.loads(manifest_path.read_text(encoding="utf-8")).get("stages", []) if manifest_path.exists() else []
    labels = [s["label"] for s in stages] or sorted(p.parent.name for p in target.glob("*/kept.jsonl"))
    inputs = _input_file(target)
    if inputs is not None:
        found.append(("input", 0, "kept", inputs))
    for pos, label in enumerate(labels, start=1):
        for status in ("kept", "dropped"):
            path = target / label / f"{status}.jsonl"
            if path.exists():
                found.append((label, pos, status, path))
    return found


def _input_file(run_dir: Path) -> Path | None:
    import yaml

    config_path = run_dir / "config.yaml"
    if not config_path.exists():
        return None
    path = ((yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}).get("input") or {}).get("path")
    if path and Path(path).is_file() and Path(path).suffix == ".jsonl":
        return Path(path)
    from datagen.io import default_seeds_path

    return None if path else default_seeds_path()


def fingerprint(files: list[tuple[str, int, str, Path]]) -> str:
    parts = [SCHEMA_VERSION] + [(label, status, str(p), p.stat().st_size, p.stat().st_mtime_ns)
                                for label, _, status, p in files]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def open_index(target: str | Path, rebuild: bool = False) -> sqlite3.Connection:
    """A read connection to the index of `target`, built first if missing or stale."""
    target = Path(target)
    files = sources(target)
    path = index_path(target)
    stamp = fingerprint(files)
    if not rebuild and path.exists():
        conn = sqlite3.connect(str(path), check_same_thread=False)
        try:
            if conn.execute("SELECT value FROM info WHERE key='fingerprint'").fetchone() == (stamp,):
                conn.row_factory = sqlite3.Row
                return conn
        except sqlite3.DatabaseError:
            pass
        conn.close()
    build_index(files, path, stamp)
    conn = sqlite3.connect(str(path), check_same_thread=False)
    conn.row_factory = sqlite3.Row
    return conn


def build_index(files: list[tuple[str, int, str, Path]], path: Path, stamp: str) -> None:
    """Write the index to a temp file and rename it, so a killed build leaves no half index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    conn = sqlite3.connect(str(tmp))
    conn.executescript(
        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
        "CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT);"
        "CREATE TABLE records (rowid INTEGER PRIMARY KEY, id TEXT, stage TEXT, stage_pos INT, status TEXT,"
        " drop_reason TEXT, source TEXT, language TEXT, length INT, score REAL, parent_id TEXT, root_id TEXT,"
        " instruction TEXT, input TEXT, output TEXT, meta TEXT);"
        "CREATE VIRTUAL TABLE records_fts USING fts5(instruction, input, output, content='records',"
        " content_rowid='rowid', tokenize='unicode61');")
    insert = f"INSERT INTO records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})"
    batch: list[tuple[Any, ...]] = []
    for row in _rows(files):
        batch.append(row)
        if len(batch) >= 5000:
            conn.executemany(insert, batch)
            batch.clear()
    conn.executemany(insert, batch)
    conn.executescript(
        "INSERT INTO records_fts(records_fts) VALUES ('rebuild');"
        "CREATE INDEX by_id ON records(id, stage_pos);"
        "CREATE INDEX by_stage ON records(stage, status, drop_reason);"
        "CREATE INDEX by_reason ON records(drop_reason);"
        "CREATE INDEX by_parent ON records(parent_id);"
        "CREATE INDEX by_score ON records(score);"
        "CREATE INDEX by_length ON records(length);")
    conn.execute("INSERT INTO info VALUES ('fingerprint', ?)", (stamp,))
    conn.commit()
    conn.close()
    os.replace(tmp, path)


def _rows(files: list[tuple[str, int, str, Path]]) -> Iterator[tuple[Any, ...]]:
    from datagen.jsonl import read_jsonl

    for label, pos, status, path in files:
        if label == "input":  # any layout: the reader gives the ids the stages saw
            from datagen.io import read_records

            try:
                rows = [r.model_dump(mode="json") for r in read_records(path)]
            except ValueError:
                rows = read_jsonl(path)
        else:
            rows = read_jsonl(path)
        for row in rows:
            yield record_row(row, label, pos, status)


def record_row(row: dict[str, Any], label: str, pos: int, status: str) -> tuple[Any, ...]:
    """One index row from a record of any layout the run writes (records, seed tasks)."""
    meta = row.get("meta") or {}
    instruction = str(row.get("instruction") or "")
    inp = str(row.get("input") or "")
    output = str(row.get("output") or "")
    if not output and row.get("instances"):  # a Self-Instruct seed task
        first = row["instances"][0]
        inp, output = str(first.get("input") or ""), str(first.get("output") or "")
    if not instruction and row.get("messages"):
        turns = row["messages"]
        instruction = next((m.get("content", "") for m in turns if m.get("role") == "user"), "")
        output = next((m.get("content", "") for m in turns if m.get("role") == "assistant"), "")
    return (str(row.get("id") or ""), label, pos, status, meta.get("drop_reason"), meta.get("source"),
            guess_script(instruction + " " + output), len(instruction) + len(inp) + len(output),
            main_score(meta.get("scores") or {}), meta.get("parent_id"), meta.get("root_id"),
            instruction, inp, output, json.dumps(meta, ensure_ascii=False))


def main_score(scores: dict[str, Any]) -> float | None:
    """The score the filters range over: the judge's, else the first numeric one."""
    for key in ("judge", "quality_judge", "reward"):
        if isinstance(scores.get(key), (int, float)):
            return float(scores[key])
    return next((float(v) for v in scores.values() if isinstance(v, (int, float))), None)


def guess_script(text: str) -> str:
    """The writing system most letters of `text` are in (latin, cjk, cyrillic, arabic, …): a
    cheap, honest stand-in for a language filter that needs no model."""
    counts: dict[str, int] = {}
    for char in text[:400]:
        if char.isalpha():
            name = unicodedata.name(char, "")
            script = name.split(" ")[0] if name else "other"
            if script in {"CJK", "HIRAGANA", "KATAKANA", "HANGUL"}:
                script = "CJK"
            counts[script] = counts.get(script, 0) + 1
    return max(counts, key=lambda k: counts[k]).lower() if counts else "none"
