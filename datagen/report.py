"""The run report: one self-contained HTML file (plots as inline SVG) plus a terminal table.

Inline SVG keeps the report a single file that opens anywhere, with no plotting dependency.
"""

from __future__ import annotations

import argparse
import html
import json
import math
from pathlib import Path
from typing import Any

from rich.table import Table

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#EECA3B", "#B279A2", "#9D755D"]


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def svg_bars(labels: list[str], values: list[float], title: str, width: int = 640) -> str:
    """Horizontal bar chart; long labels are fine because bars run left to right."""
    if not values:
        return f"<p><em>{html.escape(title)}: nothing to show</em></p>"
    row, left, top = 24, 190, 28
    height = top + row * len(values) + 10
    peak = max(values) or 1
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-weight="bold">{html.escape(title)}</text>']
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = top + i * row
        bar = (width - left - 70) * value / peak
        parts.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end" font-size="12">{html.escape(label[:28])}</text>')
        parts.append(f'<rect x="{left}" y="{y + 3}" width="{bar:.1f}" height="{row - 8}" fill="{PALETTE[i % 8]}"/>')
        parts.append(f'<text x="{left + bar + 4:.1f}" y="{y + 15}" font-size="12">{value:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_histogram(values: list[float], title: str, bins: int = 20, width: int = 640, height: int = 200) -> str:
    if not values:
        return f"<p><em>{html.escape(title)}: no values</em></p>"
    low, high = min(values), max(values)
    if math.isclose(low, high):
        high = low + 1
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - low) / (high - low) * bins))] += 1
    peak = max(counts)
    left, bottom, top = 40, 30, 24
    plot_w, plot_h = width - left - 10, height - top - bottom
    bar_w = plot_w / bins
    parts = [f'<svg width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
             f'<text x="0" y="16" font-weight="bold">{html.escape(title)} (n={len(values)})</text>']
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        parts.append(f'<rect x="{left + i * bar_w:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 1:.1f}" '
                     f'height="{h:.1f}" fill="#4C78A8"><title>{count}</title></rect>')
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="11">{low:.3g}</text>')
    parts.append(f'<text x="{width - 10}" y="{height - 8}" font-size="11" text-anchor="end">{high:.3g}</text>')
    parts.append(f'<text x="{left - 4}" y="{top + 10}" font-size="11" text-anchor="end">{peak}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _words(text: str) -> int:
    return len(text.split())


def build_report(run_dir: Path) -> str:
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    stages = manifest.get("stages", [])
    final: list[dict[str, Any]] = []
    if stages:
        final = _load_jsonl(run_dir / stages[-1]["label"] / "kept.jsonl")
    sections = [f"<h1>datagen run: {html.escape(manifest.get('name', run_dir.name))}</h1>",
                f"<p>status <b>{html.escape(manifest.get('status', '?'))}</b> · input records "
                f"{manifest.get('input', {}).get('records', '?')} · final records {len(final)} · "
                f"LLM calls {manifest.get('llm_usage_total', {}).get('calls', '?')} · cost "
                f"${manifest.get('cost_usd_total', 0):.4f}</p>"]
    labels = ["input"] + [s["label"] for s in stages]
    counts = [manifest.get("input", {}).get("records", 0)] + [s["out"] for s in stages]
    sections.append(svg_bars(labels, counts, "Funnel: records after each stage"))

    rows = []
    for s in stages:
        for reason, count in (s.get("drop_reasons") or {}).items():
            rows.append(f"<tr><td>{html.escape(s['label'])}</td><td>{html.escape(reason)}</td><td>{count}</td></tr>")
        usage = s.get("llm_usage") or {}
        calls = sum(u.get("calls", 0) for u in usage.values())
        hits = sum(u.get("cache_hits", 0) for u in usage.values())
        toks = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage.values())
        s["_usage_line"] = f"{calls} calls, {hits} cache hits, {toks} tokens, ${s.get('cost_usd', 0):.4f}"
    sections.append("<h2>Drop reasons</h2>")
    sections.append("<table><tr><th>stage</th><th>reason</th><th>count</th></tr>" + "".join(rows) + "</table>"
                    if rows else "<p>nothing was dropped</p>")
    all_reasons: dict[str, int] = {}
    for s in stages:
        for reason, count in (s.get("drop_reasons") or {}).items():
            all_reasons[f"{s['label']}:{reason}"] = count
    if all_reasons:
        sections.append(svg_bars(list(all_reasons), list(all_reasons.values()), "Dropped, by stage and reason"))

    sections.append("<h2>Stages</h2><table><tr><th>stage</th><th>in</th><th>out</th><th>dropped</th>"
                    "<th>seconds</th><th>LLM</th><th>skipped on this run</th></tr>")
    for s in stages:
        sections.append(f"<tr><td>{html.escape(s['label'])}</td><td>{s['in']}</td><td>{s['out']}</td>"
                        f"<td>{s['dropped']}</td><td>{s.get('seconds', 0):.1f}</td><td>{s['_usage_line']}</td>"
                        f"<td>{'yes' if s.get('skipped') else 'no'}</td></tr>")
    sections.append("</table>")

    sections.append("<h2>Lengths (words, final records)</h2>")
    sections.append(svg_histogram([_words(r.get("instruction", "")) for r in final], "Instruction length"))
    sections.append(svg_histogram([_words(r.get("output", "")) for r in final], "Answer length"))

    score_values: dict[str, list[float]] = {}
    similarity: list[float] = []
    # Only dedup records carry similarities; other stages' files (possibly large) are not read.
    for s in (s for s in stages if s["stage"] == "dedup"):
        for name in ("kept.jsonl", "dropped.jsonl"):
            for r in _load_jsonl(run_dir / s["label"] / name):
                for key, value in ((r.get("meta") or {}).get("scores") or {}).items():
                    if isinstance(value, (int, float)) and "sim" in key:
                        similarity.append(float(value))
    for r in final:
        for key, value in ((r.get("meta") or {}).get("scores") or {}).items():
            if isinstance(value, (int, float)) and "sim" not in key:
                score_values.setdefault(key, []).append(float(value))
    sections.append("<h2>Scores (final records)</h2>")
    if not score_values:
        sections.append("<p>no scores recorded</p>")
    for key, values in sorted(score_values.items()):
        sections.append(svg_histogram(values, f"score: {key}"))
    sections.append("<h2>Similarity to nearest kept neighbour (dedup)</h2>")
    sections.append(svg_histogram(similarity, "cosine similarity"))

    sections.append("<h2>Sample of final records</h2><table><tr><th>instruction</th><th>input</th><th>output</th>"
                    "<th>source / op</th><th>scores</th></tr>")
    for r in final[:25]:
        meta = r.get("meta") or {}
        op = meta.get("evol_op") or ""
        scores = ", ".join(f"{k}={v:.3g}" for k, v in (meta.get("scores") or {}).items() if isinstance(v, (int, float)))
        sections.append("<tr>" + "".join(f"<td>{html.escape(str(x))[:600]}</td>" for x in (
            r.get("instruction", ""), r.get("input", ""), r.get("output", ""),
            f"{meta.get('source', '')} {op}".strip(), scores)) + "</tr>")
    sections.append("</table>")
    if manifest.get("finetune"):
        sections.append("<h2>Fine-tuning</h2><pre>" + html.escape(json.dumps(manifest["finetune"], indent=2,
                                                                             default=str)) + "</pre>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;"
             "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;font-size:13px}"
             "th{background:#f3f3f3}svg{display:block;margin:1em 0}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>datagen report</title>"
            f"<style>{style}</style></head><body>{''.join(sections)}</body></html>")


