"""Shared helpers for the finetune tests: the embedded tokenizer and a tiny random Llama.

The tiny model has the real vocabulary (so it works with the real tokenizer and template) but
2 layers of width 64: building a trainer or running a forward pass takes milliseconds."""

from __future__ import annotations

import copy
import functools
from typing import Any


@functools.lru_cache(maxsize=1)
def _smol_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from datagen.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(embedded_model_dir())


def smol_tokenizer() -> Any:
    """A fresh copy each call: trainers and tests change `chat_template` and `padding_side`."""
    return copy.deepcopy(_smol_tokenizer())


def tiny_llama(vocab_size: int, seed: int = 0) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        # Wider than the usual 0.02 so attention is far from uniform: a leak across packed
        # examples then changes the loss visibly (the negative control in the packing test).
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    return LlamaForCausalLM(config).float()


CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "Name three primary colours."}, {"role": "assistant", "content": "Red, blue and yellow."}],
    [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ],
    [
        {"role": "user", "content": "Let's count."},
        {"role": "assistant", "content": "One."},
        {"role": "user", "content": "Next?"},
        {"role": "assistant", "content": "Two.\nThen three."},
        {"role": "user", "content": "And in French?"},
        {"role": "assistant", "content": "Un, deux, trois."},
    ],
    [
        {"role": "user", "content": "Write a haiku about rain on a tin roof at night, please."},
        {"role": "assistant", "content": "Tin roof drums softly\nnight rain counts its silver beats\nsleep comes in between"},
    ],
    [
        {"role": "user", "content": "Translate to German: good morning"},
        {"role": "assistant", "content": "Guten Morgen — ¡y en español, buenos días! 日本語: おはよう"},
    ],
    [
        {"role": "user", "content": "Give me JSON with a and b."},
        {"role": "assistant", "content": '{"a": 1, "b": [2, 3]}'},
        {"role": "user", "content": "Now with {{ braces }} in a string."},
        {"role": "assistant", "content": '{"s": "{{ braces }}"}'},
    ],
]


def examples(conversations: list[list[dict[str, str]]] | None = None) -> list[dict[str, Any]]:
    return [{"id": f"ex{i}", "messages": m} for i, m in enumerate(conversations or CONVERSATIONS)]
