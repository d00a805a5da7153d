"""Fine-tune a model on datagen records: TRL SFTTrainer + PEFT (LoRA or full).

    from finetune.train import FinetuneConfig, train
    metrics = train(records_or_path, FinetuneConfig(method="lora"), "out/model")

Heavy libraries (torch, transformers, trl) are imported only when training starts, so importing
the config is cheap. (`train` is deliberately not re-exported here: it would shadow the
`finetune.train` module.)
"""

from finetune.train import FinetuneConfig

__all__ = ["FinetuneConfig"]
