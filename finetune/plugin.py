"""What the `finetune` package offers datagen's core (registered as the `finetune` plugin).

datagen never imports this package; the pipeline and CLI reach it through
`datagen.plugins.plugin("finetune")`, so the dependency points one way only.
"""

from __future__ import annotations

from finetune.cli import register_cli
from finetune.train import FinetuneConfig, train

__all__ = ["FinetuneConfig", "register_cli", "train"]
