"""Teacher-forced loss of a model on reference answers, measured the way training measures it.

Why here and not in `datagen.eval`: the number is only comparable with the training and eval
losses in `metrics.json` when the conversation is rendered with the same training template
and only the same tokens (assistant turns plus their end-of-turn token, from the template's
`{% generation %}` markers) are scored. So this reuses `finetune.template` and
`finetune.data` exactly as `finetune.train` does, and tokenises like TRL's SFT preprocessing
(`apply_chat_template(..., return_assistant_tokens_mask=True)`).

The result is token-weighted: the summed negative log-likelihood of every scored token over
the number of scored tokens, as the trainer's eval loss is (one example per forward pass,
so no padding or packing can change the number).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from finetune.data import Example

IGNORE = -100


def assistant_labels(tokenizer: Any, template: str, messages: list[dict[str, str]], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for one conversation: labels are the ids on assistant tokens, -100 elsewhere.

    Cut to `max_length` tokens from the left end, like the trainer's truncation."""
    encoded = tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids = list(encoded["input_ids"])[:max_length]
    mask = list(encoded["assistant_masks"])[:max_length]
    return ids, [token if keep else IGNORE for token, keep in zip(ids, mask, strict=True)]


def teacher_forced_loss(
    model_dir: str | Path,
    examples: Sequence[Example],
    chat_template: str | Path | None = None,
    max_length: int = 2048,
    model: Any = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Mean per-token loss of `model_dir` on the assistant turns of `examples`.

    `model` / `tokenizer` may be passed already loaded (tests, or a caller that has them);
    otherwise they are loaded from `model_dir` in float32 on the CPU. Examples with no scored
    token (everything truncated away) are counted in `skipped`.
    """
    import torch

    from finetune.template import resolve_training_template

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if model is None:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    template = resolve_training_template(tokenizer, chat_template, [ex["messages"] for ex in examples])
    was_training = model.training
    model.eval()
    total_nll, total_tokens, skipped = 0.0, 0, 0
    per_example: list[float | None] = []
    with torch.inference_mode():
        for example in examples:
            ids, labels = assistant_labels(tokenizer, template.template, example["messages"], max_length)
            # Position t predicts token t+1: the first token is never scored.
            scored = sum(1 for label in labels[1:] if label != IGNORE)
            if not scored:
                skipped += 1
                per_example.append(None)
                continue
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, :-1].float()
            target = torch.tensor(labels[1:], device=model.device)
            nll = torch.nn.functional.cross_entropy(logits, target, ignore_index=IGNORE, reduction="sum").item()
            total_nll += nll
            total_tokens += scored
            per_example.append(round(nll / scored, 5))
    if was_training:
        model.train()
    loss = total_nll / total_tokens if total_tokens else None
    return {
        "loss": None if loss is None else round(loss, 5),
        "perplexity": None if loss is None else round(math.exp(min(loss, 50.0)), 3),
        "tokens": total_tokens,
        "examples": len(examples) - skipped,
        "skipped": skipped,
        "chat_template_source": template.source,
        "per_example": per_example,
    }
