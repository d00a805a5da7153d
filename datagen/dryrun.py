"""`datagen run PIPELINE.yaml --dry-run`: what a run will send and spend, without sending it.

Per stage: requests, prompt and completion tokens, and dollars at the `prices` table, from
the input's real size and each stage's config. Nothing here calls a model. Every number is
an upper bound: replies are assumed to use all of `max_tokens`, every retryable judge reply
to need its retry, every record to survive every filter, and iterative stages
(self_instruct, evol_instruct) to run to their caps; the first stage's prompts are sized from
the real input, later ones from the upper bounds the stage before passes on. Retries of
failed HTTP requests are not counted (they are not billed). Cache hits would make a real
run cheaper still.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, TextIO

from datagen.llm.budget import Rate, rates
from datagen.llm.ratelimit import estimate_prompt_tokens


@dataclass
class Records:
    """What flows between stages, as upper bounds: how many, and tokens per record."""

    count: int
    instruction_tokens: int
    output_tokens: int


@dataclass
class Calls:
    spec: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, requests: int, prompt_each: int, completion_each: int) -> None:
        self.requests += requests
        self.prompt_tokens += requests * prompt_each
        self.completion_tokens += requests * completion_each


@dataclass
class StagePlan:
    label: str
    records_in: int
    records_out: int
    calls: list[Calls] = field(default_factory=list)
    iterative: bool = False

    def usd(self, table: dict[str, Rate], batch: bool = False) -> float | None:
        total, priced = 0.0, False
        for call in self.calls:
            rate = table.get(call.spec)
            if rate is not None:
                priced = True
                total += rate.cost(call.prompt_tokens, call.completion_tokens, batch and call.spec.startswith("openai:"))
            elif call.spec.startswith("openai") and call.requests:
                return None  # a paid endpoint without a price: unknown, not free
        return total if priced or not self.calls else 0.0


def _tokens(text: str) -> int:
    return estimate_prompt_tokens((("user", text),))


def _template(name: str, prompts_dir: str | None) -> int:
    from pathlib import Path

    from datagen.prompts import bundled_prompt

    for file in ([Path(prompts_dir) / f"{name}.txt"] if prompts_dir else []) + [bundled_prompt(f"{name}.txt")]:
        if file.is_file():
            return _tokens(file.read_text(encoding="utf-8"))
    return 0


def plan(pipeline: Any) -> list[StagePlan]:
    """Every stage's plan, in order, from the pipeline's input and config."""
    cfg = pipeline.config
    records, _ = pipeline._load_input()
    flow = Records(
        count=len(records),
        instruction_tokens=max((_tokens(r.instruction + "\n" + (r.input or "")) for r in records), default=0),
        output_tokens=max((_tokens(r.output or "") for r in records), default=0),
    )
    plans = []
    for spec in cfg.stage_specs():
        planner = _PLANNERS.get(spec.name, _no_llm)
        stage = planner(flow, spec.config, cfg.llm, cfg.prompts_dir)
        stage.label = spec.label
        plans.append(stage)
        flow = stage._out  # type: ignore[attr-defined]
    return plans


def print_plan(pipeline: Any, out: TextIO = sys.stdout) -> list[StagePlan]:
    cfg = pipeline.config
    table = rates(cfg.prices)
    plans = plan(pipeline)
    batch = bool(cfg.llm_options.get("openai", {}).get("batch"))
    print(f"dry run of {pipeline.source}: no LLM is called; every figure is an upper bound"
          + ("; openai:* at the Batch API price" if batch else ""), file=out)
    header = (f"{'stage':<22} {'backend':<22} {'requests':>10} {'prompt tok':>13} {'compl. tok':>13} {'USD':>11}"
              f" {'records':>9}")
    print(header, file=out)
    total_usd, unknown = 0.0, False
    for stage in plans:
        usd = stage.usd(table, batch)
        if usd is None:
            unknown = True
        else:
            total_usd += usd
        label = stage.label + (" (iter.)" if stage.iterative else "")
        specs = ",".join(sorted({c.spec for c in stage.calls})) or "-"
        requests = sum(c.requests for c in stage.calls)
        prompt = sum(c.prompt_tokens for c in stage.calls)
        completion = sum(c.completion_tokens for c in stage.calls)
        usd_text = "no price" if usd is None else f"<= {usd:.4f}"
        print(f"{label:<22} {specs:<22} {'<= ' + str(requests):>10} {'<= ' + str(prompt):>13}"
              f" {'<= ' + str(completion):>13} {usd_text:>11} {'<= ' + str(stage.records_out):>9}", file=out)
    line = f"total: <= ${total_usd:.4f}" + (" plus stages without a price" if unknown else "")
    if cfg.budget_usd is not None:
        line += f" against a budget of ${cfg.budget_usd:.2f}"
    print(line, file=out)
    return plans


# ---------------------------------------------------------------- per-stage planners


def _finish(stage: StagePlan, out: Records) -> StagePlan:
    stage._out = out  # type: ignore[attr-defined]
    return stage


def _no_llm(flow: Records, config: Any, default_llm: str, prompts_dir: str | None) -> StagePlan:
    return _finish(StagePlan("", flow.count, flow.count), flow)


def _judge_calls(calls: Calls, count: int, instruction: int, answer: int, max_tokens: int, template: int,
                 retry_template: int) -> None:
    """One judge request per pair, plus (upper bound) one retry each for unparseable replies."""
    calls.add(count, template + instruction + answer, max_tokens)
    calls.add(count, retry_template + instruction + answer + max_tokens, max_tokens)


def _self_instruct(flow: Records, config: Any, default_llm: str, prompts_dir: str | None) -> StagePlan:
    calls = Calls(config.llm or default_llm)
    seed_task = flow.instruction_tokens + flow.output_tokens
    generation = config.request_cap()
    calls.add(generation, _template("self_instruct_generate", prompts_dir) + config.num_prompt_tasks * seed_task,
              config.max_tokens)
    candidates = generation * config.new_per_request
    task_tokens = math.ceil(config.max_words * 2)  # a kept task has at most max_words words
    calls.add(candidates, _template("self_instruct_classify", prompts_dir) + config.classify_examples * seed_task
              + task_tokens, config.classify_max_tokens)
    instance_template = max(_template("self_instruct_instances_cls", prompts_dir),
                            _template("self_instruct_instances_io", prompts_dir))
    calls.add(candidates, instance_template + config.instance_examples * seed_task + task_tokens,
              config.instance_max_tokens)
    out_count = config.num_instructions + (flow.count if config.include_seeds else 0)
    out = Records(out_count, max(task_tokens + config.instance_max_tokens, flow.instruction_tokens),
                  max(config.instance_max_tokens, flow.output_tokens))
    return _finish(StagePlan("", flow.count, out_count, [calls], iterative=True), out)


def _evol_instruct(flow: Records, config: Any, default_llm: str, prompts_dir: str | None) -> StagePlan:
    calls = Calls(config.llm or default_llm)
    ops = [op for op, weight in config.ops.items() if weight > 0] or ["deepen"]
    rewrite_template = max(_template(f"evol_{op}", prompts_dir) for op in ops)
    instruction = flow.instruction_tokens
    for _ in range(config.rounds):  # each round rewrites the last round's (longer) rewrites
        calls.add(flow.count, rewrite_template + instruction, config.max_tokens)
        if config.equality_check:
            calls.add(flow.count, _template("evol_equality_check", prompts_dir) + instruction + config.max_tokens,
                      config.equality_max_tokens)
        if config.answer:
            calls.add(flow.count, config.max_tokens + 8, config.answer_max_tokens)
        instruction = max(instruction, config.max_tokens)
    out_count = flow.count * max(1, config.rounds) if config.keep_all_rounds else flow.count
    out = Records(out_count, instruction, max(flow.output_tokens, config.answer_max_tokens if config.answer else 0))
    return _finish(StagePlan("", flow.count, out_count, [calls], iterative=True), out)


def _distill(flow: Records, config: Any, default_llm: str, prompts_dir: str | None) -> StagePlan:
    teacher = Calls(config.llm or default_llm)
    teacher.add(flow.count, flow.instruction_tokens + 8, config.n * config.max_tokens)
    plans = [teacher]
    if config.ranker == "judge":
        judge = Calls(config.judge or config.llm or default_llm)
        candidates = flow.count * (config.n + (1 if config.include_existing else 0))
        _judge_calls(judge, candidates, flow.instruction_tokens, config.max_tokens, config.judge_max_tokens,
                     _template("judge_rubric", prompts_dir), _template("judge_retry", prompts_dir))
        plans.append(judge)
    out = Records(flow.count, flow.instruction_tokens, max(flow.output_tokens, config.max_tokens))
    return _finish(StagePlan("", flow.count, flow.count, _merge_same_spec(plans)), out)


def _quality(flow: Records, config: Any, default_llm: str, prompts_dir: str | None) -> StagePlan:
    calls = []
    if config.judge:
        judge = Calls(config.llm or default_llm)
        _judge_calls(judge, flow.count, flow.instruction_tokens, flow.output_tokens, config.judge_max_tokens,
                     _template("quality_judge", prompts_dir), _template("judge_retry", prompts_dir))
        calls.append(judge)
    return _finish(StagePlan("", flow.count, flow.count, calls), flow)


def _merge_same_spec(calls: list[Calls]) -> list[Calls]:
    merged: dict[str, Calls] = {}
    for call in calls:
        into = merged.setdefault(call.spec, Calls(call.spec))
        into.requests += call.requests
        into.prompt_tokens += call.prompt_tokens
        into.completion_tokens += call.completion_tokens
    return list(merged.values())


_PLANNERS = {
    "self_instruct": _self_instruct,
    "evol_instruct": _evol_instruct,
    "distill": _distill,
    "quality": _quality,
}
