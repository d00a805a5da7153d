"""The dataset card: `export/README.md` in the Hugging Face dataset-card layout.

A dataset pushed without a card is a file nobody can judge: where the instructions came from,
which model wrote and which judged the answers, what was thrown away and why. Everything on
the card is read from the run directory (manifest, resolved config, profile cache, prompt
files), so the card of a run is reproducible and says only what the run really did. The YAML
header is what the Hub reads: `configs` names one config per export file so
`datasets.load_dataset(export_dir, name)` loads each layout.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

from datagen import __version__

# Export format -> (data_files inside export/, what a row holds)
CONFIG_FILES: dict[str, tuple[str, str]] = {
    "alpaca": ("alpaca.json", "Alpaca rows: instruction, input, output"),
    "sharegpt": ("sharegpt.jsonl", "ShareGPT rows: conversations [{from, value}]"),
    "messages": ("messages.jsonl", "OpenAI chat rows: messages [{role, content}]"),
    "records": ("records.jsonl", "datagen records with their meta (lineage, scores)"),
}
# Not a `configs` entry: one repo gets one loader (json here), and this folder is for
# `datasets.load_from_disk`; it holds the same rows as the `messages` config.
HF_FOLDER = ("hf_dataset", "`datasets.save_to_disk` folder, messages layout: `datasets.load_from_disk(...)`")
# Backend fields of a stage config (teacher, judge, reward model).
_MODEL_FIELDS = ("llm", "judge", "reward_model")


def size_category(n: int) -> str:
    """The Hub's `size_categories` bucket for n rows."""
    bounds = [(1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
              (10_000_000, "1M<n<10M")]
    return next((label for bound, label in bounds if n < bound), "n>10M")


def card_header(config: dict[str, Any], records: int) -> dict[str, Any]:
    """The YAML metadata block: license and languages as the user set them in `export:`."""
    export = config.get("export") or {}
    formats = [f for f in export.get("formats", []) if f in CONFIG_FILES]
    configs = [{"config_name": fmt, "data_files": [{"split": "train", "path": CONFIG_FILES[fmt][0]}]}
               for fmt in formats]
    if configs:
        configs[0]["default"] = True
    return {
        "license": export.get("license", "other"),
        "language": list(export.get("language") or ["en"]),
        "task_categories": ["text-generation"],
        "size_categories": [size_category(records)],
        "tags": ["synthetic", "datagen", *export.get("tags", [])],
        "pretty_name": export.get("pretty_name") or config.get("name", "datagen dataset"),
        "configs": configs,
    }


def build_card(run_dir: Path, records: int | None = None) -> str:
    """The card's full text for a finished run directory."""
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    stages = manifest.get("stages", [])
    final = records if records is not None else (stages[-1]["out"] if stages else manifest["input"]["records"])
    header = yaml.safe_dump(card_header(config, final), sort_keys=False, allow_unicode=True)
    name = config.get("name", run_dir.name)
    parts = [f"---\n{header}---\n", f"# {name}\n",
             f"Synthetic instruction data made by [datagen](https://example.invalid/datagen) {__version__}: "
             f"{manifest['input']['records']} input records in, {final} records out.\n",
             "## Files\n", "| config | file | rows hold |", "|---|---|---|"]
    for fmt in (config.get("export") or {}).get("formats", []):
        if fmt in CONFIG_FILES:
            parts.append(f"| `{fmt}` | `{CONFIG_FILES[fmt][0]}` | {CONFIG_FILES[fmt][1]} |")
        elif fmt == "hf":
            parts.append(f"| - | `{HF_FOLDER[0]}/` | {HF_FOLDER[1]} |")
    parts += ["", "Load one with `datasets.load_dataset(REPO_OR_FOLDER, \"messages\")`.\n"]
    parts += how_it_was_made(run_dir, config, manifest)
    parts += funnel_section(manifest)
    parts += profile_lines(run_dir, stages)
    parts += decontamination_lines(stages)
    parts += review_lines(manifest)
    parts += ["## Limitations\n",
              "- Every instruction and answer was written by a language model; a judge model, not a person, "
              "scored them (except the records listed under human review). Expect factual errors.",
              "- The filters (dedup, quality heuristics, judge thresholds) remove what they were built to find; "
              "they do not prove what remains is correct, safe or free of bias.",
              "- Check the license terms of the generating models before training on or publishing this data.", ""]
    return "\n".join(parts)


def how_it_was_made(run_dir: Path, config: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """Pipeline YAML, models per role, seed source, prompt file hashes, versions."""
    models: dict[str, set[str]] = {}
    default = config.get("llm", "local")
    for entry in config.get("stages", []):
        ((stage, options),) = entry.items()
        options = options or {}
        models.setdefault(f"{stage} (generator)", set()).add(str(options.get("llm") or default))
        for key in _MODEL_FIELDS[1:]:
            if options.get(key):
                models.setdefault(f"{stage} ({key.replace('_', ' ')})", set()).add(str(options[key]))
    source = (config.get("input") or {}).get("path") or "the bundled 175 Self-Instruct seed tasks"
    lines = ["## How it was made\n",
             f"- datagen {manifest.get('datagen_version', __version__)}; seed {config.get('seed', 0)}; "
             f"input: `{source}` ({manifest['input']['records']} records, sha256 "
             f"`{str(manifest['input'].get('sha256', ''))[:16]}…`)",
             "- models:"]
    lines += [f"  - {role}: `{', '.join(sorted(specs))}`" for role, specs in models.items()] or ["  - none"]
    versions = ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items())
    lines += [f"- library versions: {versions}", "", "Prompt files (sha256, first 16 hex digits):", ""]
    lines += [f"- `{name}`: `{digest}`" for name, digest in prompt_hashes(config.get("prompts_dir")).items()]
    pipeline_yaml = yaml.safe_dump({k: config[k] for k in ("name", "seed", "llm", "input", "stages", "export")
                                    if k in config}, sort_keys=False, allow_unicode=True)
    lines += ["", "The pipeline (resolved, every default written out in the run's `config.yaml`):", "",
              "```yaml", pipeline_yaml.rstrip(), "```", ""]
    return lines


def prompt_hashes(prompts_dir: str | None) -> dict[str, str]:
    """Each prompt file the run used (an override folder's files replace the bundled ones)."""
    import os

    from datagen.prompts import bundled_prompts

    found: dict[str, str] = {}
    override = prompts_dir or os.environ.get("DATAGEN_PROMPTS")
    for files in [bundled_prompts()] + ([sorted(Path(override).glob("*.txt"))] if override else []):
        for file in files:
            found[file.name] = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return found


def funnel_section(manifest: dict[str, Any]) -> list[str]:
    lines = ["## The funnel\n", "| stage | in | kept | dropped | why dropped |", "|---|---|---|---|---|"]
    for s in manifest.get("stages", []):
        why = ", ".join(f"{reason} {count}" for reason, count in (s.get("drop_reasons") or {}).items()) or "-"
        lines.append(f"| {s['label']} | {s['in']} | {s['out']} | {s['dropped']} | {why} |")
    return lines + [""]


def profile_lines(run_dir: Path, stages: list[dict[str, Any]]) -> list[str]:
    """Lengths and diversity of the exported records, from the report's profile cache."""
    path = run_dir / "profile.json"
    if not stages or not path.exists():
        return ["## Length and diversity\n", "Not profiled (run `datagen report RUN_DIR`).", ""]
    profile = (json.loads(path.read_text(encoding="utf-8")).get(stages[-1]["label"]) or {}).get("profile")
    if not profile:
        return ["## Length and diversity\n", "Not profiled.", ""]

    def mean(values: list[float]) -> str:
        return f"{sum(values) / len(values):.1f}" if values else "-"

    verbs = ", ".join(f"{v} {c}" for v, c in list(profile["leading_verbs"].items())[:8])
    return ["## Length and diversity\n",
            f"- mean words: instruction {mean(profile['instruction_words'])}, answer {mean(profile['answer_words'])}",
            f"- distinct-1 / distinct-2: instructions {profile['distinct_1_instruction']} / "
            f"{profile['distinct_2_instruction']}, answers {profile['distinct_1_answer']} / "
            f"{profile['distinct_2_answer']}",
            f"- mean ROUGE-L to the nearest input instruction: {profile.get('rouge_l_to_seed_mean')}",
            f"- mean pairwise cosine: {profile.get('mean_pairwise_cosine')}; clusters: {profile.get('clusters')}",
            f"- leading words ({profile['distinct_leading_verbs']} distinct): {verbs}", ""]


def decontamination_lines(stages: list[dict[str, Any]]) -> list[str]:
    runs = [s for s in stages if s.get("stage") == "decontaminate"]
    if not runs:
        return ["## Decontamination\n", "**Not decontaminated**: no held-out benchmark was checked against this "
                "data. Do not evaluate a model trained on it on a benchmark without checking first.", ""]
    lines = ["## Decontamination\n"]
    for s in runs:
        stats = s.get("stats") or {}
        sets = ", ".join(f"`{x['path']}` ({x['items']} items)" for x in stats.get("held_out_sets", []))
        lines.append(f"- {s['label']}: checked against {sets or 'no set'}; removed {s['dropped']} records "
                     f"({stats.get('ngram_matches', 0)} n-gram, {stats.get('embedding_matches', 0)} embedding matches)")
    return lines + [""]


def review_lines(manifest: dict[str, Any]) -> list[str]:
    review = manifest.get("review")
    if not review:
        return []
    return ["## Human review\n", "Decisions from `review.jsonl` applied to the export: "
            + ", ".join(f"{k} {v}" for k, v in review.items()), ""]


def write_card(run_dir: str | Path) -> Path:
    """Write `export/README.md` for a finished run (atomically)."""
    from datagen.io import atomic_write_text

    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    target = run_dir / "export" / "README.md"
    atomic_write_text(target, build_card(run_dir, manifest.get("export_records")))
    return target
