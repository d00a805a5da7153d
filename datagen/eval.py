"""`datagen eval`: does the curated data train a better model? Pairwise judging on held-out prompts.

Every model answers every held-out prompt through our LLM layer (cached: a rerun or a resumed
run pays nothing twice). A judge then compares answers pairwise, in both orders, because
judges prefer whatever sits in one position: only a verdict that survives the swap is a win,
a flip is a tie. Each win-rate comes with a bootstrap 95 % interval (resampling prompts) and,
because judges also favour length, with both answers' mean lengths and a length-controlled
win-rate (AlpacaEval 2, simplified: a logistic regression of the preference on the
standardised length difference, read off at a difference of zero). Local models also get the
teacher-forced loss on the reference answers, computed exactly like the training eval loss
(the `finetune` plugin's `teacher_forced_loss`). Everything lands in `eval.json`; the run report draws it.

The first model listed is the baseline: every later model is compared against every earlier
one ("later vs earlier": a win-rate above 0.5 means the later model is better), and every
model against the reference answers when the data has them.

With preference pairs (`pairs`: a `dpo` export, a DPO step's `held_out_pairs.jsonl` or
preference records), every local model but the reference (the first local model unless
`reference` names one) also gets its held-out pair accuracy: the share of pairs whose implicit
reward beta * (log p_model - log p_reference) is higher for the chosen answer, and the mean
margin. That is the number a DPO step reports on its own held-out pairs, now for base vs SFT vs
SFT+DPO in one table; it needs no judge and no generation, only two forward passes per answer,
measured by TRL's `DPOTrainer` (the `finetune` plugin's `implicit_reward_accuracy`).
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from datagen.eval_stats import mean2, pair_summary
from datagen.finetune_steps import dpo_held_out, finetune_steps, objective_of
from datagen.records import Record
from datagen.stages.decontaminate import held_out_fingerprint

REFERENCE = "reference"


class EvalConfig(BaseModel):
    """Options of `datagen eval` and of the pipeline's `eval:` section."""

    model_config = ConfigDict(extra="forbid")

    data: str | None = Field(
        None, description="held-out prompts (any supported format); answers in it are the references"
    )
    models: list[str] = Field(
        default_factory=list,
        description="model specs, baseline first (local, local:PATH, openai:MODEL, vllm:MODEL); in a pipeline, "
        "empty = the base model and the fine-tuned one",
    )
    judge: str | None = Field(None, description="judge backend spec (None = the run's / --llm backend)")
    limit: int | None = Field(None, ge=1, description="use only the first N held-out prompts")
    max_tokens: int = Field(256, ge=1, description="answer length budget per model")
    temperature: float = Field(0.0, ge=0.0, description="answer sampling temperature (0 = greedy)")
    system_prompt: str | None = Field(None, description="system message for every prompt that has none")
    compare_reference: bool = Field(True, description="also judge each model against the reference answers")
    judge_max_tokens: int = Field(256, ge=8, description="token budget of one judge reply")
    bootstrap_samples: int = Field(2000, ge=100, description="bootstrap resamples for the 95 % intervals")
    loss: bool = Field(True, description="teacher-forced loss on the references for local models")
    loss_max_length: int = Field(
        2048, ge=16, description="tokens per example for the loss and the pair log-probs (longer: truncated)"
    )
    require_decontaminated: bool = Field(
        False,
        description="refuse to evaluate when the data was not used to decontaminate the tuned models' training "
        "data (default: a loud warning)",
    )
    seed: int = Field(0, description="seed of the answers and of the bootstrap")
    pairs: str | None = Field(
        None,
        description="preference pairs (dpo/dpo_text export or preference records): held-out pair accuracy of each "
        "local model by implicit reward against the reference model",
    )
    reference: str | None = Field(
        None, description="the model the implicit reward is measured against (default: the first local model)"
    )
    beta: float = Field(0.1, gt=0, description="implicit reward scale: scales the margin, not the pair accuracy")


