"""What the viewer's pages ask the index: filtered pages, a record's lineage, its LLM calls.

Each function is one page's data as plain dicts, so the web layer only renders, and the
queries can be timed and tested without a server.
"""

from __future__ import annotations

import difflib
import json
import re
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

PAGE_SIZE = 50


@dataclass
class Filters:
    """The record list's filters, as the query string carries them (blank = not set)."""

    stage: str = ""
    status: str = ""
    reason: str = ""
    source: str = ""
    language: str = ""
    q: str = ""
    min_score: float | None = None
    max_score: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    page: int = 1
    errors: list[str] = field(default_factory=list)

    @classmethod
    def from_query(cls, params: dict[str, str]) -> Filters:
        found = cls()
        for name in ("stage", "status", "reason", "source", "language", "q"):
            setattr(found, name, params.get(name, "").strip())
        for name, kind in (("min_score", float), ("max_score", float), ("min_length", int), ("max_length", int),
                           ("page", int)):
            raw = params.get(name, "").strip()
            if raw:
                try:
                    setattr(found, name, kind(raw))
                except ValueError:
                    found.errors.append(f"{name}: not a number: {raw}")
        found.page = max(1, found.page)
        return found

    def where(self) -> tuple[str, list[Any]]:
        clauses, args = [], []
        for column, value in (("stage", self.stage), ("status", self.status), ("drop_reason", self.reason),
                              ("source", self.source), ("language", self.language)):
            if value:
                clauses.append(f"r.{column} = ?")
                args.append(value)
        for column, op, value in (("score", ">=", self.min_score), ("score", "<=", self.max_score),
                                  ("length", ">=", self.min_length), ("length", "<=", self.max_length)):
            if value is not None:
                clauses.append(f"r.{column} {op} ?")
                args.append(value)
        if self.q:
            clauses.append("r.rowid IN (SELECT rowid FROM records_fts WHERE records_fts MATCH ?)")
            args.append(fts_query(self.q))
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def query_string(self, **change: Any) -> str:
        from urllib.parse import urlencode

        values = {k: getattr(self, k) for k in ("stage", "status", "reason", "source", "language", "q", "min_score",
                                                "max_score", "min_length", "max_length", "page")}
        values.update(change)
        return urlencode({k: v for k, v in values.items() if v not in (None, "")})


def fts_query(text: str) -> str:
    """User words as FTS5 phrases (quotes doubled), so `AND`, `*` or a stray quote never raise."""
    return " ".join('"' + word.replace('"', '""') + '"' for word in text.split())


