"""IFD (instruction-following difficulty, Li et al. 2023): how much the instruction helps a
model predict the answer. A ratio near or above 1 means the answer does not depend on the
instruction, a sign of a mismatched pair. Local forward passes only; off by default.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from datagen.records import Record

# ---------------------------------------------------------------------------------------------
# IFD: how much the instruction helps a model predict the answer

_IFD_MODELS: dict[str, tuple[Any, Any]] = {}
_IFD_LOCK = threading.Lock()


def load_causal_lm(path: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) for IFD, loaded once per process. None = embedded SmolLM2 folder."""
    if path is None:
        from datagen.embedded import embedded_model_dir

        path = str(embedded_model_dir())
    with _IFD_LOCK:
        if path not in _IFD_MODELS:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            model.eval()
            _IFD_MODELS[path] = (tokenizer, model)
        return _IFD_MODELS[path]


def _assistant_header(tokenizer: Any) -> str:
    """The text a chat template puts before an assistant turn ("<|im_start|>assistant\\n")."""
    probe = [{"role": "user", "content": "x"}]
    try:
        with_gen = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
    except Exception:  # no chat template: plain LM
        return tokenizer.bos_token or tokenizer.eos_token or ""
    if with_gen.startswith(without) and len(with_gen) > len(without):
        return with_gen[len(without) :]
    return tokenizer.bos_token or tokenizer.eos_token or ""


def _answer_nll(model: Any, prefix_ids: list[int], answer_ids: list[int]) -> float:
    """Mean negative log-likelihood of `answer_ids` following `prefix_ids`."""
    import torch

    ids = torch.tensor([prefix_ids + answer_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0]
    start = len(prefix_ids)
    pred = logits[start - 1 : start - 1 + len(answer_ids)].float()
    target = ids[0, start : start + len(answer_ids)]
    return float(torch.nn.functional.cross_entropy(pred, target))


def ifd_score(record: Record, tokenizer: Any, model: Any, max_tokens: int = 512) -> dict[str, float] | None:
    """IFD = PPL(answer | instruction) / PPL(answer), both over the same answer tokens.

    The unconditioned answer follows only the assistant header, so both perplexities score
    exactly the same tokens and differ only by the instruction. None for an empty answer.
    """
    answer_ids = tokenizer(record.output.strip(), add_special_tokens=False)["input_ids"][:max_tokens]
    if not answer_ids:
        return None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": record.prompt_text()}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_tokens:]
    header_ids = tokenizer(_assistant_header(tokenizer), add_special_tokens=False)["input_ids"]
    if not header_ids:
        header_ids = [tokenizer.eos_token_id]
    nll_cond = _answer_nll(model, prompt_ids, answer_ids)
    nll_plain = _answer_nll(model, header_ids, answer_ids)
    return {
        "ifd": math.exp(nll_cond - nll_plain),
        "ppl_conditioned": math.exp(nll_cond),
        "ppl_unconditioned": math.exp(nll_plain),
    }
