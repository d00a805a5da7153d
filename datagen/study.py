"""`datagen study`: does curation pay? The LIMA / Alpagasus experiment on your own pool.

One generated pool, two fine-tunes with the same number of training tokens, one evaluation:

1. run the pipeline's stages as usual; the kept records of `study.raw_stage` are the raw pool
   (place it after `decontaminate` so neither arm trains on the held-out set), the final
   records are the curated subset;
2. draw from the raw pool (seeded shuffle) until it holds as many tokens as the curated
   subset, so any difference comes from which examples were chosen, not how many tokens;
3. fine-tune the base model on each with the same `study.finetune` options;
4. evaluate base, raw and curated on the held-out set (`datagen eval`: both-order pairwise
   judging, intervals, length control, loss) and write one table (`study/study.json`, and a
   section of `report.html`).

With the embedded 135M model on a CPU the numbers mean nothing and the output says so: it
is a smoke run of the machinery. With a strong teacher and judge and a GPU it is the real
experiment.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from datagen.records import Record


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    raw_stage: str = Field(..., description="label of the stage whose kept records are the raw (uncurated) pool")
    held_out: str = Field(..., description="held-out prompts with reference answers for the evaluation")
    finetune: dict[str, Any] = Field(default_factory=dict, description="FinetuneConfig options for both arms")
    eval: dict[str, Any] = Field(
        default_factory=dict, description="EvalConfig options (data and models are set by the study)"
    )
    match_tokens: bool = Field(True, description="subsample the raw pool to the curated subset's token count")


def load_study(path: str | Path, overrides: list[str] | None = None) -> tuple[Any, StudyConfig]:
    """(Pipeline without finetune/eval, StudyConfig) from a pipeline YAML with a `study:` section."""
    from pydantic import ValidationError

    from datagen.config_errors import ConfigError, check_keys, format_validation
    from datagen.pipeline import Pipeline
    from datagen.pipeline_config import apply_overrides, validate_config

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such pipeline file")
    data = apply_overrides(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, overrides or [])
    options = data.pop("study", None)
    if not isinstance(options, dict):
        raise ConfigError(f"{path}: study: missing (raw_stage, held_out, finetune, eval)")
    for key in ("finetune", "eval"):
        if data.get(key) is not None:
            raise ConfigError(f"{path}: {key}: put it under study.{key}: the study trains and evaluates both arms")
    check_keys(options, StudyConfig, "study.", str(path))
    try:
        study = StudyConfig.model_validate(options)
    except ValidationError as exc:
        raise format_validation(exc, "study.", str(path)) from None
    pipeline = Pipeline(validate_config(data, source=str(path)), source=str(path), base_dir=path.parent)
    labels = [spec.label for spec in pipeline.config.stage_specs()]
    if study.raw_stage not in labels:
        raise ConfigError(f"{path}: study.raw_stage: {study.raw_stage!r} is not a stage of this pipeline "
                          f"(stages: {', '.join(labels)})")
    return pipeline, study


def run_study(pipeline: Any, study: StudyConfig, run_dir: Path | None = None, progress: bool = True) -> dict[str, Any]:
    from datagen.context import StageContext
    from datagen.eval import EvalConfig, run_eval, summary_table
    from datagen.io import atomic_write_text, read_records
    from datagen.llm import ResponseCache
    from datagen.plugins import plugin
    from datagen.report import write_report

    finetune = plugin("finetune")
    FinetuneConfig, resolve_base_model, train = finetune.FinetuneConfig, finetune.resolve_base_model, finetune.train  # noqa: N806

    result = pipeline.run(run_dir=run_dir, progress=progress)
    run_dir = result.run_dir
    curated = result.records
    raw_pool = read_records(run_dir / study.raw_stage / "kept.jsonl")
    ft_config = FinetuneConfig.model_validate(study.finetune)
    base = resolve_base_model(ft_config)
    tokens = token_counter(base)
    curated_tokens = sum(tokens(r) for r in curated)
    raw = match_token_budget(raw_pool, tokens, curated_tokens, pipeline.config.seed) if study.match_tokens else raw_pool
    if not curated or not raw:
        raise ValueError(f"study: nothing to train on (curated {len(curated)}, raw {len(raw)} records); "
                         "generate more or loosen the filters")
    arms: dict[str, dict[str, Any]] = {}
    for name, records in (("raw", raw), ("curated", curated)):
        out = run_dir / "study" / f"{name}_model"
        marker = out / "metrics.json"
        metrics = json.loads(marker.read_text()) if marker.exists() else train(records, ft_config, out, progress=progress)
        arms[name] = {"records": len(records), "tokens": sum(tokens(r) for r in records), "model": str(out / "model"),
                      "metrics": {k: metrics.get(k) for k in ("train_loss", "eval_loss_before", "eval_loss_after",
                                                              "steps", "train_tokens")}}
    base_spec = f"local:{base}"
    models = [base_spec, f"local:{arms['raw']['model']}", f"local:{arms['curated']['model']}"]
    cfg = pipeline.config
    eval_config = EvalConfig.model_validate({**study.eval, "data": str(pipeline.resolve_path(study.held_out)),
                                             "models": models})
    ctx = StageContext.from_config(cfg, ResponseCache(run_dir / "llm_cache.sqlite"), progress)
    try:
        report = run_eval(eval_config, run_dir / "eval", ctx, training_runs=[run_dir])
    finally:
        ctx.close()
    names = {base_spec: "base", models[1]: "raw", models[2]: "curated"}
    table = study_table(report, names, arms)
    smoke = cfg.llm == "local" or not _has_gpu()
    study_json = {"smoke_run": smoke, "raw_stage": study.raw_stage, "raw_pool": len(raw_pool),
                  "curated_tokens": curated_tokens, "arms": arms, "table": table}
    atomic_write_text(run_dir / "study" / "study.json", json.dumps(study_json, indent=2, default=str))
    write_report(run_dir)
    if progress:
        from rich.console import Console

        console = Console(stderr=True)
        console.print(summary_table(report))
        if smoke:
            console.print("[bold yellow]smoke run: embedded model and/or no GPU; the numbers only show the "
                          "machinery works. Use a strong teacher and judge on a GPU for the real experiment.[/]")
    return study_json


def token_counter(model_dir: str) -> Any:
    """Tokens of a record as a training conversation (chat template of the base model)."""
    from transformers import AutoTokenizer

    from datagen.plugins import plugin

    record_to_example = plugin("finetune").record_to_example
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def count(record: Record) -> int:
        example = record_to_example(record)
        if example is None:
            return 0
        return len(tokenizer.apply_chat_template(example["messages"], tokenize=True, return_dict=True)["input_ids"])

    return count


def match_token_budget(pool: list[Record], tokens: Any, budget: int, seed: int = 0) -> list[Record]:
    """A seeded random subset of `pool` holding about `budget` tokens (stops at the first record
    that reaches it), in pool order."""
    order = list(range(len(pool)))
    random.Random(f"{seed}:study").shuffle(order)
    chosen, total = [], 0
    for i in order:
        if total >= budget:
            break
        chosen.append(i)
        total += tokens(pool[i])
    return [pool[i] for i in sorted(chosen)]


def study_table(report: dict[str, Any], names: dict[str, str], arms: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per model: data size, win-rates against base, against raw and against the references, loss."""
    rows = []
    for spec, name in names.items():
        row: dict[str, Any] = {"model": name, "spec": spec, "records": arms.get(name, {}).get("records"),
                               "tokens": arms.get(name, {}).get("tokens"),
                               "loss": (report.get("loss", {}).get(spec) or {}).get("loss")}
        for pair in report["pairs"]:
            if pair["first"] == spec:
                other = names.get(pair["second"], pair["second"])
                row[f"vs_{other}"] = {"win_rate": pair["win_rate"], "ci95": pair["ci95"],
                                      "lc_win_rate": pair["lc_win_rate"]}
        rows.append(row)
    return rows


