"""The `local` backend: generation with transformers on the CPU (or a GPU), for the embedded
default (`datagen.embedded`: SmolLM2-135M, nothing to configure) or any HF folder given as
`local:PATH`. Every request of a call shares one continuously refilled batch
(`datagen.llm.local_engine`), whatever its sampling settings or kind: a chat request is
rendered with the model's chat template, a raw prompt (`PromptRequest`) is tokenized as is.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datagen.embedded import GGUF_NAME, embedded_model_dir, gguf_package_dir
from datagen.llm.base import Completion, PromptRequest, Request, ResultCallback
from datagen.paths import folder_fingerprint


class LocalLLM:
    """Continuous-batching generation with transformers; `batch_size` rows decode at once."""

    backend = "local"
    supports_json_schema = False

    def __init__(self, model: str | None = None, batch_size: int = 64, dtype: str = "bfloat16",
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
        self.decode_steps = 0  # batched decode steps so far (bench/local_engine.py reads it)

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
            from datagen.llm.local_kv import use_grouped_decode_attention

            use_grouped_decode_attention(self._model)

    async def generate(
        self, requests: Sequence[Request], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        """All requests go to one continuous batcher on a worker thread; each completion is
        handed to `on_result` on this event loop (the cache commits it there) the moment its
        last sample ends, not when the whole call ends."""
        results: list[Completion | None] = [None] * len(requests)
        if not requests:
            return []
        loop = asyncio.get_running_loop()
        landed: asyncio.Queue[tuple[int, Completion] | None] = asyncio.Queue()

        def deliver(index: int, completion: Completion) -> None:
            loop.call_soon_threadsafe(landed.put_nowait, (index, completion))

        def work() -> None:
            try:
                self._decode(requests, deliver)
            except Exception as exc:  # a model failure must not lose what already landed
                error = f"local_error: {type(exc).__name__}: {exc}"
                loop.call_soon_threadsafe(landed.put_nowait, (-1, Completion(error=error)))
            finally:
                loop.call_soon_threadsafe(landed.put_nowait, None)

        worker = asyncio.create_task(asyncio.to_thread(work))
        failure: Completion | None = None
        while (item := await landed.get()) is not None:
            index, completion = item
            if index < 0:
                failure = completion
                continue
            results[index] = completion
            if on_result:
                on_result(index, completion)
        await worker
        for index, result in enumerate(results):
            if result is None:
                results[index] = failure or Completion(error="local_error: no result")
                if on_result:
                    on_result(index, results[index])
        return [r for r in results if r is not None]

    def _decode(self, requests: Sequence[Request], deliver: ResultCallback) -> None:
        from datagen.llm.local_engine import ContinuousBatcher, Finished, Job

        self._load()
        tok = self._tokenizer
        jobs = []
        for index, req in enumerate(requests):
            if isinstance(req, PromptRequest):  # raw text: continued as is, no template around it
                prompt = req.prompt
            else:
                prompt = tok.apply_chat_template(req.message_dicts(), tokenize=False, add_generation_prompt=True)
            jobs.append(Job(
                index=index,
                prompt_ids=tok(prompt, add_special_tokens=False)["input_ids"],
                # Greedy samples would all be equal: decode once and repeat it n times.
                samples=req.n if req.temperature > 0 else 1,
                max_tokens=req.max_tokens,
                temperature=req.temperature,
                top_p=req.top_p,
                stops=tuple(req.stop),
                seed=req.seed,
            ))
        done: dict[int, dict[int, Finished]] = {}

        def sequence_done(job: Job, sample: int, finished: Finished) -> None:
            samples = done.setdefault(job.index, {})
            samples[sample] = finished
            if len(samples) == job.samples:
                del done[job.index]
                deliver(job.index, self._completion(requests[job.index], job, samples))

        batcher = ContinuousBatcher(self._model, tok, max_batch=self.batch_size)
        try:
            batcher.run(jobs, sequence_done)
        finally:
            self.decode_steps += batcher.steps

    def _completion(self, req: Request, job: Any, samples: dict[int, Any]) -> Completion:
        texts, reasons, used = [], [], 0
        for k in range(req.n):
            finished = samples[k if job.samples > 1 else 0]
            used += len(finished.tokens)
            text = self._tokenizer.decode(finished.tokens, skip_special_tokens=True)
            reason = finished.reason
            for stop in req.stop:
                cut = text.find(stop)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
            texts.append(text.strip())
            reasons.append(reason)
        return Completion(texts=texts, finish_reasons=reasons, prompt_tokens=len(job.prompt_ids),
                          completion_tokens=used)

    def close(self) -> None:
        self._model = None
