"""The pipeline's `finetune:` section as steps: one mapping (one step) or a list (SFT then DPO).

Several layers need the same answer to "which model folders does this run train, from what":
the runner trains them (`pipeline.finetune_step`), eval compares them, the report draws them.
A step's folder is its `step_dir`, else `model` for the first step and `model_<objective>`
for a later one (`model_<objective>_<k>` when that is taken). A later step without a
`base_model` starts from the previous step's saved model: DPO after SFT tunes the SFT model,
and since the reference model is the start model, DPO is measured against the SFT model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class FinetuneStep:
    index: int
    folder: str  # in the run directory
    options: dict[str, Any]  # FinetuneConfig options as written (base_model filled in for chained steps)
    starts_from: str | None  # the earlier step's folder this one continues, or None


def finetune_steps(section: dict[str, Any] | list[dict[str, Any]] | None) -> list[FinetuneStep]:
    """The steps of a `finetune:` section, folders resolved; [] when there is no section."""
    if section is None:
        return []
    raw = [section] if isinstance(section, dict) else list(section)
    steps: list[FinetuneStep] = []
    taken: set[str] = set()
    for index, options in enumerate(raw):
        options = dict(options or {})
        folder = str(options.get("step_dir") or ("model" if index == 0 else f"model_{objective_of(options)}"))
        base = folder
        number = 2
        while folder in taken:
            folder, number = f"{base}_{number}", number + 1
        taken.add(folder)
        starts_from = None
        if steps and not options.get("base_model"):
            starts_from = steps[-1].folder
        steps.append(FinetuneStep(index, folder, options, starts_from))
    return steps


def objective_of(options: dict[str, Any]) -> str:
    """"sft" or "dpo" for a step's options (`method: dpo` is short for objective dpo)."""
    return "dpo" if options.get("method") == "dpo" else str(options.get("objective") or "sft")


HELD_OUT_KEYS = ("held_out_pair_accuracy", "held_out_reward_margin", "eval_pairs", "beta", "loss_type")


def dpo_held_out(run_dir: Path, steps: list[FinetuneStep]) -> dict[str, dict[str, Any]]:
    """For each finished DPO step (by its `local:` model spec): the share of held-out pairs whose
    implicit reward prefers the chosen answer, and the mean reward margin (its metrics.json)."""
    out = {}
    for step in steps:
        path = run_dir / step.folder / "metrics.json"
        if objective_of(step.options) == "dpo" and path.exists():
            metrics = json.loads(path.read_text(encoding="utf-8"))
            out[f"local:{run_dir / step.folder}"] = {k: metrics.get(k) for k in HELD_OUT_KEYS}
    return out
