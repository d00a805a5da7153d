"""One YAML file runs the whole job: generate → evolve → distill → dedup → filter → fine-tune.

The run directory is the unit of resume. Each stage writes `kept.jsonl`, `dropped.jsonl` and
last a `done.json` naming the hash of its input and of its config; on rerun a stage whose
marker matches is skipped, and an interrupted stage re-runs through the LLM cache, so no
finished call is paid twice. Every file is written atomically (temp + rename).
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import importlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datagen import __version__, faults
from datagen.errors import DatagenError, StageFailed, check_error_rate
from datagen.ray_cluster import Executor, RayConfig
from datagen.records import Record, StageResult

# stage name -> (module, config class). Aliases let YAML use the CLI's verbs too.
STAGES: dict[str, tuple[str, str]] = {
    "self_instruct": ("datagen.stages.self_instruct", "SelfInstructConfig"),
    "evol_instruct": ("datagen.stages.evol_instruct", "EvolConfig"),
    "distill": ("datagen.stages.distill", "DistillConfig"),
    "dedup": ("datagen.stages.dedup", "DedupConfig"),
    "quality": ("datagen.stages.quality", "QualityConfig"),
    "decontaminate": ("datagen.stages.decontaminate", "DecontaminateConfig"),
}
ALIASES = {"evolve": "evol_instruct", "filter": "quality", "self-instruct": "self_instruct"}
EXPORT_FORMATS = ("alpaca", "sharegpt", "messages", "records", "hf")


def stage_config_class(stage: str) -> type[BaseModel]:
    module_name, class_name = STAGES[stage]
    return getattr(importlib.import_module(module_name), class_name)


class Price(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input_per_million: float = Field(0.0, description="USD per 1M prompt tokens")
    output_per_million: float = Field(0.0, description="USD per 1M completion tokens")
    batch_share: float = Field(0.5, ge=0, description="share of these prices the Batch API charges")


class InputConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str | None = Field(
        None,
        description="records to start from: Self-Instruct seeds, Alpaca, ShareGPT, messages, parquet, HF folder; "
        "default: the bundled 175 seed tasks",
    )
    limit: int | None = Field(None, description="use only the first N records (handy for a dry run)")


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formats: list[str] = Field(default_factory=lambda: ["alpaca", "sharegpt", "messages", "hf"])


class StageSpec(BaseModel):
    """One entry of `stages:`; `name` is the stage kind, `config` its validated options."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    label: str
    config: Any


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field("run", description="run name; the run directory defaults to runs/<name>")
    seed: int = Field(0, description="same seed + same inputs + same cache -> same dataset")
    llm: str = Field("local", description="default backend for every stage: local, openai:MODEL, vllm:MODEL")
    llm_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="per-backend options, e.g. {openai: {base_url: ..., max_concurrency: 64}}; keys come from env",
    )
    prices: dict[str, Price] = Field(default_factory=dict, description="backend spec -> USD per 1M tokens")
    budget_usd: float | None = Field(
        None, ge=0, description="spending cap of this run directory in USD (all runs of it together); needs prices"
    )
    prompts_dir: str | None = Field(None, description="folder whose *.txt override the bundled prompts")
    max_error_rate: float = Field(
        0.02, ge=0, le=1,
        description="a stage whose failed LLM requests exceed this share fails (not marked done); "
        "a rerun re-sends only the failed calls",
    )
    input: InputConfig = Field(default_factory=InputConfig)
    stages: list[dict[str, Any]] = Field(default_factory=list)
    export: ExportConfig = Field(default_factory=ExportConfig)
    executor: Executor = Field("local", description="local: this process; ray: record-parallel LLM calls and "
                               "embeddings on a Ray cluster (never changes the data, so not in any stage hash)")
    ray: RayConfig = Field(default_factory=RayConfig, description="cluster address and pool sizes for executor: ray")
    finetune: dict[str, Any] | None = Field(None, description="FinetuneConfig options; omit to skip training")
    eval: dict[str, Any] | None = Field(
        None, description="EvalConfig options: judge the tuned model against the base on held-out data after training"
    )

    def stage_specs(self) -> list[StageSpec]:
        specs, seen = [], {}
        for entry in self.stages:
            ((raw_name, options),) = entry.items()
            name = ALIASES.get(raw_name, raw_name)
            seen[name] = seen.get(name, 0) + 1
            label = name if seen[name] == 1 else f"{name}_{seen[name]}"
            specs.append(StageSpec(name=name, label=label, config=stage_config_class(name).model_validate(options or {})))
        return specs


