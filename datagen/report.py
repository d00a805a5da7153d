"""The run report: one self-contained HTML file (plots as inline SVG) plus a terminal table.

Inline SVG keeps the report a single file that opens anywhere, with no plotting dependency.
"""

from __future__ import annotations

import argparse
import html
import json
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from rich import box
from rich.table import Table

from datagen.jsonl import read_jsonl
from datagen.report_dpo import dpo_section
from datagen.report_mix import language_section, tokens_section
from datagen.report_quality import heuristic_drops_section, record_scores, scores_section
from datagen.svg import svg_bars, svg_histogram, svg_intervals, svg_lines
from datagen.unicode_text import html_text, visible_text


def _words(text: str) -> int:
    return len(text.split())


def build_report(run_dir: Path) -> str:
    """The page, rendered from `templates/report/report.html` with autoescape on: record text
    is cut (`cell`) before it is escaped; charts and the older sections arrive as markup that
    `datagen.svg` and the section builders escaped themselves."""
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    stages = manifest.get("stages", [])
    final: list[dict[str, Any]] = []
    if stages:
        final = read_jsonl(run_dir / stages[-1]["label"] / "kept.jsonl")
    labels = ["input"] + [s["label"] for s in stages]
    counts = [manifest.get("input", {}).get("records", 0)] + [s["out"] for s in stages]
    reasons = [(s["label"], reason, count) for s in stages for reason, count in (s.get("drop_reasons") or {}).items()]
    rows = []
    for s in stages:
        usage = (s.get("llm_usage") or {}).values()
        calls = sum(u.get("calls", 0) for u in usage)
        hits = sum(u.get("cache_hits", 0) for u in usage)
        toks = sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage)
        rows.append({**s, "usage_line": f"{calls} calls, {hits} cache hits, {toks} tokens, ${s.get('cost_usd', 0):.4f}"})
    similarity: list[float] = []
    # Only dedup records carry similarities; other stages' files (possibly large) are not read.
    for s in (s for s in stages if s["stage"] == "dedup"):
        for name in ("kept.jsonl", "dropped.jsonl"):
            for r in read_jsonl(run_dir / s["label"] / name):
                for key, value in ((r.get("meta") or {}).get("scores") or {}).items():
                    if isinstance(value, (int, float)) and "sim" in key:
                        similarity.append(float(value))
    # Earlier stages' files are read only when the final records carry no score, to say where they went.
    per_stage = {} if record_scores(final) else {
        s["label"]: record_scores(read_jsonl(run_dir / s["label"] / "kept.jsonl")) for s in stages[:-1]}
    samples = []
    for r in final[:25]:
        meta = r.get("meta") or {}
        scores = ", ".join(f"{k}={v:.3g}" for k, v in (meta.get("scores") or {}).items() if isinstance(v, (int, float)))
        samples.append((r.get("instruction", ""), r.get("input", ""), r.get("output", ""),
                        f"{meta.get('source', '')} {meta.get('evol_op') or ''}".strip(), scores))
    sft = manifest.get("finetune") and manifest["finetune"].get("objective", "sft") == "sft"
    sections = [language_section(final) + tokens_section(stages, len(final)), profile_section(run_dir, stages), decontamination_section(run_dir, stages),
                finetune_section(run_dir, manifest["finetune"]) if sft else "", dpo_section(manifest),
                study_section(run_dir), evaluation_section(run_dir)]
    safe = Markup  # built by datagen.svg and the section functions below, which escape every value
    return _templates().get_template("report.html").render(
        name=manifest.get("name", run_dir.name), status=manifest.get("status", "?"),
        input_records=manifest.get("input", {}).get("records", "?"), final_count=len(final),
        totals=run_totals(stages), funnel=safe(svg_bars(labels, counts, "Funnel: records after each stage")),
        reasons=reasons, stages=rows,
        reasons_chart=safe(svg_bars([f"{s}:{r}" for s, r, _ in reasons], [c for *_, c in reasons],
                                    "Dropped, by stage and reason")) if reasons else "",
        length_charts=safe(svg_histogram([_words(r.get("instruction", "")) for r in final], "Instruction length",
                                         x_label="words per instruction")
                           + svg_histogram([_words(r.get("output", "")) for r in final], "Answer length",
                                           x_label="words per answer")),
        scores=safe(scores_section(final, per_stage, judge_scales(stages))),
        heuristic_drops=safe(heuristic_drops_section(run_dir, stages)),
        similarity_chart=safe(svg_histogram(similarity, "cosine similarity",
                                            x_label="cosine similarity to nearest kept record")),
        samples=samples, sections=safe("".join(sections)))


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("datagen", "templates/report"), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["cell"] = visible_text
    return env


