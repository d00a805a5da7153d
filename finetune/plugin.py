"""What the `finetune` package offers datagen's core (registered as the `finetune` plugin).

datagen never imports this package; the pipeline and CLI reach it through
`datagen.plugins.plugin("finetune")`, so the dependency points one way only.
"""

from __future__ import annotations

from finetune.cli import register_cli
from finetune.data import record_to_example
from finetune.dpo import implicit_reward_accuracy, load_pairs
from finetune.loss import teacher_forced_loss
from finetune.train import FinetuneConfig, train
from finetune.trainer_setup import resolve_base_model

__all__ = ["FinetuneConfig", "implicit_reward_accuracy", "load_pairs", "record_to_example", "register_cli", "resolve_base_model", "teacher_forced_loss", "train"]