def _has_gpu() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        return False


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="curated vs raw: fine-tune on both with equal tokens, evaluate both and the base model",
        description=("Run PIPELINE.yaml (with a study: section), fine-tune the base model on the raw pool and on\n"
                     "the curated subset with the same number of training tokens, and evaluate base, raw and curated\n"
                     "on the held-out set. Example: datagen study pipelines/study.yaml"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("pipeline", help="pipeline YAML with a study: section (see pipelines/study.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. stages.self_instruct.num_instructions=20")
    parser.add_argument("--run-dir", default=None, help="run directory (default runs/<name>)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress output")
    parser.set_defaults(func=_study_cli)


def _study_cli(args: argparse.Namespace) -> int:
    pipeline, study = load_study(args.pipeline, args.overrides)
    result = run_study(pipeline, study, Path(args.run_dir) if args.run_dir else None, progress=not args.no_progress)
    for row in result["table"]:
        wins = ", ".join(f"{k[3:]} {v['win_rate']}" for k, v in row.items() if k.startswith("vs_") and v)
        print(f"{row['model']:8s} records {row['records'] or '-':>5} tokens {row['tokens'] or '-':>7} "
              f"loss {row['loss']}  win-rate vs {wins or '-'}")
    if result["smoke_run"]:
        print("smoke run: embedded model / no GPU; only the machinery is tested, not curation", file=sys.stderr)
    return 0
