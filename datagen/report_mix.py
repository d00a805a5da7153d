"""Two small report sections: the language mix of the final records, and what each stage's LLM
calls cost per exported record (the quickstart's budget is spent where this table says)."""

from __future__ import annotations

import html
from typing import Any

from datagen.languages import language_mix


def language_section(final: list[dict[str, Any]]) -> str:
    """Final records by the language of their instruction (`datagen.languages`: by script, then
    common words; `und` = too short to tell)."""
    if not final:
        return ""
    mix = language_mix([str(r.get("instruction", "")) for r in final])
    rows = "".join(f"<tr><td>{html.escape(lang)}</td><td>{count}</td><td>{count / len(final):.0%}</td></tr>"
                   for lang, count in mix.items())
    return ("<h2>Languages (final records' instructions)</h2><table><tr><th>language</th><th>records</th>"
            f"<th>share</th></tr>{rows}</table>")


def tokens_per_record(stages: list[dict[str, Any]], exported: int) -> list[dict[str, Any]]:
    """Per stage: prompt and generated tokens of its LLM calls (cache hits cost nothing), and
    both per exported record."""
    rows = []
    for stage in stages:
        usage = (stage.get("llm_usage") or {}).values()
        prompt = sum(int(u.get("prompt_tokens", 0)) for u in usage)
        generated = sum(int(u.get("completion_tokens", 0)) for u in usage)
        if prompt or generated:
            rows.append({"stage": stage["label"], "prompt_tokens": prompt, "generated_tokens": generated,
                         "prompt_per_record": prompt / max(1, exported),
                         "generated_per_record": generated / max(1, exported)})
    return rows


def tokens_section(stages: list[dict[str, Any]], exported: int) -> str:
    rows = tokens_per_record(stages, exported)
    if not rows or not exported:
        return ""
    body = "".join(f"<tr><td>{html.escape(r['stage'])}</td><td>{r['prompt_tokens']}</td><td>{r['generated_tokens']}"
                   f"</td><td>{r['prompt_per_record']:.0f}</td><td>{r['generated_per_record']:.0f}</td></tr>"
                   for r in rows)
    return (f"<h2>Tokens per exported record ({exported} records)</h2><table><tr><th>stage</th><th>prompt tokens"
            "</th><th>generated tokens</th><th>prompt / record</th><th>generated / record</th></tr>"
            f"{body}</table>")