@dataclass
class EvalItem:
    id: str
    prompt: list[dict[str, str]]  # the conversation up to the answer
    text: str  # the prompt as the judge reads it
    reference: str | None


# ---------------------------------------------------------------------------------------------
# the whole evaluation


def run_eval(
    config: EvalConfig,
    out_dir: str | Path,
    ctx: Any,
    training_runs: list[Path] | None = None,
) -> dict[str, Any]:
    """Answer, judge, score; write `out_dir/eval.json` and return its content.

    `ctx` is a StageContext (backends, cache, prompts, progress). `training_runs` are the run
    directories whose training data the tuned models saw (found from `local:PATH` otherwise),
    checked for decontamination against this data."""
    from datagen.io import atomic_write_text

    if len(config.models) < 1:
        raise ValueError("eval: give at least one model (two to compare them)")
    if config.data is None and config.pairs is None:
        raise ValueError("eval: give data (held-out prompts), pairs (held-out preference pairs), or both")
    models = [resolve_model_spec(spec) for spec in config.models]
    pair_plan = plan_pair_accuracy(config) if config.pairs else None
    if config.data is None:
        report: dict[str, Any] = {"data": None, "prompts": 0, "with_reference": 0, "models": models, "judge": None,
                                  "pairs": [], "loss": {}}
    else:
        report = judge_prompts(config, models, ctx, training_runs)
    if pair_plan is not None:
        report["preference"] = pair_accuracy(config, pair_plan)
    report["usage"] = ctx.usage()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval.json", json.dumps(report, indent=2, ensure_ascii=False, default=str))
    return report


def judge_prompts(
    config: EvalConfig, models: list[str], ctx: Any, training_runs: list[Path] | None
) -> dict[str, Any]:
    """Every model answers the held-out prompts; pairwise verdicts, lengths, losses."""
    from datagen.judge import compare_answers

    data_path = Path(config.data or "")
    items = load_items(data_path, config.limit, config.system_prompt)
    if not items:
        raise ValueError(f"{data_path}: no prompts to evaluate")
    contamination = check_contamination(data_path, models, training_runs)
    _warn_or_refuse(contamination, config.require_decontaminated)

    answers: dict[str, list[str]] = {}
    for spec in models:
        answers[spec] = answer_prompts(ctx, spec, items, config)
    with_reference = [i for i, item in enumerate(items) if item.reference]
    if with_reference and len(with_reference) < len(items):
        print(f"eval: {len(items) - len(with_reference)} of {len(items)} prompts have no reference answer",
              file=sys.stderr)

    pairs: list[tuple[str, str]] = [(models[j], models[i]) for i in range(len(models)) for j in range(i + 1, len(models))]
    if config.compare_reference and with_reference:
        pairs += [(spec, REFERENCE) for spec in models]
    judge = ctx.llm(config.judge)
    results: list[dict[str, Any]] = []
    per_item: list[dict[str, Any]] = [
        {"id": item.id, "prompt": item.text, "reference": item.reference,
         "answers": {spec: answers[spec][i] for spec in models}, "verdicts": {}}
        for i, item in enumerate(items)
    ]
    for first, second in pairs:
        indices = with_reference if REFERENCE in (first, second) else list(range(len(items)))
        texts = {**answers, REFERENCE: [item.reference or "" for item in items]}
        verdicts = compare_answers(
            judge,
            [(items[i].text, texts[first][i], texts[second][i], items[i].reference if second != REFERENCE else None)
             for i in indices],
            ctx,
            max_tokens=config.judge_max_tokens,
            desc=f"judge {_short(first)} vs {_short(second)}",
        )
        for i, verdict in zip(indices, verdicts, strict=True):
            per_item[i]["verdicts"][f"{first} vs {second}"] = verdict.preference
        results.append(pair_summary(
            first, second,
            [v.preference for v in verdicts],
            [_words(texts[first][i]) for i in indices],
            [_words(texts[second][i]) for i in indices],
            inconsistent=sum(1 for v in verdicts if v.preference is not None and not v.consistent),
            errors=sum(1 for v in verdicts if v.error),
            samples=config.bootstrap_samples,
            seed=config.seed,
        ))

    losses: dict[str, Any] = {}
    if config.loss and with_reference:
        for spec in models:
            folder = local_model_dir(spec)
            if folder is not None:
                losses[spec] = reference_loss(folder, [items[i] for i in with_reference], config.loss_max_length)

    return {
        "data": str(data_path),
        "data_sha256": held_out_fingerprint(data_path),
        "prompts": len(items),
        "with_reference": len(with_reference),
        "models": models,
        "judge": judge.name,
        "contamination": contamination,
        "answer_words": {spec: mean2([_words(a) for a in answers[spec]]) for spec in models}
        | ({REFERENCE: mean2([_words(items[i].reference or "") for i in with_reference])} if with_reference else {}),
        "pairs": results,
        "loss": losses,
        "items": per_item,
    }