def judge_scales(stages: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    """Score name -> the (low, high) scale its judge used, as the stage declared it: a score of
    4.5 means one thing on 1-5 and another on 1-10, so the report always says which."""
    score_names = {"distill": "judge", "quality": "quality_judge"}
    scales = {}
    for stage in stages:
        scale = (stage.get("stats") or {}).get("judge_scale")
        name = score_names.get(stage.get("stage", ""))
        if name and isinstance(scale, list) and len(scale) == 2:
            scales[name] = (float(scale[0]), float(scale[1]))
    return scales


def run_totals(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """LLM usage and cost of every stage of the run. A stage skipped on a rerun still cost what
    its done.json recorded when it ran; `*_this_run` counts only the stages that ran now."""
    totals = {"calls": 0, "calls_this_run": 0, "cache_hits": 0, "tokens": 0, "cost_usd": 0.0}
    for stage in stages:
        for usage in (stage.get("llm_usage") or {}).values():
            calls = int(usage.get("calls", 0))
            totals["calls"] += calls
            totals["calls_this_run"] += 0 if stage.get("skipped") else calls
            totals["cache_hits"] += int(usage.get("cache_hits", 0))
            totals["tokens"] += int(usage.get("prompt_tokens", 0)) + int(usage.get("completion_tokens", 0))
        totals["cost_usd"] += float(stage.get("cost_usd") or 0.0)
    return totals


FINETUNE_METRICS = ("method", "base_model", "train_examples", "eval_examples", "steps", "epochs_done", "train_tokens",
                    "assistant_tokens", "tokens_per_second", "train_loss", "eval_loss_before", "eval_loss_after",
                    "trainable_params", "total_params", "chat_template_source", "device", "total_seconds")


def finetune_section(run_dir: Path, metrics: dict[str, Any]) -> str:
    """Loss curves per step (train_log.json), before/after eval loss, and base-vs-tuned answers."""
    parts = ["<h2>Fine-tuning</h2>"]
    before, after = metrics.get("eval_loss_before"), metrics.get("eval_loss_after")
    if before is not None or after is not None:
        change = f" ({after - before:+.4f})" if before is not None and after is not None else ""
        parts.append(f"<p>held-out eval loss: before <b>{_num(before)}</b> → after <b>{_num(after)}</b>{change}</p>")
    history = []
    log_path = run_dir / "model" / "train_log.json"
    if log_path.exists():
        history = json.loads(log_path.read_text(encoding="utf-8"))
    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    if before is not None:
        evals = [(0, before), *evals]
    parts.append(svg_lines({"train loss": train, "eval loss": evals}, "Loss per optimizer step", "step", "loss"))
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(metrics[k]))}</td></tr>"
                   for k in FINETUNE_METRICS if metrics.get(k) is not None)
    parts.append(f"<table>{rows}</table>")
    samples = read_jsonl(run_dir / "model" / "samples.jsonl")
    if samples:
        parts.append("<h3>Held-out prompts: base vs tuned</h3><table><tr><th>prompt</th><th>reference</th>"
                     "<th>base model</th><th>tuned model</th></tr>")
        for sample in samples:
            prompt = "\n\n".join(m.get("content", "") for m in sample.get("prompt", []) if m.get("role") == "user")
            parts.append("<tr>" + "".join(f"<td>{html_text(x, 800)}</td>" for x in (
                prompt, sample.get("reference", ""), sample.get("base", ""), sample.get("tuned", ""))) + "</tr>")
        parts.append("</table>")
    return "".join(parts)


