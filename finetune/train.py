"""Supervised fine-tuning (LoRA or full) with TRL's `SFTTrainer` + PEFT.

We configure TRL rather than re-implement it: chat examples go in as `{"messages": [...]}`,
TRL renders them with the (training) chat template, masks everything but the assistant turns
(`assistant_only_loss`), packs them with best-fit decreasing (`packing_strategy="bfd"`, which is
padding-free with position ids reset per example, so examples never attend to each other),
and adds NEFTune noise when asked. What this module adds is the glue a dataset tool needs:
a validated config with sensible defaults, a held-out eval loss before and after, the outputs
a user wants (adapter, merged model, tokenizer, metrics, base-vs-tuned sample answers), and an
output folder that only appears once everything in it is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datagen.records import Record
from finetune.config import FinetuneConfig
from finetune.data import (
    load_records,
    records_to_examples,
    split_examples,
)
from finetune.train_loop import train_into, write_json

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- training


def train(
    records: Sequence[Record] | str | Path,
    config: FinetuneConfig | None = None,
    out_dir: str | Path = "model",
    progress: bool = True,
    wait: bool = False,
) -> dict[str, Any]:
    """Fine-tune on `records` (or a data file) and write everything to `out_dir`; returns the metrics.

    `out_dir` appears only when training and saving succeeded: all files are written to a hidden
    sibling folder that is renamed at the end, so a crashed run never looks finished. An existing
    finished result in `out_dir` is replaced; any other non-empty folder there is refused. On a
    machine other than machine 0 of a multi-machine run nothing is written: its processes trained
    their share, machine 0 saves the result; the returned summary says `saved: False`.
    One training per `out_dir`: while another process trains into it, this one raises
    `FolderBusy` (exit 2), or with `wait` waits for it to end.
    """
    config = config or FinetuneConfig()
    if config.machine_rank > 0:  # writes nothing; machine 0 holds the output folder
        return _train_and_publish(records, config, Path(out_dir), progress)
    from datagen.run_lock import hold, lock_file_beside

    with hold(lock_file_beside(Path(out_dir)), "datagen finetune", what=str(out_dir), wait=wait):
        return _train_and_publish(records, config, Path(out_dir), progress)


def _train_and_publish(
    records: Sequence[Record] | str | Path, config: FinetuneConfig, out: Path, progress: bool
) -> dict[str, Any]:
    _check_out_dir(out)
    started = time.time()
    if config.objective == "dpo":
        from finetune.dpo import load_pairs, pair_rows, split_pairs

        rows = pair_rows(load_pairs(records), config.system_prompt)
        train_ex, eval_ex = split_pairs(rows, config.eval_fraction, config.seed)
    else:
        examples, stats = records_to_examples(load_records(records), config.system_prompt)
        if not examples:
            raise ValueError(f"no trainable examples: {stats.skipped or 'no records'} (every record needs an output)")
        train_ex, eval_ex = split_examples(examples, config.eval_fraction, config.seed)

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    from transformers.utils import logging as hf_logging

    hf_bars = hf_logging.is_progress_bar_enabled()
    if not progress:
        hf_logging.disable_progress_bar()  # "Loading weights" etc.
    try:
        if config.objective == "dpo":
            from finetune.dpo import dpo_into

            metrics = dpo_into(tmp, train_ex, eval_ex, config, progress)  # type: ignore[arg-type]
        elif config.launcher == "accelerate":
            from finetune.distributed import launch

            metrics = launch(tmp, train_ex, eval_ex, stats, config, progress)
            if config.machine_rank > 0:
                shutil.rmtree(tmp, ignore_errors=True)
                return metrics
        else:
            metrics = train_into(tmp, train_ex, eval_ex, stats, config, progress)
        metrics["total_seconds"] = round(time.time() - started, 2)
        write_json(tmp / "metrics.json", metrics)
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if hf_bars:
            hf_logging.enable_progress_bar()
    return metrics


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "metrics.json").exists())):
        raise ValueError(f"{out}: exists and is not a finished fine-tuning result; choose another --out")


def _publish(tmp: Path, out: Path) -> None:
    """Swap the finished folder into place; an older result there is removed only afterwards."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