# ---------------------------------------------------------------------------------------------
# held-out pair accuracy (implicit reward) of local models


@dataclass
class PairPlan:
    path: Path
    pairs: list[Any]  # checked PreferencePair, read before any model is loaded or answers anything
    reference: tuple[str, Path]  # (spec as given, model folder)
    models: list[tuple[str, Path]]  # (spec as given, model folder) of every local model but the reference


def plan_pair_accuracy(config: EvalConfig) -> PairPlan:
    """Read and check the pairs file (a bad line is a `path:line:` error) and pick the reference,
    before hours of answering and judging start. Models keep the spec as given (in a pipeline the
    step's folder), the key a DPO step's own held-out figures have in eval.json too."""
    from datagen.plugins import plugin

    path = Path(config.pairs or "")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such pairs file")
    pairs = plugin("finetune").load_pairs(path)
    if not pairs:
        raise ValueError(f"{path}: no preference pairs")
    local = [(spec, folder) for spec in config.models if (folder := local_model_dir(resolve_model_spec(spec)))]
    if config.reference:
        reference = (config.reference, local_model_dir(resolve_model_spec(config.reference)))
    else:
        reference = local[0] if local else ("", None)
    if reference[1] is None:
        raise ValueError("eval: pair accuracy needs a local reference model (--reference local:PATH, or list a local "
                         "model first)")
    measured = [(spec, folder) for spec, folder in local if folder.resolve() != reference[1].resolve()]
    if not measured:
        raise ValueError(f"eval: pair accuracy needs a local model besides the reference {reference[0]}")
    return PairPlan(path, pairs, (reference[0], reference[1]), measured)


def pair_accuracy(config: EvalConfig, plan: PairPlan) -> dict[str, dict[str, Any]]:
    """{model spec: {"implicit_reward": {pair_accuracy, reward_margin, ...}}} for every measured model."""
    from datagen.plugins import plugin

    measure = plugin("finetune").implicit_reward_accuracy
    reference, reference_dir = plan.reference
    out: dict[str, dict[str, Any]] = {}
    for spec, folder in plan.models:
        print(f"eval: pair accuracy of {spec} against {reference} on {len(plan.pairs)} pairs", file=sys.stderr)
        result = measure(folder, reference_dir, plan.pairs, beta=config.beta, max_length=config.loss_max_length,
                         system_prompt=config.system_prompt)
        out[spec] = {"implicit_reward": {**result, "reference": reference, "data": str(plan.path)}}
    return out


# ---------------------------------------------------------------------------------------------
# the pipeline's `eval:` section


