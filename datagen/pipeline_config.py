"""The pipeline YAML: its schema, validation with one-line errors, and `--set` overrides.

Kept apart from the runner (`datagen/pipeline.py`) so that reading a config, checking it
(`--dry-run`, `datagen eval`, `datagen study`) and running it are separate ideas. Every error
names the file, the key and, for a typo, the closest real key.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from datagen import registry
from datagen.config_errors import ConfigError, check_keys, format_validation, parse_set, suggest
from datagen.ray_cluster import Executor, RayConfig

EXPORT_FORMATS = ("alpaca", "sharegpt", "messages", "records", "hf", "dpo", "dpo_text", "hf_dpo")
# What the readers (datagen.io / datagen.rows) may set on a record before any stage ran.
READER_WRITES = frozenset({"source", "name", "instances", "is_classification", "extra"})


def stage_name(raw: str) -> str:
    """A stage's YAML name from its name or its command verb (`filter` -> `quality`)."""
    stage = registry.resolve(raw)
    return stage.name if stage else raw


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
    repair_unicode: bool = Field(
        False, description="replace lone surrogates (broken UTF-16 halves) with U+FFFD and count them in the "
        "manifest; off: the first one stops the run with its file, line and field",
    )


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formats: list[str] = Field(default_factory=lambda: ["alpaca", "sharegpt", "messages", "hf"])
    # What the dataset card (export/README.md) declares; the Hub reads these from its YAML header.
    license: str = Field("other", description="license id on the dataset card, e.g. apache-2.0, cc-by-4.0")
    language: list[str] = Field(default_factory=lambda: ["en"], description="ISO 639-1 codes on the card")
    tags: list[str] = Field(default_factory=list, description="card tags besides `synthetic`")
    pretty_name: str | None = Field(None, description="title on the card; default: the run name")


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
    finetune: dict[str, Any] | list[dict[str, Any]] | None = Field(
        None, description="FinetuneConfig options, or a list of them run in turn (SFT then DPO); omit to skip training"
    )
    eval: dict[str, Any] | None = Field(
        None, description="EvalConfig options: judge the tuned model against the base on held-out data after training"
    )

    def stage_specs(self) -> list[StageSpec]:
        specs, seen = [], {}
        for entry in self.stages:
            ((raw_name, options),) = entry.items()
            stage = registry.resolve(raw_name)
            seen[stage.name] = seen.get(stage.name, 0) + 1
            label = stage.name if seen[stage.name] == 1 else f"{stage.name}_{seen[stage.name]}"
            specs.append(StageSpec(name=stage.name, label=label, config=stage.config.model_validate(options or {})))
        return specs


def validate_config(data: dict[str, Any], source: str = "config") -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping of keys")
    check_keys(data, PipelineConfig, "", source)
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
        stage = registry.resolve(str(raw_name))
        if stage is None:
            raise ConfigError(f"{source}: stages[{index}]: unknown stage {raw_name!r}"
                              f"{suggest(str(raw_name), registry.names())}")
        check_keys(options or {}, stage.config, f"stages[{index}].{raw_name}.", source)
        try:
            stage.config.model_validate(options or {})
        except ValidationError as exc:
            raise format_validation(exc, f"stages[{index}].{raw_name}.", source) from None
    section = data.get("finetune")
    if section is not None:
        from datagen.plugins import plugin

        FinetuneConfig = plugin("finetune").FinetuneConfig  # noqa: N806 - a class, as imported
        if not isinstance(section, dict | list) or not section or not all(isinstance(s, dict) for s in
                                                                          ([section] if isinstance(section, dict) else section)):
            raise ConfigError(f"{source}: finetune: one mapping of options, or a list of them (steps, e.g. SFT then DPO)")
        steps = [section] if isinstance(section, dict) else section
        for index, step in enumerate(steps):
            where = "finetune." if isinstance(section, dict) else f"finetune[{index}]."
            check_keys(step, FinetuneConfig, where, source)
            try:
                FinetuneConfig.model_validate(step)
            except ValidationError as exc:
                raise format_validation(exc, where, source) from None
        if any((step.get("num_machines") or 1) > 1 for step in steps):
            # Every machine must start the same training at the same time; only `datagen finetune`
            # can be typed on each of them, a pipeline runs on one.
            raise ConfigError(f"{source}: finetune.num_machines: a pipeline fine-tunes on one machine; across "
                              "machines, run `datagen finetune --input RUN_DIR/export/messages.jsonl ...` on each "
                              "(README, Scaling out)")
    if data.get("eval") is not None:
        from datagen.eval import validate_pipeline_eval

        validate_pipeline_eval(data, source)
    for fmt in (data.get("export") or {}).get("formats", []) or []:
        if fmt not in EXPORT_FORMATS:
            raise ConfigError(f"{source}: export.formats: unknown format {fmt!r}{suggest(str(fmt), list(EXPORT_FORMATS))}")
    pair_formats = [f for f in (data.get("export") or {}).get("formats", []) or [] if f in ("dpo", "dpo_text", "hf_dpo")]
    stage_writes = set().union(*(registry.resolve(str(next(iter(e)))).writes for e in stages))
    if pair_formats and "chosen" not in stage_writes:
        raise ConfigError(f"{source}: export.formats: {pair_formats[0]!r} needs preference pairs; add the "
                          "preference stage (after distill) to stages")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise format_validation(exc, "", source) from None


def check_meta_flow(config: PipelineConfig, available: frozenset[str] | set[str], source: str) -> None:
    """Every `RecordMeta` key a stage needs is written by the reader or an earlier stage.

    Runs once the pipeline's input is read (`Pipeline.load_input`, so `--dry-run` too), with what
    any reader sets plus what that file really brought (a records file from an earlier run
    carries its candidates and scores), before any LLM call: a missing producer is a config
    error naming the stage and the key, not a surprise halfway through a paid run."""
    have = set(available)
    for index, spec in enumerate(config.stage_specs()):
        stage = registry.resolve(spec.name)
        missing = sorted(stage.reads_for(spec.config) - have)
        if missing:
            writers = sorted(s.name for s in registry.stages().values() if set(missing) & s.writes)
            hint = f"; add a stage that writes it before this one ({', '.join(writers)})" if writers else ""
            raise ConfigError(f"{source}: stages[{index}].{spec.label}: reads meta.{missing[0]}, which neither the "
                              f"input nor an earlier stage writes{hint}")
        have |= stage.writes


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """`--set a.b=value`; a stage is addressed by name: `stages.distill.n=4`. Values are YAML."""
    for item in overrides:
        parts, value = parse_set(item, example="stages.distill.n=4")
        node: Any = data
        for depth, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                matches = [e for e in node if isinstance(e, dict) and stage_name(next(iter(e))) == stage_name(part)]
                if not matches:
                    raise ConfigError(f"--set {'.'.join(parts)}: no stage named {part!r} in this pipeline")
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
