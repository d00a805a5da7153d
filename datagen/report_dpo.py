"""The report's preference-tuning section: each DPO step's loss and reward-margin curves and
its held-out pair accuracy. Apart from `report.py` because only runs with a DPO step have it,
and the figures it shows (margins, pair accuracy) mean nothing for an SFT step."""

from __future__ import annotations

import html
from typing import Any

from datagen.svg import svg_lines

DPO_METRICS = ("folder", "method", "base_model", "reference", "beta", "loss_type", "learning_rate", "train_pairs",
               "eval_pairs", "steps", "train_loss", "held_out_pair_accuracy", "held_out_reward_margin",
               "trainable_params", "train_seconds", "total_seconds")


def dpo_steps(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The metrics of every DPO step the run trained (one step or a list of steps)."""
    steps = manifest.get("finetune_steps") or ([manifest["finetune"]] if manifest.get("finetune") else [])
    return [s for s in steps if s.get("objective") == "dpo"]


def dpo_section(manifest: dict[str, Any]) -> str:
    parts = []
    for metrics in dpo_steps(manifest):
        accuracy, margin = metrics.get("held_out_pair_accuracy"), metrics.get("held_out_reward_margin")
        before = (metrics.get("held_out_before") or {}).get("pair_accuracy")
        parts.append(f"<h2>Preference tuning (DPO) — <code>{html.escape(str(metrics.get('folder', 'model')))}/</code></h2>")
        if accuracy is not None:
            was = f" (before training {before:.3f})" if isinstance(before, int | float) else ""
            parts.append(f"<p>held-out pair accuracy (chosen preferred by the implicit reward): <b>{accuracy:.3f}</b>"
                         f"{was} on {metrics.get('eval_pairs')} pairs; mean reward margin <b>{margin}</b></p>")
        else:
            parts.append("<p>no held-out pairs (raise eval_fraction to measure pair accuracy)</p>")
        curves = {name: [(float(x), float(y)) for x, y in metrics.get(key) or [] if y is not None]
                  for name, key in (("loss", "loss_curve"), ("reward margin", "reward_margin_curve"),
                                    ("pair accuracy", "train_pair_accuracy_curve"))}
        parts.append(svg_lines(curves, "DPO per optimizer step (training batches)", "step", "value"))
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(metrics[k]))}</td></tr>"
                       for k in DPO_METRICS if metrics.get(k) is not None)
        parts.append(f"<table>{rows}</table>")
    return "".join(parts)
