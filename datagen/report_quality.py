"""Report sections about quality: the scores of the final records, and what each heuristic
dropped (rule, matched text, one-line reason), so a user sees a filter's work, not just counts.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from datagen.jsonl import read_jsonl
from datagen.svg import svg_histogram
from datagen.unicode_text import html_text


def record_scores(records: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Score name -> values over raw record rows (similarities are not scores: left out)."""
    found: dict[str, list[float]] = {}
    for row in records:
        for key, value in ((row.get("meta") or {}).get("scores") or {}).items():
            if isinstance(value, (int, float)) and "sim" not in key:
                found.setdefault(key, []).append(float(value))
    return found


def scores_section(final: list[dict[str, Any]], per_stage: dict[str, dict[str, list[float]]],
                   scales: dict[str, tuple[float, float]]) -> str:
    """Histograms of the final records' scores. When they carry none, say so with the count and
    name the stages whose kept records did, so the section never contradicts the profile."""
    parts = ["<h2>Scores (final records)</h2>"]
    scores = record_scores(final)
    if not scores:
        earlier = [f"{label}: " + ", ".join(f"{key} (n={len(values)})" for key, values in sorted(found.items()))
                   for label, found in per_stage.items() if found]
        where = f"; scores were recorded on the kept records of {'; '.join(earlier)}" if earlier else ""
        parts.append(f"<p>none of the {len(final)} final records carries a score{html.escape(where)}</p>")
    for key, values in sorted(scores.items()):
        scale = scales.get(key)
        on = f" (judge scale {scale[0]:g}-{scale[1]:g})" if scale else ""
        parts.append(svg_histogram(values, f"score: {key}{on}", x_label=f"{key} score{on}"))
    return "".join(parts)


def heuristic_drops_section(run_dir: Path, stages: list[dict[str, Any]], limit: int = 50) -> str:
    """The quality stage's rule drops, each with its rule, the text it matched and why."""
    rows = []
    for stage in (s for s in stages if s.get("stage") == "quality"):
        for row in read_jsonl(run_dir / stage["label"] / "dropped.jsonl"):
            meta = row.get("meta") or {}
            detail = meta.get("drop_detail") or {}
            if "why" in detail:
                rows.append((stage["label"], meta.get("drop_reason", ""), str(detail.get("matched", "")), detail["why"]))
    if not rows:
        return ""
    shown = rows[:limit]
    table = "".join("<tr>" + "".join(f"<td>{html_text(cell, 200)}</td>" for cell in row) + "</tr>" for row in shown)
    more = f"<p>{len(rows) - limit} more in the stage's dropped.jsonl</p>" if len(rows) > limit else ""
    return ("<h2>What the heuristics dropped</h2><table><tr><th>stage</th><th>rule</th><th>matched</th><th>why</th>"
            f"</tr>{table}</table>{more}")