class ConfigError(ValueError):
    """A config problem, already phrased as `file: where: what is wrong`."""


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(options))})"


def _check_keys(data: Any, model: type[BaseModel], where: str, source: str) -> None:
    """Unknown keys get a message naming the key and the closest real one, before pydantic."""
    if not isinstance(data, dict):
        return
    fields = model.model_fields
    for key, value in data.items():
        if key not in fields:
            if model.model_config.get("extra") == "forbid":
                raise ConfigError(f"{source}: {where}{key}: unknown key{_suggest(str(key), list(fields))}")
            continue
        annotation = fields[key].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            _check_keys(value, annotation, f"{where}{key}.", source)


def _format_validation(exc: ValidationError, where: str, source: str) -> ConfigError:
    first = exc.errors()[0]
    loc = ".".join(str(x) for x in first["loc"])
    return ConfigError(f"{source}: {where}{loc}: {first['msg']} (got {first.get('input')!r})")


def validate_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of keys")
    _check_keys(data, PipelineConfig, "", source)
    for backend, options in (data.get("llm_options") or {}).items():
        if isinstance(options, dict) and "api_key" in options:
            raise ConfigError(
                f"{source}: llm_options.{backend}.api_key: keys never go in a config file "
                "(it is copied into the run directory); set OPENAI_API_KEY instead"
            )
    stages = data.get("stages") or []
    if not isinstance(stages, list):
        raise ConfigError(f"{source}: stages: must be a list like [- self_instruct: {{...}}]")
    for index, entry in enumerate(stages):
        if isinstance(entry, str):
            entry = {entry: {}}
            stages[index] = entry
        if not isinstance(entry, dict) or len(entry) != 1:
            raise ConfigError(f"{source}: stages[{index}]: each stage is one `name: {{options}}` mapping")
        ((raw_name, options),) = entry.items()
        name = ALIASES.get(raw_name, raw_name)
        if name not in STAGES:
            raise ConfigError(f"{source}: stages[{index}]: unknown stage {raw_name!r}{_suggest(str(raw_name), list(STAGES))}")
        cls = stage_config_class(name)
        _check_keys(options or {}, cls, f"stages[{index}].{raw_name}.", source)
        try:
            cls.model_validate(options or {})
        except ValidationError as exc:
            raise _format_validation(exc, f"stages[{index}].{raw_name}.", source) from None
    if data.get("finetune") is not None:
        from datagen.plugins import plugin

        FinetuneConfig = plugin("finetune").FinetuneConfig  # noqa: N806 - a class, as imported
        _check_keys(data["finetune"], FinetuneConfig, "finetune.", source)
        try:
            FinetuneConfig.model_validate(data["finetune"])
        except ValidationError as exc:
            raise _format_validation(exc, "finetune.", source) from None
    if data.get("eval") is not None:
        from datagen.eval import validate_pipeline_eval

        validate_pipeline_eval(data, source)
    for fmt in (data.get("export") or {}).get("formats", []) or []:
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(f"{source}: export.formats: unknown format {fmt!r}{_suggest(str(fmt), list(EXPORT_FORMATS))}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise _format_validation(exc, "", source) from None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set a.b=value`; a stage is addressed by name: `stages.distill.n=4`. Values are YAML."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. stages.distill.n=4")
        dotted, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        parts = dotted.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                matches = [e for e in node if isinstance(e, dict) and ALIASES.get(next(iter(e)), next(iter(e))) ==
                           ALIASES.get(part, part)]
                if not matches:
                    raise ConfigError(f"--set {dotted}: no stage named {part!r} in this pipeline")
                entry = matches[0]
                key = next(iter(entry))
                if entry[key] is None:
                    entry[key] = {}
                node = entry[key]
                continue
            if part == "stages" and depth == 0:
                node = node.setdefault("stages", [])
                continue
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return data


# ---------------------------------------------------------------- hashing & files


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_hash(obj: Any) -> str:
    return sha256_bytes(json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))


