"""datagen: seed tasks in, curated instruction-tuning data and a fine-tuned model out."""

__version__ = "0.1.0"