def validate_pipeline_eval(data: dict[str, Any], source: str) -> None:
    """Config errors of the `eval:` section, phrased like every other pipeline key."""
    from pydantic import ValidationError

    from datagen.config_errors import ConfigError, check_keys, format_validation

    options = data["eval"]
    check_keys(options, EvalConfig, "eval.", source)
    try:
        config = EvalConfig.model_validate(options)
    except ValidationError as exc:
        raise format_validation(exc, "eval.", source) from None
    if not config.models and data.get("finetune") is None:
        raise ConfigError(f"{source}: eval.models: name the models to compare (there is no finetune: section to "
                          "provide a base and a tuned model)")
    has_dpo = any(objective_of(step.options) == "dpo" for step in finetune_steps(data.get("finetune")))
    if config.data is None and config.pairs is None and not has_dpo:
        raise ConfigError(f"{source}: eval.data: give held-out prompts (or eval.pairs: held-out preference pairs; "
                          "a DPO step's own held-out pairs are the default)")


def run_pipeline_eval(pipeline: Any, run_dir: Path, progress: bool) -> dict[str, Any]:
    """Evaluate after fine-tuning: by default the base model (baseline) against the tuned one,
    with the run's LLM cache and the run's own decontamination record. Returns the summary
    the manifest keeps (eval.json has every answer and verdict)."""
    from datagen.context import StageContext
    from datagen.io import atomic_write_text
    from datagen.llm import ResponseCache

    cfg = pipeline.config
    config = EvalConfig.model_validate(cfg.eval)
    config = config.model_copy(update={
        key: str(pipeline.resolve_path(value)) for key in ("data", "pairs") if (value := getattr(config, key))})
    steps = finetune_steps(cfg.finetune)
    if not config.models:  # base vs every step's model (base vs SFT vs SFT+DPO)
        base = steps[0].options.get("base_model") if steps else None
        config = config.model_copy(update={"models": [f"local:{base}" if base else "local",
                                                      *(f"local:{run_dir / s.folder}" for s in steps)]})
    held_out = [run_dir / s.folder / "held_out_pairs.jsonl" for s in steps if objective_of(s.options) == "dpo"]
    local = [spec for spec in config.models if local_model_dir(resolve_model_spec(spec)) is not None]
    if config.pairs is None and len(local) >= 2 and held_out and held_out[-1].exists():
        # The last DPO step's held-out pairs: every local model's pair accuracy against the base on them.
        config = config.model_copy(update={"pairs": str(held_out[-1])})
    if config.data is None and config.pairs is None:
        raise ValueError("eval: no eval.data and no held-out pairs to measure (the DPO step held none out: raise its "
                         "eval_fraction, or give eval.data / eval.pairs)")
    ctx = StageContext.from_config(cfg, ResponseCache(run_dir / "llm_cache.sqlite"), progress)
    try:
        report = run_eval(config, run_dir / "eval", ctx, training_runs=[run_dir])
    finally:
        ctx.close()
    preference = dpo_held_out(run_dir, steps)
    if preference:
        merged = report.setdefault("preference", {})
        for spec, figures in preference.items():
            merged[spec] = {**figures, **merged.get(spec, {})}
        atomic_write_text(run_dir / "eval" / "eval.json", json.dumps(report, indent=2, ensure_ascii=False, default=str))
    if progress:
        from rich.console import Console

        Console(stderr=True).print(summary_table(report))
    keys = ("data", "prompts", "models", "judge", "contamination", "pairs", "loss", "preference")
    return {key: report[key] for key in keys if key in report}


# ---------------------------------------------------------------------------------------------
# data and models


def load_items(path: Path, limit: int | None = None, system_prompt: str | None = None) -> list[EvalItem]:
    """Held-out prompts from any format `read_records` reads; a final assistant turn is the reference."""
    from datagen.io import read_records

    items = []
    for record in read_records(path)[:limit]:
        items.append(item_from_record(record, system_prompt))
    return items


def item_from_record(record: Record, system_prompt: str | None = None) -> EvalItem:
    messages = [{"role": m["role"], "content": m["content"].strip()} for m in record.to_messages(system_prompt)]
    reference = None
    if messages and messages[-1]["role"] == "assistant":
        reference = messages.pop()["content"] or None
    text = "\n\n".join(m["content"] for m in messages if m["role"] == "user") if record.messages else record.prompt_text()
    return EvalItem(id=record.id, prompt=messages, text=text, reference=reference)