def evaluation_section(run_dir: Path) -> str:
    """The `eval.json` of the run: win-rates with intervals, lengths, length-controlled rates, losses."""
    path = run_dir / "eval" / "eval.json"
    if not path.exists():
        return ""
    report = json.loads(path.read_text(encoding="utf-8"))
    if report.get("data") is None:  # pairs only: no prompts were answered or judged
        return "<h2>Evaluation</h2>" + pair_accuracy_html(report)
    parts = [f"<h2>Evaluation</h2><p>{report['prompts']} held-out prompts from "
             f"<code>{html.escape(str(report['data']))}</code> ({report['with_reference']} with a reference answer), "
             f"judge <code>{html.escape(str(report['judge']))}</code>, each pair judged in both orders (a verdict "
             "that flips with the order counts as a tie).</p>"]
    contamination = report.get("contamination") or {}
    if contamination.get("status") != "decontaminated":
        parts.append("<p style='color:#b00;font-weight:bold'>Warning: the training data was not checked against "
                     f"this held-out set (status: {html.escape(str(contamination.get('status')))}); add a "
                     "decontaminate stage with it, or these win-rates may be inflated.</p>")
    parts.append("<table><tr><th>first vs second</th><th>win-rate</th><th>95 % CI</th><th>length-controlled</th>"
                 "<th>wins / ties / losses</th><th>order flips</th><th>unjudged</th><th>mean words (first / second)"
                 "</th></tr>")
    chart = []
    for pair in report.get("pairs", []):
        low, high = pair.get("ci95") or [None, None]
        parts.append(f"<tr><td>{html.escape(pair['first'])} vs {html.escape(pair['second'])}</td>"
                     f"<td>{_num(pair.get('win_rate'), 3)}</td><td>[{_num(low, 3)}, {_num(high, 3)}]</td>"
                     f"<td>{_num(pair.get('lc_win_rate'), 3)}</td>"
                     f"<td>{pair['wins']} / {pair['ties']} / {pair['losses']}</td><td>{pair['order_inconsistent']}</td>"
                     f"<td>{pair['unjudged']}</td><td>{pair['words_first']:.0f} / {pair['words_second']:.0f}</td></tr>")
        if pair.get("win_rate") is not None and low is not None:
            chart.append((f"{_tail(pair['first'])} vs {_tail(pair['second'])}", pair["win_rate"], low, high))
    parts.append("</table>")
    parts.append(svg_intervals(chart, "Win-rates"))
    if report.get("loss"):
        parts.append("<h3>Teacher-forced loss on the reference answers</h3><table><tr><th>model</th><th>loss</th>"
                     "<th>perplexity</th><th>tokens</th></tr>")
        for spec, loss in report["loss"].items():
            parts.append(f"<tr><td>{html.escape(spec)}</td><td>{_num(loss.get('loss'))}</td>"
                         f"<td>{_num(loss.get('perplexity'), 3)}</td><td>{loss.get('tokens')}</td></tr>")
        parts.append("</table>")
    parts.append(pair_accuracy_html(report))
    return "".join(parts)


def pair_accuracy_html(report: dict[str, Any]) -> str:
    """eval.json's `preference`: each model's held-out pair accuracy by implicit reward, against
    the eval's reference model and (a DPO step) against its own start model."""
    rows = []
    for spec, entry in (report.get("preference") or {}).items():
        measured = entry.get("implicit_reward")
        if measured is not None:
            rows.append((spec, measured["reference"], measured["pairs"], measured["pair_accuracy"],
                         measured["reward_margin"]))
        if entry.get("held_out_pair_accuracy") is not None:
            rows.append((spec, "its start model (DPO step)", entry.get("eval_pairs"), entry["held_out_pair_accuracy"],
                         entry.get("held_out_reward_margin")))
    if not rows:
        return ""
    body = "".join(f"<tr><td>{html.escape(str(spec))}</td><td>{html.escape(str(against))}</td><td>{pairs}</td>"
                   f"<td>{_num(accuracy, 3)}</td><td>{_num(margin, 3)}</td></tr>"
                   for spec, against, pairs, accuracy, margin in rows)
    return ("<h3>Held-out pair accuracy (chosen preferred by the implicit reward)</h3><table><tr><th>model</th>"
            "<th>against</th><th>pairs</th><th>held-out pair accuracy</th><th>mean reward margin</th></tr>"
            f"{body}</table>")


