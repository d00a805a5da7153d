"""One YAML file runs the whole job: generate → evolve → distill → dedup → filter → fine-tune.

This module is the runner; the YAML schema and its validation live in `pipeline_config.py`,
the run directory's hashes, versions and costs in `run_files.py`, the `datagen run` command
in `commands_run.py`.

The run directory is the unit of resume. Each stage writes `kept.jsonl`, `dropped.jsonl` and
last a `done.json` naming the hash of its input and of its config; on rerun a stage whose
marker matches is skipped, and an interrupted stage re-runs through the LLM cache, so no
finished call is paid twice. Every file is written atomically (temp + rename).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datagen import __version__, faults, registry
from datagen.config_errors import ConfigError
from datagen.context import StageContext
from datagen.errors import DatagenError, StageFailed, after_export, check_error_rate
from datagen.finetune_steps import finetune_steps
from datagen.io import atomic_write_text, default_seeds_path, read_records, write_records
from datagen.llm import ResponseCache
from datagen.llm.budget import BudgetExceeded
from datagen.personas import persona_fingerprints
from datagen.pipeline_config import (
    READER_WRITES,
    PipelineConfig,
    StageSpec,
    apply_overrides,
    check_meta_flow,
    validate_config,
)
from datagen.records import Record, RecordMeta
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
from datagen.run_lock import hold, lock_file_inside

EXPORT_FILES = {"alpaca": "alpaca.json", "sharegpt": "sharegpt.jsonl", "messages": "messages.jsonl",
                "records": "records.jsonl", "hf": "hf_dataset",
                "dpo": "dpo.jsonl", "dpo_text": "dpo_text.jsonl", "hf_dpo": "hf_dpo_dataset"}
EXPORT_AS = {"hf": "messages", "hf_dpo": "dpo"}  # an HF dataset folder holds the rows of this format


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


@dataclass
class RunState:
    """Everything one run carries from step to step: where it writes, what flows, what it reports."""

    config: PipelineConfig
    run_dir: Path
    ctx: StageContext
    say: RunConsole
    manifest: dict[str, Any]
    records: list[Record]
    input_hash: str
    global_hash: str
    started: float
    outcomes: list[StageOutcome] = field(default_factory=list)

    def write_manifest(self) -> None:
        atomic_write_text(self.run_dir / "manifest.json",
                          json.dumps(self.manifest, indent=2, ensure_ascii=False, default=str))


class Pipeline:
    def __init__(self, config: PipelineConfig, source: str = "config", base_dir: Path | None = None):
        self.config = config
        self.source = source
        self.base_dir = base_dir or Path.cwd()
        self.unicode_repairs: Counter[str] | None = None  # lone surrogates replaced in the input, by field

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

    def resolve_path(self, raw: str) -> Path:
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

    def load_input(self) -> tuple[list[Record], str]:
        """The input records and their hash; also checks, before any LLM call, that every meta
        key a stage needs is written by this input or an earlier stage."""
        path = self.resolve_path(self.config.input.path) if self.config.input.path else default_seeds_path()
        self.unicode_repairs = Counter() if self.config.input.repair_unicode else None
        records = read_records(path, self.unicode_repairs)
        if self.config.input.limit:
            records = records[: self.config.input.limit]
        check_meta_flow(self.config, READER_WRITES | meta_keys_present(records), self.source)
        return records, sha256_bytes(records_jsonl(records).encode("utf-8"))

    def run(self, run_dir: str | Path | None = None, progress: bool = True, wait: bool = False) -> RunResult:
        """Run into `run_dir`, one run per directory: a busy one raises `FolderBusy` (exit 2), or `wait`s."""
        run_dir = Path(run_dir or Path("runs") / self.config.name)
        with hold(lock_file_inside(run_dir), "datagen run", what=str(run_dir), wait=wait):
            return self._run_holding_lock(run_dir, progress)

    def _run_holding_lock(self, run_dir: Path, progress: bool) -> RunResult:
        """Plan → run or skip each stage → export → fine-tune → eval → report."""
        state = self._open(run_dir, progress)
        try:
            for number, spec in enumerate(self.config.stage_specs(), start=1):
                if not skip_finished_stage(state, number, spec):
                    run_stage(state, number, spec)
        except BaseException as exc:
            record_failure(state, exc)
            raise
        finally:
            state.ctx.close()
        export_step(state)
        finetune_step(state)
        eval_step(state, self)
        return finish_run(state)

    def _open(self, run_dir: Path, progress: bool) -> RunState:
        """The run directory with its resolved config, the input, the context and a fresh manifest."""
        cfg = self.config
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        records, input_hash = self.load_input()
        say = RunConsole(progress)
        say.header(f"datagen run {cfg.name}: {len(records)} input records → {run_dir}")
        ctx = StageContext.from_config(cfg, ResponseCache(run_dir / "llm_cache.sqlite"), progress)
        if ctx.budget is not None:
            say.stage(0, 0, "budget", ctx.budget.line().removeprefix("budget: ") + " (earlier runs of this directory included)")
        personas = persona_fingerprints([getattr(spec.config, "personas", None) for spec in cfg.stage_specs()])
        global_hash = json_hash({"seed": cfg.seed, "llm": cfg.llm, "prompts": prompts_hash(
            cfg.prompts_dir, registry.prompts_not_rendered([(spec.name, spec.config) for spec in cfg.stage_specs()])),
                                 "backends": backend_identities(cfg, cfg.stage_specs()),
                                 **({"personas": personas} if personas else {})})  # absent: hashes as before
        manifest: dict[str, Any] = {
            "name": cfg.name,
            "datagen_version": __version__,
            "versions": versions(),
            "config_hash": json_hash(cfg.model_dump(mode="json")),
            "input": {"records": len(records), "sha256": input_hash,
                      **({"unicode_repairs": dict(self.unicode_repairs)} if self.unicode_repairs is not None else {})},
            "stages": [],
            "status": "running",
        }
        state = RunState(cfg, run_dir, ctx, say, manifest, records, input_hash, global_hash, time.perf_counter())
        state.write_manifest()
        return state


def meta_keys_present(records: list[Record]) -> set[str]:
    """The declared meta keys some input record already carries (a records file from an earlier run)."""
    defaults = RecordMeta()
    return {name for name in RecordMeta.model_fields
            if any(getattr(r.meta, name) != getattr(defaults, name) for r in records)}


def stage_hash(state: RunState, spec: StageSpec) -> str:
    """What a finished stage's marker must match. Config fields renamed since a run dir was made
    keep their old name here (`serialization_alias`), so a rename never re-runs a finished stage."""
    config = spec.config.model_dump(mode="json", by_alias=True)
    return json_hash({"stage": spec.name, "config": config, "global": state.global_hash})


def skip_finished_stage(state: RunState, number: int, spec: StageSpec) -> bool:
    """A stage whose marker names this input and this config is done: take its output and move on."""
    marker = state.run_dir / spec.label / "done.json"
    if not marker.exists():
        return False
    done = json.loads(marker.read_text())
    if done.get("input_hash") != state.input_hash or done.get("config_hash") != stage_hash(state, spec):
        marker.unlink()  # stale: inputs or config changed
        return False
    state.records = read_records(state.run_dir / spec.label / "kept.jsonl")
    total = len(state.config.stages)
    state.say.stage(number, total, spec.label, f"skipped: finished before ({len(state.records)} kept)")
    state.manifest["stages"].append({**done, "skipped": True})
    state.outcomes.append(StageOutcome(spec.label, done["out"], done["dropped"], True, 0.0, done.get("drop_reasons", {})))
    state.input_hash = done["output_hash"]
    return True


def run_stage(state: RunState, number: int, spec: StageSpec) -> None:
    """Run one stage, write its files, check its error rate, then its `done.json` marker last."""
    cfg, stage_dir, records = state.config, state.run_dir / spec.label, state.records
    state.say.stage(number, len(cfg.stages), spec.label, f"{len(records)} records in")
    usage_before = state.ctx.usage()
    since, concurrency_before = time.monotonic(), state.ctx.concurrency_counters()  # the limit's clock
    started = time.perf_counter()
    result = registry.resolve(spec.name).run(records, state.ctx, spec.config)
    seconds = time.perf_counter() - started
    usage = usage_delta(state.ctx.usage(), usage_before)
    kept_text = records_jsonl(result.kept)
    atomic_write_text(stage_dir / "kept.jsonl", kept_text)
    atomic_write_text(stage_dir / "dropped.jsonl", records_jsonl(result.dropped))
    try:
        check_error_rate(spec.label, usage, cfg.max_error_rate)
    except StageFailed:
        state.manifest["stages"].append({"label": spec.label, "stage": spec.name, "status": "failed",
                                         "llm_usage": usage, "drop_reasons": result.drop_counts()})
        raise
    output_hash = sha256_bytes(kept_text.encode("utf-8"))
    done = {
        "stage": spec.name,
        "label": spec.label,
        "input_hash": state.input_hash,
        "config_hash": stage_hash(state, spec),
        "output_hash": output_hash,
        "in": len(records),
        "out": len(result.kept),
        "dropped": len(result.dropped),
        "drop_reasons": result.drop_counts(),
        "stats": result.stats,
        "llm_usage": usage,
        **({"concurrency": report} if (report := state.ctx.concurrency_report(since, concurrency_before)) else {}),
        "cost_usd": cost_usd(usage, cfg.prices, batch=bool(cfg.llm_options.get("openai", {}).get("batch"))),
        "seconds": round(seconds, 3),
        "config": spec.config.model_dump(mode="json"),
    }
    atomic_write_text(stage_dir / "done.json", json.dumps(done, indent=2, ensure_ascii=False, default=str))
    state.manifest["stages"].append({**done, "skipped": False})
    state.write_manifest()
    state.outcomes.append(StageOutcome(spec.label, len(result.kept), len(result.dropped), False, seconds,
                                       result.drop_counts()))
    state.say.stage_done(spec.label, len(records), len(result.kept), result.drop_counts(), seconds)
    faults.at_point(f"after_stage:{spec.label}")
    state.records, state.input_hash = result.kept, output_hash


def record_failure(state: RunState, exc: BaseException) -> None:
    """The manifest says how the run ended; the failed stage has no `done.json`, so a rerun resumes it."""
    if isinstance(exc, BudgetExceeded):
        budget = state.ctx.budget
        state.manifest["status"] = "budget_exhausted"
        state.manifest["budget"] = {"cap_usd": budget.cap if budget else None, "spent_usd": budget.spent if budget else None}
    else:
        state.manifest["status"] = "failed" if isinstance(exc, DatagenError) else "interrupted"
        if isinstance(exc, DatagenError):
            state.manifest["error"] = str(exc)
    state.write_manifest()


def export_step(state: RunState) -> None:
    """Human review decisions (review.jsonl) first, then every export format; no LLM call."""
    from datagen.review import apply_review, review_digest

    started = time.perf_counter()
    state.records, applied = apply_review(state.records, state.run_dir)
    if applied:
        state.manifest["review"] = applied
        state.input_hash = sha256_bytes(f"{state.input_hash}:{review_digest(state.run_dir)}".encode())
    state.manifest["export"] = export_records(state.records, state.run_dir / "export", state.config.export.formats)
    state.manifest["export_records"] = len(state.records)
    state.manifest["export_seconds"] = round(time.perf_counter() - started, 3)
    faults.at_point("after_export")


def export_records(records: list[Record], export_dir: Path, formats: list[str]) -> dict[str, str]:
    written = {}
    for fmt in formats:
        target = export_dir / EXPORT_FILES[fmt]
        write_records(records, target, fmt=EXPORT_AS.get(fmt, fmt))
        written[fmt] = str(target)
    return written


def finetune_step(state: RunState) -> None:
    """Train each `finetune:` step through the `finetune` plugin (SFT, then e.g. DPO from its model).

    Each step has its own folder and marker: a finished step whose data, options and start
    model are unchanged is kept; a later step's hash includes the earlier one's, so retraining
    SFT retrains the DPO step after it."""
    steps = finetune_steps(state.config.finetune)
    if not steps:
        return
    from datagen.plugins import plugin

    finetune = plugin("finetune")
    started = time.perf_counter()
    done: list[dict[str, Any]] = []
    previous_hash = ""
    for step in steps:
        options = dict(step.options)
        if step.starts_from is not None:
            start = state.run_dir / step.starts_from / "model"
            if not (start / "config.json").exists():
                raise ValueError(f"finetune[{step.index}]: starts from {step.starts_from}/model, which step "
                                 f"{step.index - 1} did not save (set save_merged: true there, or base_model here)")
            options["base_model"] = str(start)
        config = finetune.FinetuneConfig.model_validate(options)
        model_dir = state.run_dir / step.folder
        marker = model_dir / "done.json"
        ft_hash = json_hash({"data": state.input_hash, "config": config.model_dump(mode="json"),
                             "after": previous_hash})
        label = "finetune" if len(steps) == 1 else f"finetune[{step.index}] {config.objective}"
        if marker.exists() and json.loads(marker.read_text()).get("hash") == ft_hash:
            state.say.stage(0, 0, label, "skipped: finished before")
            metrics = json.loads(marker.read_text())["metrics"]
        else:
            state.say.stage(0, 0, label, f"{config.objective} ({config.method}) on {len(state.records)} records "
                            f"into {step.folder}/")
            if not state.records:
                raise ValueError("finetune: no records left to train on; loosen the filters or generate more")
            with after_export(label, model_dir, state.run_dir / "export"):
                metrics = finetune.train(state.records, config, model_dir, progress=state.say.enabled)
            atomic_write_text(marker, json.dumps({"hash": ft_hash, "metrics": metrics}, indent=2, default=str))
        previous_hash = ft_hash
        done.append({"step": step.index, "folder": step.folder, "objective": config.objective, **metrics})
    state.manifest["finetune"] = done[0]
    if len(done) > 1:
        state.manifest["finetune_steps"] = done
    state.manifest["finetune_seconds"] = round(time.perf_counter() - started, 3)


def eval_step(state: RunState, pipeline: Pipeline) -> None:
    if state.config.eval is None:
        return
    from datagen.eval import run_pipeline_eval

    started = time.perf_counter()
    state.write_manifest()
    with after_export("eval", state.run_dir / "eval", state.run_dir / "export"):
        state.manifest["eval"] = run_pipeline_eval(pipeline, state.run_dir, state.say.enabled)
    state.manifest["eval_seconds"] = round(time.perf_counter() - started, 3)


def finish_run(state: RunState) -> RunResult:
    """Totals, status `finished`, the report, the end-of-run table."""
    from datagen.card import write_card
    from datagen.report import write_report

    manifest = state.manifest
    manifest["llm_usage_total"] = sum_usage(manifest["stages"])
    manifest["cost_usd_total"] = round(sum(s.get("cost_usd", 0.0) for s in manifest["stages"]), 6)
    manifest["status"] = "finished"
    manifest["wall_seconds"] = round(time.perf_counter() - state.started, 3)
    state.write_manifest()
    with after_export("report", state.run_dir / "report.html", state.run_dir / "export"):
        write_report(state.run_dir)
    with after_export("dataset card", state.run_dir / "export" / "README.md", state.run_dir / "export"):
        write_card(state.run_dir)
        state.say.summary(state.run_dir, manifest)
    return RunResult(run_dir=state.run_dir, records=state.records, stages=state.outcomes, manifest=manifest)


class RunConsole:
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