def resolve_model_spec(spec: str) -> str:
    """A bare HF folder or `org/name` id means `local:` it; `local:RUN/model` (a `datagen finetune`
    output folder) means its merged model, `RUN/model/model`. Other specs pass unchanged."""
    from datagen.llm import BACKENDS

    backend, _, path = spec.partition(":")
    if backend not in BACKENDS and (Path(spec).exists() or _HF_ID.match(spec)):
        backend, path = "local", spec
    if backend == "local" and path:
        folder = Path(path)
        if not (folder / "config.json").exists() and (folder / "model" / "config.json").exists():
            return f"local:{folder / 'model'}"
        if not folder.exists() and not _HF_ID.match(path):
            raise FileNotFoundError(f"{spec}: no such model folder")
        return f"local:{path}"
    return spec


_HF_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def local_model_dir(spec: str) -> Path | None:
    """The HF folder behind a `local` spec (the embedded model for plain `local`); None for remote backends."""
    backend, _, path = spec.partition(":")
    if backend != "local":
        return None
    if path:
        return Path(path)
    from datagen.embedded import embedded_model_dir

    return embedded_model_dir()


def answer_prompts(ctx: Any, spec: str, items: list[EvalItem], config: EvalConfig) -> list[str]:
    """Each prompt answered once by `spec`; a failed request is an empty answer (it then loses)."""
    from datagen.llm import ChatRequest, generate_sync

    llm = ctx.llm(spec)
    requests = [
        ChatRequest.chat(item.prompt, temperature=config.temperature, max_tokens=config.max_tokens, seed=config.seed)
        for item in items
    ]
    with ctx.bar(len(requests), f"answers {_short(spec)}", unit="req") as bar:
        completions = generate_sync(llm, requests, lambda i, c: bar.update(1))
    failed = [c.error for c in completions if c.error]
    if failed:
        print(f"eval: {spec}: {len(failed)} of {len(items)} answers failed (counted as empty), e.g. {failed[0]}",
              file=sys.stderr)
    return [c.text.strip() if not c.error else "" for c in completions]


def reference_loss(model_dir: Path, items: list[EvalItem], max_length: int) -> dict[str, Any]:
    from datagen.plugins import plugin

    teacher_forced_loss = plugin("finetune").teacher_forced_loss
    examples = [{"id": item.id, "messages": [*item.prompt, {"role": "assistant", "content": item.reference}]}
                for item in items]
    result = teacher_forced_loss(model_dir, examples, max_length=max_length)
    result.pop("per_example", None)
    return result


# ---------------------------------------------------------------------------------------------
# was the held-out set kept out of the training data?


def find_run_dir(model_dir: Path) -> Path | None:
    """The run directory (has manifest.json) a fine-tuned model folder lives in, if any."""
    for folder in (model_dir, *model_dir.resolve().parents):
        if (folder / "manifest.json").exists():
            return folder
    return None


def check_contamination(data: Path, models: list[str], training_runs: list[Path] | None = None) -> dict[str, Any]:
    """Whether each training run this eval can find decontaminated its data against `data`."""
    fingerprint = held_out_fingerprint(data)
    runs = list(training_runs or [])
    if training_runs is None:
        for spec in models:
            backend, _, path = spec.partition(":")
            if backend == "local" and path and (run := find_run_dir(Path(path))) is not None and run not in runs:
                runs.append(run)
    checked = []
    for run in runs:
        manifest = json.loads((Path(run) / "manifest.json").read_text(encoding="utf-8"))
        screened = {
            entry.get("sha256")
            for stage in manifest.get("stages", []) if stage.get("stage") == "decontaminate"
            for entry in (stage.get("stats") or {}).get("held_out_sets", [])
        }
        checked.append({"run": str(run), "decontaminated": fingerprint in screened})
    if not checked:
        status = "unknown"
    elif all(c["decontaminated"] for c in checked):
        status = "decontaminated"
    else:
        status = "not_decontaminated"
    return {"status": status, "sha256": fingerprint, "runs": checked}