def write_report(run_dir: str | Path) -> Path:
    from datagen.io import atomic_write_text

    run_dir = Path(run_dir)
    target = run_dir / "report.html"
    atomic_write_text(target, build_report(run_dir))
    return target


def summary_table(manifest: dict[str, Any]) -> Table:
    table = Table(title=f"datagen run {manifest.get('name', '')}: {manifest.get('status', '')}")
    for column in ("stage", "in", "out", "dropped", "top drop reasons", "LLM calls", "cache hits", "tokens", "s"):
        table.add_column(column, justify="right" if column not in {"stage", "top drop reasons"} else "left")
    for s in manifest.get("stages", []):
        usage = s.get("llm_usage") or {}
        reasons = ", ".join(f"{k} {v}" for k, v in list((s.get("drop_reasons") or {}).items())[:3])
        table.add_row(
            s["label"] + (" (skipped)" if s.get("skipped") else ""), str(s["in"]), str(s["out"]), str(s["dropped"]),
            reasons, str(sum(u.get("calls", 0) for u in usage.values())),
            str(sum(u.get("cache_hits", 0) for u in usage.values())),
            str(sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage.values())),
            f"{s.get('seconds', 0):.1f}",
        )
    # Where the wall time went besides the stages: export, fine-tuning, and the whole run.
    for label, key in (("export", "export_seconds"), ("finetune", "finetune_seconds"), ("total", "wall_seconds")):
        if key in manifest:
            table.add_row(label, "", "", "", "", "", "", "", f"{manifest[key]:.1f}")
    return table


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="rebuild report.html of a run and print its summary",
                                   description="Write RUN_DIR/report.html (funnel, drop reasons, histograms, "
                                   "samples) and print a summary table.")
    parser.add_argument("run_dir", help="a run directory made by `datagen run`")
    parser.set_defaults(func=_report_cli)


def _report_cli(args: argparse.Namespace) -> int:
    from rich.console import Console

    run_dir = Path(args.run_dir)
    if not (run_dir / "manifest.json").exists():
        raise FileNotFoundError(f"{run_dir}: not a run directory (no manifest.json)")
    path = write_report(run_dir)
    Console().print(summary_table(json.loads((run_dir / "manifest.json").read_text())))
    print(f"report: {path}")
    return 0
