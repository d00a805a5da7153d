"""One YAML file runs the whole job: generate → evolve → distill → dedup → filter → fine-tune.

This module is the runner; the YAML schema and its validation live in `pipeline_config.py`,
the run directory's hashes, versions and costs in `run_files.py`.

The run directory is the unit of resume. Each stage writes `kept.jsonl`, `dropped.jsonl` and
last a `done.json` naming the hash of its input and of its config; on rerun a stage whose
marker matches is skipped, and an interrupted stage re-runs through the LLM cache, so no
finished call is paid twice. Every file is written atomically (temp + rename).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datagen import __version__, faults
from datagen.errors import DatagenError, StageFailed, check_error_rate
from datagen.pipeline_config import (  # noqa: F401 - the config API, also importable from here
    ALIASES,
    EXPORT_FORMATS,
    STAGES,
    ConfigError,
    ExportConfig,
    InputConfig,
    PipelineConfig,
    Price,
    StageSpec,
    _check_keys,
    _format_validation,
    apply_overrides,
    stage_config_class,
    validate_config,
)
from datagen.records import Record, StageResult
from datagen.run_files import (
    backend_identities,
    cost_usd,
    json_hash,
    prompts_hash,
    records_jsonl,
    sha256_bytes,
    sum_usage,
    usage_delta,
    versions,
)

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
        """Relative paths: from the cwd, then next to the YAML, then the shipped files the
        bundled pipelines name (`seeds/seed_tasks.jsonl`, `pipelines/data/heldout.jsonl`)."""
        from datagen.resources import shipped_path

        candidate = Path(raw)
        if candidate.is_absolute() or candidate.exists():
            return candidate
        if (self.base_dir / raw).exists():
            return self.base_dir / raw
        shipped = shipped_path(raw)
        if shipped is not None:
            return shipped
        raise FileNotFoundError(f"{self.source}: input.path: {raw}: no such file")

    def _load_input(self) -> tuple[list[Record], str]:
        from datagen.io import default_seeds_path, read_records

        path = self._resolve(self.config.input.path) if self.config.input.path else default_seeds_path()
        records = read_records(path)
        if self.config.input.limit:
            records = records[: self.config.input.limit]
        return records, sha256_bytes(records_jsonl(records).encode("utf-8"))

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
        global_hash = json_hash({"seed": cfg.seed, "llm": cfg.llm, "prompts": prompts_hash(cfg.prompts_dir),
                                  "backends": backend_identities(cfg, specs)})
        manifest: dict[str, Any] = {
            "name": cfg.name,
            "datagen_version": __version__,
            "versions": versions(),
            "config_hash": json_hash(cfg.model_dump(mode="json")),
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
                stage_hash = json_hash({"stage": spec.name, "config": config_json, "global": global_hash})
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
                usage = usage_delta(ctx.usage(), usage_before)
                kept_text = records_jsonl(result.kept)
                atomic_write_text(stage_dir / "kept.jsonl", kept_text)
                atomic_write_text(stage_dir / "dropped.jsonl", records_jsonl(result.dropped))
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
                    "cost_usd": cost_usd(usage, cfg.prices, batch=bool(cfg.llm_options.get("openai", {}).get("batch"))),
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
        manifest["llm_usage_total"] = sum_usage(manifest["stages"])
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
        ft_hash = json_hash({"data": data_hash, "config": config.model_dump(mode="json")})
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

