"""What the run directory records besides the data: content hashes for resume, versions,
token usage and cost.

A stage is skipped on rerun when its `done.json` names the same input hash and the same
config hash; that config hash covers what changes answers (stage config, seed, prompt files,
backend identities) and nothing that only changes speed.
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

from datagen import __version__
from datagen.pipeline_config import PipelineConfig, Price, StageSpec
from datagen.records import Record


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_hash(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))


def prompts_hash(prompts_dir: str | None, skip: frozenset[str] = frozenset()) -> str:
    """The bundled prompts and the override folder the stages will really use (the config's
    `prompts_dir`, else `DATAGEN_PROMPTS`): editing either reruns the stages. `skip`: prompts
    owned by stages the run does not have (`registry.prompts_not_rendered`)."""
    import os

    from datagen.prompts import builtin_prompts_dir

    override = prompts_dir or os.environ.get("DATAGEN_PROMPTS")
    digest = hashlib.sha256()
    for folder in [builtin_prompts_dir()] + ([Path(override)] if override else []):
        for path in sorted(Path(folder).glob("*.txt")):
            if path.stem in skip:
                continue
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# Stage config fields that name a backend spec (the teacher, the judge).
_BACKEND_FIELDS = ("llm", "judge")


def backend_identities(cfg: PipelineConfig, specs: list[StageSpec]) -> dict[str, Any]:
    """What each backend the run uses would answer with: endpoint (also one taken from the
    environment), weights, output-changing engine options. Speed settings (concurrency,
    timeouts, retries, rate limits) are left out, so tuning them never reruns a stage."""
    from datagen.llm import backend_facts, parse_spec

    names = {cfg.llm}
    for spec in specs:
        for field_name in _BACKEND_FIELDS:
            value = getattr(spec.config, field_name, None)
            if isinstance(value, str) and value:
                names.add(value)
    identities = {}
    for name in sorted(names):
        backend, _ = parse_spec(name)
        identities[name] = backend_facts(name, cfg.llm_options.get(backend, {})).identity
    return identities


def records_jsonl(records: list[Record]) -> str:
    return "".join(r.model_dump_json() + "\n" for r in records)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"datagen": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "peft", "datasets", "sentence-transformers", "faiss-cpu",
                    "openai", "vllm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def cost_usd(usage: dict[str, Any], prices: dict[str, Price], batch: bool = False) -> float:
    """USD of a stage's calls; openai:* calls sent through the Batch API at its share."""
    total = 0.0
    for spec, stats in usage.items():
        price = prices.get(spec)
        if price:
            usd = stats["prompt_tokens"] / 1e6 * price.input_per_million
            usd += stats["completion_tokens"] / 1e6 * price.output_per_million
            total += usd * (price.batch_share if batch and spec.startswith("openai:") else 1.0)
    return round(total, 6)


def usage_delta(after: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    delta = {}
    for spec, stats in after.items():
        prev = before.get(spec, {})
        entry = {}
        for key, value in stats.items():
            if isinstance(value, dict):
                old = prev.get(key, {})
                entry[key] = {k: v - old.get(k, 0) for k, v in value.items() if v - old.get(k, 0)}
            else:
                entry[key] = value - prev.get(key, 0)
        if entry.get("requests"):
            delta[spec] = entry
    return delta


def sum_usage(stages: list[dict[str, Any]]) -> dict[str, int]:
    total = {"requests": 0, "calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for stage in stages:
        if stage.get("skipped"):
            continue
        for stats in (stage.get("llm_usage") or {}).values():
            for key in total:
                total[key] += int(stats.get(key, 0))
    return total