def _prompts_hash(prompts_dir: str | None) -> str:
    """The bundled prompts and the override folder the stages will really use (the config's
    `prompts_dir`, else `DATAGEN_PROMPTS`): editing either reruns the stages."""
    import os

    from datagen.prompts import builtin_prompts_dir

    override = prompts_dir or os.environ.get("DATAGEN_PROMPTS")
    digest = hashlib.sha256()
    for folder in [builtin_prompts_dir()] + ([Path(override)] if override else []):
        for path in sorted(Path(folder).glob("*.txt")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# Stage config fields that name a backend spec (the teacher, the judge).
_BACKEND_FIELDS = ("llm", "judge")


def _backend_identities(cfg: PipelineConfig, specs: list[StageSpec]) -> dict[str, Any]:
    """What each backend the run uses would answer with: endpoint (also one taken from the
    environment), weights, output-changing engine options. Speed settings (concurrency,
    timeouts, retries, rate limits) are left out, so tuning them never reruns a stage."""
    from datagen.llm import make_backend, parse_spec

    names = {cfg.llm}
    for spec in specs:
        for field_name in _BACKEND_FIELDS:
            value = getattr(spec.config, field_name, None)
            if isinstance(value, str) and value:
                names.add(value)
    identities = {}
    for name in sorted(names):
        backend, _ = parse_spec(name)
        inner = make_backend(name, **cfg.llm_options.get(backend, {}))
        identities[name] = inner.cache_identity() if hasattr(inner, "cache_identity") else {}
    return identities


def _records_jsonl(records: list[Record]) -> str:
    return "".join(r.model_dump_json() + "\n" for r in records)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"datagen": __version__, "python": platform.python_version()}
    for package in ("torch", "transformers", "trl", "peft", "datasets", "sentence-transformers", "faiss-cpu",
                    "openai", "vllm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _cost(usage: dict[str, Any], prices: dict[str, Price], batch: bool = False) -> float:
    """USD of a stage's calls; openai:* calls sent through the Batch API at its share."""
    total = 0.0
    for spec, stats in usage.items():
        price = prices.get(spec)
        if price:
            usd = stats["prompt_tokens"] / 1e6 * price.input_per_million
            usd += stats["completion_tokens"] / 1e6 * price.output_per_million
            total += usd * (price.batch_share if batch and spec.startswith("openai:") else 1.0)
    return round(total, 6)


def _usage_delta(after: dict[str, dict[str, Any]], before: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
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


# ---------------------------------------------------------------- running


@dataclass
class StageOutcome:
    label: str
    kept: int
    dropped: int
    skipped: bool
    seconds: float
    drop_reasons: dict[str, int] = field(default_factory=dict)


@dataclass
class RunResult:
    run_dir: Path
    records: list[Record]
    stages: list[StageOutcome]
    manifest: dict[str, Any]


class Pipeline:
    def __init__(self, config: PipelineConfig, source: str = "config", base_dir: Path | None = None):
        self.config = config
        self.source = source
        self.base_dir = base_dir or Path.cwd()

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> Pipeline:
        from datagen.bundled import resolve_pipeline

        path = resolve_pipeline(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        data = apply_overrides(data, overrides or [])
        return cls(validate_config(data, source=str(path)), source=str(path), base_dir=path.parent)

    def _resolve(self, raw: str) -> Path:
        """Relative paths: from the cwd, then next to the YAML, then inside the package (seeds)."""
        candidate = Path(raw)
        if candidate.is_absolute() or candidate.exists():
            return candidate
        for base in (self.base_dir, Path(__file__).resolve().parent.parent):
            if (base / raw).exists():
                return base / raw
        if raw.startswith("seeds/"):
            from datagen.io import default_seeds_path

            return default_seeds_path()
        raise FileNotFoundError(f"{self.source}: input.path: {raw}: no such file")

    def _load_input(self) -> tuple[list[Record], str]:
        from datagen.io import default_seeds_path, read_records

        path = self._resolve(self.config.input.path) if self.config.input.path else default_seeds_path()
        records = read_records(path)
        if self.config.input.limit:
            records = records[: self.config.input.limit]
        return records, sha256_bytes(_records_jsonl(records).encode("utf-8"))

    def run(self, run_dir: str | Path | None = None, progress: bool = True) -> RunResult:
        from datagen.io import atomic_write_text, read_records
        from datagen.llm import ResponseCache
        from datagen.llm.budget import BudgetExceeded, make_budget, rates
        from datagen.stages.context import StageContext

        cfg = self.config
        run_started = time.perf_counter()
        run_dir = Path(run_dir or Path("runs") / cfg.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        records, input_hash = self._load_input()
        say = _Console(progress)
        say.header(f"datagen run {cfg.name}: {len(records)} input records → {run_dir}")

        llm_options = {k: dict(v) for k, v in cfg.llm_options.items()}
        cache = ResponseCache(run_dir / "llm_cache.sqlite")
        budget = make_budget(cfg.budget_usd, cache, cfg.prices)
        if budget is not None:
            say.stage(0, 0, "budget", budget.line().removeprefix("budget: ") + " (earlier runs of this directory included)")
        ctx = StageContext(
            llm_spec=cfg.llm,
            cache=cache,
            budget=budget,
            prices=rates(cfg.prices),
            seed=cfg.seed,
            progress=progress,
            prompts_dir=Path(cfg.prompts_dir) if cfg.prompts_dir else None,
            llm_options=llm_options,
            executor=cfg.executor,
            ray_config=cfg.ray,
        )
        specs = cfg.stage_specs()
        global_hash = _json_hash({"seed": cfg.seed, "llm": cfg.llm, "prompts": _prompts_hash(cfg.prompts_dir),
                                  "backends": _backend_identities(cfg, specs)})
        manifest: dict[str, Any] = {
            "name": cfg.name,
            "datagen_version": __version__,
            "versions": _versions(),
            "config_hash": _json_hash(cfg.model_dump(mode="json")),
            "input": {"records": len(records), "sha256": input_hash},
            "stages": [],
            "status": "running",
        }
        outcomes: list[StageOutcome] = []
        self._write_manifest(run_dir, manifest)
        try:
            for number, spec in enumerate(specs, start=1):
                stage_dir = run_dir / spec.label
                config_json = spec.config.model_dump(mode="json")
                stage_hash = _json_hash({"stage": spec.name, "config": config_json, "global": global_hash})
                marker = stage_dir / "done.json"
                if marker.exists():
                    done = json.loads(marker.read_text())
                    if done.get("input_hash") == input_hash and done.get("config_hash") == stage_hash:
                        records = read_records(stage_dir / "kept.jsonl")
                        say.stage(number, len(specs), spec.label, f"skipped: finished before ({len(records)} kept)")
                        manifest["stages"].append({**done, "skipped": True})
                        outcomes.append(StageOutcome(spec.label, done["out"], done["dropped"], True, 0.0,
                                                     done.get("drop_reasons", {})))
                        input_hash = done["output_hash"]
                        continue
                    marker.unlink()  # stale: inputs or config changed
                say.stage(number, len(specs), spec.label, f"{len(records)} records in")
                module = importlib.import_module(STAGES[spec.name][0])
                usage_before = ctx.usage()
                started = time.perf_counter()
                result: StageResult = module.run(records, ctx, spec.config)
                seconds = time.perf_counter() - started
                usage = _usage_delta(ctx.usage(), usage_before)
                kept_text = _records_jsonl(result.kept)
                atomic_write_text(stage_dir / "kept.jsonl", kept_text)
                atomic_write_text(stage_dir / "dropped.jsonl", _records_jsonl(result.dropped))
                try:
                    check_error_rate(spec.label, usage, cfg.max_error_rate)
                except StageFailed:
                    manifest["stages"].append({"label": spec.label, "stage": spec.name, "status": "failed",
                                               "llm_usage": usage, "drop_reasons": result.drop_counts()})
                    raise
                output_hash = sha256_bytes(kept_text.encode("utf-8"))
                done = {
                    "stage": spec.name,
                    "label": spec.label,
                    "input_hash": input_hash,
                    "config_hash": stage_hash,
                    "output_hash": output_hash,
                    "in": len(records),
                    "out": len(result.kept),
                    "dropped": len(result.dropped),
                    "drop_reasons": result.drop_counts(),
                    "stats": result.stats,
                    "llm_usage": usage,
                    "cost_usd": _cost(usage, cfg.prices, batch=bool(cfg.llm_options.get("openai", {}).get("batch"))),
                    "seconds": round(seconds, 3),
                    "config": config_json,
                }
                atomic_write_text(marker, json.dumps(done, indent=2, ensure_ascii=False, default=str))
                manifest["stages"].append({**done, "skipped": False})
                self._write_manifest(run_dir, manifest)
                outcomes.append(StageOutcome(spec.label, len(result.kept), len(result.dropped), False, seconds,
                                             result.drop_counts()))
                say.stage_done(spec.label, len(records), len(result.kept), result.drop_counts(), seconds)
                faults.at_point(f"after_stage:{spec.label}")
                records, input_hash = result.kept, output_hash
        except BudgetExceeded:
            manifest["status"] = "budget_exhausted"  # the stage has no done.json: a rerun resumes it
            manifest["budget"] = {"cap_usd": budget.cap if budget else None, "spent_usd": budget.spent if budget else None}
            self._write_manifest(run_dir, manifest)
            ctx.close()
            raise
        except BaseException as exc:
            manifest["status"] = "failed" if isinstance(exc, DatagenError) else "interrupted"
            if isinstance(exc, DatagenError):
                manifest["error"] = str(exc)
            self._write_manifest(run_dir, manifest)
            ctx.close()
            raise
        ctx.close()

        started = time.perf_counter()
        manifest["export"] = self._export(records, run_dir / "export", cfg.export.formats)
        manifest["export_seconds"] = round(time.perf_counter() - started, 3)
        faults.at_point("after_export")
        if cfg.finetune is not None:
            started = time.perf_counter()
            manifest["finetune"] = self._finetune(records, run_dir, input_hash, progress, say)
            manifest["finetune_seconds"] = round(time.perf_counter() - started, 3)
        if cfg.eval is not None:
            from datagen.eval import run_pipeline_eval

            started = time.perf_counter()
            self._write_manifest(run_dir, manifest)
            manifest["eval"] = run_pipeline_eval(self, run_dir, progress)
            manifest["eval_seconds"] = round(time.perf_counter() - started, 3)
        manifest["llm_usage_total"] = _sum_usage(manifest["stages"])
        manifest["cost_usd_total"] = round(sum(s.get("cost_usd", 0.0) for s in manifest["stages"]), 6)
        manifest["status"] = "finished"
        manifest["wall_seconds"] = round(time.perf_counter() - run_started, 3)
        self._write_manifest(run_dir, manifest)
        from datagen.report import write_report

        write_report(run_dir)
        say.summary(run_dir, manifest)
        return RunResult(run_dir=run_dir, records=records, stages=outcomes, manifest=manifest)

    def _export(self, records: list[Record], export_dir: Path, formats: list[str]) -> dict[str, str]:
        from datagen.io import write_records

        written = {}
        names = {"alpaca": "alpaca.json", "sharegpt": "sharegpt.jsonl", "messages": "messages.jsonl",
                 "records": "records.jsonl", "hf": "hf_dataset"}
        for fmt in formats:
            target = export_dir / names[fmt]
            write_records(records, target, fmt="messages" if fmt == "hf" else fmt)
            written[fmt] = str(target)
        return written

    def _finetune(self, records: list[Record], run_dir: Path, data_hash: str, progress: bool,
                  say: _Console) -> dict[str, Any]:
        from datagen.plugins import plugin

        finetune = plugin("finetune")
        FinetuneConfig, train = finetune.FinetuneConfig, finetune.train  # noqa: N806

        config = FinetuneConfig.model_validate(self.config.finetune or {})
        model_dir = run_dir / "model"
        marker = model_dir / "done.json"
        ft_hash = _json_hash({"data": data_hash, "config": config.model_dump(mode="json")})
        if marker.exists() and json.loads(marker.read_text()).get("hash") == ft_hash:
            say.stage(0, 0, "finetune", "skipped: finished before")
            return json.loads(marker.read_text())["metrics"]
        say.stage(0, 0, "finetune", f"{config.method} on {len(records)} records")
        if not records:
            raise ValueError("finetune: no records left to train on; loosen the filters or generate more")
        metrics = train(records, config, model_dir, progress=progress)
        from datagen.io import atomic_write_text

        atomic_write_text(marker, json.dumps({"hash": ft_hash, "metrics": metrics}, indent=2, default=str))
        return metrics

    @staticmethod
    def _write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
        from datagen.io import atomic_write_text

        atomic_write_text(run_dir / "manifest.json", json.dumps(manifest, indent=2, ensure_ascii=False, default=str))


def _sum_usage(stages: list[dict[str, Any]]) -> dict[str, int]:
    total = {"requests": 0, "calls": 0, "cache_hits": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for stage in stages:
        if stage.get("skipped"):
            continue
        for stats in (stage.get("llm_usage") or {}).values():
            for key in total:
                total[key] += int(stats.get(key, 0))
    return total


class _Console:
    """Stage-level progress in the terminal (the stages draw their own bars)."""

    def __init__(self, enabled: bool):
        from rich.console import Console

        self.enabled = enabled
        self.console = Console(stderr=True)

    def header(self, text: str) -> None:
        if self.enabled:
            self.console.rule(f"[bold]{text}")

    def stage(self, number: int, total: int, label: str, text: str) -> None:
        if self.enabled:
            prefix = f"[{number}/{total}] " if total else ""
            self.console.print(f"[bold cyan]{prefix}{label}[/]: {text}")

    def stage_done(self, label: str, n_in: int, n_out: int, reasons: dict[str, int], seconds: float) -> None:
        if self.enabled:
            why = ", ".join(f"{k} {v}" for k, v in list(reasons.items())[:5]) or "none dropped"
            self.console.print(f"    {label}: {n_in} → {n_out} in {seconds:.1f}s ({why})")

    def summary(self, run_dir: Path, manifest: dict[str, Any]) -> None:
        if self.enabled:
            from datagen.report import summary_table

            self.console.print(summary_table(manifest))
            self.console.print(f"report: {run_dir / 'report.html'}   exports: {run_dir / 'export'}")


# ---------------------------------------------------------------- CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a whole YAML pipeline (resumable)",
        description=(
            "Run every stage of PIPELINE.yaml into a run directory (default runs/<name>). Rerunning the same\n"
            "command resumes: finished stages are skipped and finished LLM calls come from the run's cache.\n"
            "Example: datagen run pipelines/quickstart.yaml --set stages.self_instruct.num_instructions=10"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pipeline", help="pipeline YAML file, or the name of a bundled one (`datagen pipelines`)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value; stages by name, e.g. stages.distill.n=4 or llm=openai:gpt-4o-mini")
    parser.add_argument("--run-dir", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--executor", choices=["local", "ray"], default=None,
                        help="where record-parallel work runs (default: the YAML's `executor`, else local)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join, e.g. 10.0.0.1:6379 (sets ray.address; implies --executor ray)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress output")
    from datagen.cli_common import add_cost_args

    add_cost_args(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print each stage's requests, tokens and dollars (upper bounds) without calling any LLM")
    parser.set_defaults(func=_run_cli)


def executor_overrides(executor: str | None, ray_address: str | None) -> list[str]:
    """`--executor` / `--ray-address` as `--set` overrides, so YAML and CLI meet in one place."""
    overrides = []
    if executor or ray_address:
        overrides.append(f"executor={executor or 'ray'}")
    if ray_address:
        overrides.append(f"ray.address={json.dumps(ray_address)}")  # quoted: YAML may read a:b as a number
    return overrides


def _run_cli(args: argparse.Namespace) -> int:
    from datagen.cli_common import cost_overrides
    from datagen.llm.budget import EXIT_BUDGET, BudgetExceeded

    pipeline = Pipeline.from_yaml(args.pipeline, overrides=[*args.overrides, *cost_overrides(args),
                                                      *executor_overrides(args.executor, args.ray_address)])
    if args.dry_run:
        from datagen.dryrun import print_plan

        print_plan(pipeline)
        return 0
    try:
        result = pipeline.run(run_dir=args.run_dir, progress=not args.no_progress)
    except BudgetExceeded as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_BUDGET
    print(f"finished: {len(result.records)} records in {result.run_dir / 'export'}", file=sys.stderr)
    return 0