def record_page(conn: sqlite3.Connection, filters: Filters) -> dict[str, Any]:
    where, args = filters.where()
    total = conn.execute(f"SELECT COUNT(*) FROM records r{where}", args).fetchone()[0]
    rows = conn.execute(
        f"SELECT r.rowid AS rowid, r.id, r.stage, r.status, r.drop_reason, r.source, r.language, r.length, r.score,"
        f" substr(r.instruction, 1, 300) AS instruction, substr(r.output, 1, 200) AS output FROM records r{where}"
        f" ORDER BY r.rowid LIMIT ? OFFSET ?", [*args, PAGE_SIZE, (filters.page - 1) * PAGE_SIZE]).fetchall()
    return {"total": total, "rows": [dict(r) for r in rows], "pages": max(1, -(-total // PAGE_SIZE))}


def facets(conn: sqlite3.Connection) -> dict[str, list[Any]]:
    """The values each filter can take, for the drop-downs."""
    found = {}
    for column in ("stage", "status", "drop_reason", "source", "language"):
        order = "MIN(stage_pos)" if column == "stage" else column
        found[column] = [r[0] for r in conn.execute(
            f"SELECT {column} FROM records WHERE {column} IS NOT NULL GROUP BY {column} ORDER BY {order}")]
    return found


def record(conn: sqlite3.Connection, rowid: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT rowid AS rowid, * FROM records WHERE rowid = ?", (rowid,)).fetchone()
    if row is None:
        return None
    found = dict(row)
    found["meta"] = json.loads(found["meta"] or "{}")
    return found


def lineage(conn: sqlite3.Connection, rec: dict[str, Any]) -> list[dict[str, Any]]:
    """Every step of the record's history: its ancestors (via parent_id) root first, each id at
    every stage that held it (seed → evolved → distilled → filtered)."""
    chain, current = [rec["id"]], rec.get("parent_id")
    while current and current not in chain and len(chain) < 32:
        chain.insert(0, current)
        parent = conn.execute("SELECT parent_id FROM records WHERE id = ? AND parent_id IS NOT NULL LIMIT 1",
                              (current,)).fetchone()
        current = parent[0] if parent else None
    steps = []
    for record_id in chain:
        for row in conn.execute("SELECT rowid AS rowid, id, stage, status, drop_reason, score, instruction, output"
                                " FROM records WHERE id = ? ORDER BY stage_pos, status DESC", (record_id,)):
            steps.append(dict(row) | {"current": row["rowid"] == rec["rowid"]})
    return steps


def parent_diff(conn: sqlite3.Connection, rec: dict[str, Any]) -> list[tuple[str, str]] | None:
    """The instruction against its parent's, as (op, text) runs of words: op is =, - or +."""
    if not rec.get("parent_id"):
        return None
    parent = conn.execute("SELECT instruction FROM records WHERE id = ? ORDER BY stage_pos LIMIT 1",
                          (rec["parent_id"],)).fetchone()
    if parent is None:
        return None
    return word_diff(parent[0], rec["instruction"])


def word_diff(old: str, new: str) -> list[tuple[str, str]]:
    a, b = re.findall(r"\S+|\s+", old), re.findall(r"\S+|\s+", new)
    runs: list[tuple[str, str]] = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag == "equal":
            runs.append(("=", "".join(a[i1:i2])))
            continue
        if i2 > i1:
            runs.append(("-", "".join(a[i1:i2])))
        if j2 > j1:
            runs.append(("+", "".join(b[j1:j2])))
    return runs


def children(conn: sqlite3.Connection, record_id: str) -> list[dict[str, Any]]:
    rows = conn.execute("SELECT MIN(rowid) AS rowid, id, substr(instruction, 1, 200) AS instruction FROM records"
                        " WHERE parent_id = ? GROUP BY id LIMIT 50", (record_id,))
    return [dict(r) for r in rows]


def llm_calls(run_dir: Path, rec: dict[str, Any], prices: dict[str, Any], limit: int = 20) -> list[dict[str, Any]]:
    """The cached LLM calls whose prompt holds this record's instruction: model, tokens, cost.
    Every call in the cache was paid once, when `created` says; every later run of the same
    request was a cache hit (the manifest counts hits per stage)."""
    path = run_dir / "llm_cache.sqlite"
    needle = json.dumps(rec["instruction"][:160], ensure_ascii=False)[1:-1]
    if not path.exists() or len(needle) < 8:
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT backend, model, request, response, created FROM completions"
                            " WHERE instr(request, ?) > 0 ORDER BY created LIMIT ?", (needle, limit)).fetchall()
    except sqlite3.DatabaseError:
        return []
    finally:
        conn.close()
    calls = []
    for backend, model, request, response, created in rows:
        req, resp = json.loads(request), json.loads(response)
        spec = f"{backend}:{model}" if backend != "local" else "local"
        price = prices.get(spec) or {}
        cost = (resp.get("prompt_tokens", 0) * price.get("input_per_million", 0.0)
                + resp.get("completion_tokens", 0) * price.get("output_per_million", 0.0)) / 1e6
        turns = [m if isinstance(m, dict) else {"role": m[0], "content": m[1]} for m in req.get("messages") or []]
        prompt = next((m.get("content", "") for m in reversed(turns) if m.get("role") == "user"), req.get("prompt", ""))
        calls.append({"spec": spec, "n": req.get("n", 1), "prompt_tokens": resp.get("prompt_tokens", 0),
                      "completion_tokens": resp.get("completion_tokens", 0), "cost_usd": cost, "created": created,
                      "made": datetime.fromtimestamp(created or 0, UTC).strftime("%Y-%m-%d %H:%M:%S"),
                      "prompt": prompt, "texts": resp.get("texts", [])})
    return calls
