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

import sys
from typing import Any, TextIO

from datagen.llm.budget import rates
from datagen.plan import Records, StagePlan, text_tokens
from datagen.registry import resolve


def plan(pipeline: Any) -> list[StagePlan]:
    """Every stage's plan, in order, from the pipeline's input and config."""
    cfg = pipeline.config
    records, _ = pipeline.load_input()
    flow = Records(
        count=len(records),
        instruction_tokens=max((text_tokens(r.instruction + "\n" + (r.input or "")) for r in records), default=0),
        output_tokens=max((text_tokens(r.output or "") for r in records), default=0),
        turns=max((sum(m.role == "user" for m in r.messages or []) for r in records), default=1) or 1,
    )
    plans = []
    for spec in cfg.stage_specs():
        stage = resolve(spec.name).plan(flow, spec.config, cfg.llm, cfg.prompts_dir)
        stage.label = spec.label
        plans.append(stage)
        flow = stage.out or flow
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