def _warn_or_refuse(contamination: dict[str, Any], require: bool) -> None:
    status = contamination["status"]
    if status == "decontaminated":
        return
    if status == "unknown":
        message = ("eval: WARNING: no training run found for these models, so nobody checked that the held-out "
                   "set was kept out of their training data")
    else:
        bad = ", ".join(c["run"] for c in contamination["runs"] if not c["decontaminated"])
        message = (f"eval: WARNING: {bad}: its training data was NOT decontaminated against this held-out set; "
                   "add a `decontaminate` stage with it in `held_out` and rerun, or the win-rates may be inflated")
    if require:
        raise ValueError(message.replace("WARNING: ", "") + " (require_decontaminated is on)")
    from rich.console import Console

    Console(stderr=True).print(f"[bold red]{message}[/]")


# ---------------------------------------------------------------------------------------------
# output


def summary_table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    if report.get("data") is None:
        return pair_accuracy_table(report)
    table = Table(title=f"datagen eval: {report['prompts']} prompts, judge {report['judge']}")
    for column in ("first vs second", "win-rate", "95% CI", "LC win-rate", "W/T/L", "flips", "unjudged", "words"):
        table.add_column(column, justify="left" if column == "first vs second" else "right")
    for pair in report["pairs"]:
        low, high = pair["ci95"]
        table.add_row(
            f"{pair['first']} vs {pair['second']}",
            _fmt(pair["win_rate"]),
            f"[{_fmt(low)}, {_fmt(high)}]",
            _fmt(pair["lc_win_rate"]),
            f"{pair['wins']}/{pair['ties']}/{pair['losses']}",
            str(pair["order_inconsistent"]),
            str(pair["unjudged"]),
            f"{pair['words_first']:.0f} vs {pair['words_second']:.0f}",
        )
    for spec, loss in report.get("loss", {}).items():
        table.caption = (table.caption + "  " if table.caption else "") + f"loss {spec}: {_fmt(loss.get('loss'))}"
    if any("implicit_reward" in entry or "held_out_pair_accuracy" in entry
           for entry in (report.get("preference") or {}).values()):
        from rich.console import Group

        return Group(table, pair_accuracy_table(report))
    return table


def pair_accuracy_table(report: dict[str, Any]) -> Any:
    """Held-out pair accuracy per model: by implicit reward against the eval's reference model
    (`pairs`), and a DPO step's own figure against its start model (from its training metrics)."""
    from rich.table import Table

    table = Table(title="held-out pair accuracy (chosen preferred by the implicit reward)")
    for column in ("model", "against", "pairs", "pair accuracy", "mean margin"):
        table.add_column(column, justify="left" if column in ("model", "against") else "right")
    preference = report.get("preference") or {}
    reference = next((e["implicit_reward"]["reference"] for e in preference.values() if "implicit_reward" in e), None)
    if reference is not None:
        table.add_row(reference, "(reference)", "-", "-", "-")
    for spec, entry in preference.items():
        if (measured := entry.get("implicit_reward")) is not None:
            table.add_row(spec, measured["reference"], str(measured["pairs"]), _fmt(measured["pair_accuracy"]),
                          _fmt(measured["reward_margin"]))
        if entry.get("held_out_pair_accuracy") is not None:
            table.add_row(spec, "its start model (DPO step, training metrics)", str(entry.get("eval_pairs")),
                          _fmt(entry["held_out_pair_accuracy"]), _fmt(entry.get("held_out_reward_margin")))
    return table


def _words(text: str) -> int:
    return len(text.split())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _short(spec: str) -> str:
    return spec if len(spec) <= 32 else "…" + spec[-31:]