def study_section(run_dir: Path) -> str:
    """`datagen study`: base, raw and curated side by side in one table."""
    path = run_dir / "study" / "study.json"
    if not path.exists():
        return ""
    study = json.loads(path.read_text(encoding="utf-8"))
    parts = ["<h2>Study: curated vs raw</h2>"]
    if study.get("smoke_run"):
        parts.append("<p style='color:#a60;font-weight:bold'>Smoke run (embedded model and/or no GPU): these numbers "
                     "only show that the machinery works; they say nothing about curation.</p>")
    parts.append(f"<p>raw pool: the {study['raw_pool']} records kept by <code>{html.escape(study['raw_stage'])}</code>, "
                 f"subsampled to the curated subset's {study['curated_tokens']} training tokens.</p>")
    others = ["base", "raw", "reference"]
    parts.append("<table><tr><th>model</th><th>training records</th><th>training tokens</th><th>loss on references"
                 "</th>" + "".join(f"<th>win-rate vs {o} [95 % CI] (length-controlled)</th>" for o in others) + "</tr>")
    for row in study["table"]:
        cells = []
        for other in others:
            entry = row.get(f"vs_{other}")
            cells.append("-" if not entry else f"{_num(entry['win_rate'], 3)} [{_num(entry['ci95'][0], 3)}, "
                         f"{_num(entry['ci95'][1], 3)}] ({_num(entry['lc_win_rate'], 3)})")
        parts.append(f"<tr><td>{html.escape(row['model'])}</td><td>{row.get('records') or '-'}</td>"
                     f"<td>{row.get('tokens') or '-'}</td><td>{_num(row.get('loss'))}</td>"
                     + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</table>")
    return "".join(parts)


def decontamination_section(run_dir: Path, stages: list[dict[str, Any]]) -> str:
    """Every record a decontaminate stage dropped, next to the held-out item it matched."""
    parts = []
    for stage in (s for s in stages if s.get("stage") == "decontaminate"):
        stats = stage.get("stats") or {}
        sets = ", ".join(f"{html.escape(x['path'])} ({x['items']})" for x in stats.get("held_out_sets", []))
        parts.append(f"<h2>Decontamination ({html.escape(stage['label'])})</h2><p>held-out sets: {sets}; "
                     f"{stats.get('ngram_matches', 0)} n-gram matches ({stats.get('ngram')}-grams), "
                     f"{stats.get('embedding_matches', 0)} embedding matches</p>")
        matches = read_jsonl(run_dir / stage["label"] / "dropped.jsonl")
        if matches:
            parts.append("<table><tr><th>how</th><th>training record</th><th>held-out item</th></tr>")
            for r in matches[:200]:
                d = (r.get("meta") or {}).get("drop_detail") or {}
                how = f"{d.get('method', '')} on {d.get('field', '')}"
                if d.get("ngram"):
                    how += f": “{d['ngram']}”"
                if d.get("similarity") is not None:
                    how += f" (cosine {d['similarity']:.3f})"
                held = d.get("held_out_prompt", "") + ("\n\n→ " + d["held_out_reference"]
                                                      if d.get("held_out_reference") else "")
                parts.append(f"<tr><td>{html.escape(how)}</td><td>{html.escape(d.get('text', ''))}</td>"
                             f"<td>{html.escape(held)}</td></tr>")
            parts.append("</table>")
    return "".join(parts)


def run_profiles(run_dir: Path, stages: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The dataset profile of the run's input and of each stage's kept records, cached in
    `profile.json` by each stage's output hash so `datagen report` does not re-embed."""
    from datagen.io import atomic_write_text, read_records
    from datagen.profile import profile_records

    cache_path = run_dir / "profile.json"
    cache = json.loads(cache_path.read_text(encoding="utf-8")) if cache_path.exists() else {}
    inputs = _run_inputs(run_dir)
    seeds = [r.instruction for r in inputs]
    wanted = [("input", (json.loads((run_dir / "manifest.json").read_text()).get("input") or {}).get("sha256"))]
    wanted += [(s["label"], s.get("output_hash")) for s in stages]
    profiles: dict[str, dict[str, Any]] = {}
    for label, digest in wanted:
        cached = cache.get(label)
        if cached and digest and cached.get("hash") == digest:
            profiles[label] = cached["profile"]
            continue
        if label == "input":
            records, against = inputs, []
        else:
            path = run_dir / label / "kept.jsonl"
            if not path.exists():
                continue
            records, against = read_records(path), seeds
        try:
            profiles[label] = profile_records(records, against)
        except (RuntimeError, OSError) as exc:  # no embedding model: profile without the spread
            profiles[label] = profile_records(records, against, embed=False) | {"embed_error": str(exc)[:200]}
        cache[label] = {"hash": digest, "profile": profiles[label]}
    atomic_write_text(cache_path, json.dumps(cache))
    return profiles


def _run_inputs(run_dir: Path) -> list[Any]:
    """The records the run started from (what ROUGE-L novelty is measured against), if still readable."""
    import yaml

    from datagen.io import default_seeds_path, read_records

    config_path = run_dir / "config.yaml"
    config = yaml.safe_load(config_path.read_text(encoding="utf-8")) if config_path.exists() else {}
    source = ((config or {}).get("input") or {})
    path = Path(source["path"]) if source.get("path") else default_seeds_path()
    if not path.exists():
        return []
    try:
        records = read_records(path, Counter() if source.get("repair_unicode") else None)
    except ValueError:
        return []
    return records[: source.get("limit")] if source.get("limit") else records


def profile_section(run_dir: Path, stages: list[dict[str, Any]]) -> str:
    if not stages:
        return ""
    profiles = run_profiles(run_dir, stages)
    parts = ["<h2>Dataset profile</h2><p>Per stage (kept records). ROUGE-L: F1 of each instruction to the most "
             "similar instruction of the run's input (lower = newer). Distinct-n: unique word n-grams / all n-grams. "
             "Spread: mean cosine between all pairs of embedded records (lower = more varied) and the clusters a "
             "greedy pass at cosine 0.6 finds.</p><table><tr><th>stage</th><th>records</th><th>distinct-1 / -2 "
             "instructions</th><th>distinct-1 / -2 answers</th><th>mean ROUGE-L to input</th><th>mean pairwise "
             "cosine</th><th>clusters</th><th>leading verbs (distinct)</th><th>top leading verbs</th><th>mean words "
             "instruction / answer</th><th>mean scores</th></tr>"]
    for label, p in profiles.items():
        top = ", ".join(f"{verb} {count}" for verb, count in list(p["leading_verbs"].items())[:6])
        scores = ", ".join(f"{key} {_mean(values):.2f} (n={len(values)})" for key, values in sorted(p["scores"].items()))
        parts.append(f"<tr><td>{html.escape(label)}</td><td>{p['records']}</td>"
                     f"<td>{p['distinct_1_instruction']:.3f} / {p['distinct_2_instruction']:.3f}</td>"
                     f"<td>{p['distinct_1_answer']:.3f} / {p['distinct_2_answer']:.3f}</td>"
                     f"<td>{_num(p['rouge_l_to_seed_mean'], 3)}</td><td>{_num(p['mean_pairwise_cosine'], 3)}</td>"
                     f"<td>{p['clusters'] if p['clusters'] is not None else '-'}</td>"
                     f"<td>{p['distinct_leading_verbs']}</td><td>{html.escape(top)}</td>"
                     f"<td>{_mean(p['instruction_words']):.1f} / {_mean(p['answer_words']):.1f}</td>"
                     f"<td>{html.escape(scores)}</td></tr>")
    parts.append("</table>")
    parts += [_dialogue_line(label, p) for label, p in profiles.items() if p.get("turns_per_dialogue")]
    final = profiles.get(stages[-1]["label"])
    if final:
        parts.append("<h3>Export</h3>")
        parts.append(svg_histogram(final["rouge_l_to_seed"], "ROUGE-L to the nearest input instruction",
                                   x_label="ROUGE-L F1 to the most similar input instruction"))
        verbs = list(final["leading_verbs"].items())[:15]
        parts.append(svg_bars([v for v, _ in verbs], [c for _, c in verbs], "Leading words of the instructions"))
    return "".join(parts)


def _dialogue_line(label: str, p: dict[str, Any]) -> str:
    """Dialogues of a stage: turns per dialogue, personas, and with vs without personas."""
    text = f"{label}: " + ", ".join(f"{k} turns: {n}" for k, n in p["turns_per_dialogue"].items())
    text += f"; {p['personas']} distinct personas" if p.get("personas") else ""
    text += "".join(f"; {g.replace('_', ' ')}: {r['distinct_leading_verbs']} leading verbs, mean cosine "
                    f"{_num(r.get('mean_pairwise_cosine'), 3)}" for g, r in (p.get("persona_diversity") or {}).items())
    return f"<p>{html.escape(text)}</p>"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _num(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{float(value):.{digits}f}"


def _tail(spec: str, keep: int = 24) -> str:
    return spec if len(spec) <= keep else "…" + spec[-keep + 1 :]


def write_report(run_dir: str | Path) -> Path:
    from datagen.io import atomic_write_text

    run_dir = Path(run_dir)
    target = run_dir / "report.html"
    atomic_write_text(target, build_report(run_dir))
    return target


def summary_table(manifest: dict[str, Any]) -> Table:
    """The end-of-run table, one line per stage at 80 columns: drop reasons appear as short
    codes (`tr 6`) explained in the caption, so a long reason never wraps a row into four."""
    stages = manifest.get("stages", [])
    codes = reason_codes([reason for s in stages for reason in (s.get("drop_reasons") or {})])
    table = Table(title=f"datagen run {manifest.get('name', '')}: {manifest.get('status', '')}",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for column in ("stage", "in", "out", "drop", "why", "calls", "cached", "tokens", "sec"):
        text = column in {"stage", "why"}
        table.add_column(column, justify="left" if text else "right", no_wrap=True, overflow="ellipsis",
                         min_width=None if text else len(column), max_width=18 if column == "why" else None)
    for s in stages:
        usage = s.get("llm_usage") or {}
        top = sorted((s.get("drop_reasons") or {}).items(), key=lambda kv: -kv[1])[:3]
        table.add_row(
            s["label"] + (" (skip)" if s.get("skipped") else ""), str(s["in"]), str(s["out"]), str(s["dropped"]),
            " ".join(f"{codes[k]} {v}" for k, v in top), str(sum(u.get("calls", 0) for u in usage.values())),
            str(sum(u.get("cache_hits", 0) for u in usage.values())),
            str(sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in usage.values())),
            f"{s.get('seconds', 0):.0f}",
        )
    # Where the wall time went besides the stages: export, fine-tuning, and the whole run.
    for label, key in (("export", "export_seconds"), ("finetune", "finetune_seconds"), ("eval", "eval_seconds"),
                       ("total", "wall_seconds")):
        if key in manifest:
            table.add_row(label, "", "", "", "", "", "", "", f"{manifest[key]:.0f}")
    if codes:
        table.caption = "key: " + ", ".join(f"{code} = {reason}" for reason, code in codes.items())
    return table


def reason_codes(reasons: list[str]) -> dict[str, str]:
    """A short, unique code per drop reason: initials of its words (`truncated_output` -> `to`),
    lengthened by letters of the last word where two reasons would share one."""
    codes: dict[str, str] = {}
    for reason in dict.fromkeys(reasons):
        words = [w for w in reason.split("_") if w] or [reason]
        code = "".join(w[0] for w in words)
        extra = 1
        while code in codes.values():
            code = "".join(w[0] for w in words[:-1]) + words[-1][: 1 + extra] if extra < len(words[-1]) else code + "x"
            extra += 1
        codes[reason] = code
    return codes


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
