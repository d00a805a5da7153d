"""In-process vLLM: the whole batch goes to the engine at once and `n` is native.

vLLM schedules continuous batching itself, so handing it every request of a stage in one
call is what makes it fast; we only translate request/result types. Requests that differ in
sampling settings simply carry their own `SamplingParams` (vLLM accepts one per prompt).

Each request is reported the moment the engine finishes it (`enqueue_chat` + `step`), not
when the whole batch is done, so the cache commits it at once and a crash in the middle of
a 10,000-request batch loses only the requests still running. A failure to load the engine
(vLLM missing, unknown model) is fatal: no request of the run could succeed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from datagen.errors import FatalLLMError, classify_bad_request
from datagen.llm.base import Completion, PromptRequest, Request, ResultCallback
from datagen.paths import folder_fingerprint

# Engine options that change how fast answers come, never what they say: kept out of the
# cache identity, so tuning them never invalidates a cache.
SPEED_ONLY_OPTIONS = frozenset({
    "gpu_memory_utilization", "max_num_seqs", "max_num_batched_tokens", "enforce_eager", "swap_space",
    "cpu_offload_gb", "disable_log_stats", "enable_prefix_caching", "enable_chunked_prefill", "block_size",
    "tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "distributed_executor_backend",
    "disable_custom_all_reduce", "max_seq_len_to_capture", "compilation_config", "use_tqdm",
})


class VLLMEngine:
    backend = "vllm"
    supports_json_schema = True

    def __init__(self, model: str, **engine_kwargs: Any):
        self.model = model
        self.name = f"vllm:{model}"
        self.engine_kwargs = engine_kwargs
        self._llm: Any = None

    def cache_identity(self) -> dict[str, Any]:
        """The weights (fingerprint of a local folder, or the hub id) and every engine option
        that can change an answer (dtype, quantization, max_model_len, seed, revision...)."""
        options = {k: v for k, v in sorted(self.engine_kwargs.items()) if k not in SPEED_ONLY_OPTIONS}
        return {"weights": folder_fingerprint(self.model), "options": options}

    def _load(self) -> Any:
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError:
                raise FatalLLMError(
                    "the vllm backend needs vLLM in this environment: pip install 'datagen[vllm]'"
                ) from None
            try:
                self._llm = LLM(model=self.model, **self.engine_kwargs)
            except Exception as exc:  # noqa: BLE001 - unknown model, bad option, no memory: all fatal
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise FatalLLMError(f"vLLM could not load model '{self.model}': {first_line[:300]}") from None
        return self._llm

    def sampling_params(self, req: Request) -> Any:
        from vllm import SamplingParams

        kwargs: dict[str, Any] = {
            "n": req.n,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_tokens,
            "seed": req.seed,
        }
        if req.stop:
            kwargs["stop"] = list(req.stop)
        schema = _json_schema(req)
        if schema is not None:
            try:
                from vllm.sampling_params import StructuredOutputsParams

                kwargs["structured_outputs"] = StructuredOutputsParams(json=schema)
            except ImportError:  # older vLLM
                from vllm.sampling_params import GuidedDecodingParams

                kwargs["guided_decoding"] = GuidedDecodingParams(json=schema)
        return SamplingParams(**kwargs)

    async def generate(
        self, requests: Sequence[Request], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        return await asyncio.to_thread(self._generate_all, list(requests), on_result)

    def _generate_all(self, requests: list[Request], on_result: ResultCallback | None) -> list[Completion]:
        llm = self._load()
        results: list[Completion | None] = [None] * len(requests)

        def land(i: int, completion: Completion) -> None:
            results[i] = completion
            if on_result:
                on_result(i, completion)

        params = [self.sampling_params(r) for r in requests]
        raw = [i for i, r in enumerate(requests) if isinstance(r, PromptRequest)]
        chats = [i for i, r in enumerate(requests) if not isinstance(r, PromptRequest)]
        try:
            if raw:  # raw prompts: `LLM.generate` continues each string as is (no chat template)
                prompts = [requests[i].prompt for i in raw]  # type: ignore[union-attr]
                outputs = llm.generate(prompts, sampling_params=[params[i] for i in raw], use_tqdm=True)
                for i, output in zip(raw, outputs, strict=True):
                    land(i, _completion(output))
            messages = [requests[i].message_dicts() for i in chats]  # type: ignore[union-attr]
            if chats and hasattr(llm, "enqueue_chat"):
                self._stream(llm, messages, [params[i] for i in chats],
                             lambda j, completion: land(chats[j], completion))
            elif chats:  # older vLLM: results only at the end of the batch
                chat_params = [params[i] for i in chats]
                for j, output in enumerate(llm.chat(messages, sampling_params=chat_params, use_tqdm=True)):
                    land(chats[j], _completion(output))
        except Exception as exc:  # noqa: BLE001 - the unfinished rest fail as counted errors
            for i, result in enumerate(results):
                if result is None:
                    land(i, Completion(error=f"vllm_error: {str(exc)[:300]}"))
        return [r if r is not None else Completion(error="vllm_error: no output") for r in results]

    def _stream(self, llm: Any, messages: list[Any], params: list[Any], land: ResultCallback) -> None:
        """Queue every request, then step the engine and hand out each one as it finishes.

        Requests are queued one by one: vLLM validates at queue time, and a prompt longer
        than the model's context must fail alone (`context_too_long`), not sink the batch."""
        from tqdm.auto import tqdm

        index_of: dict[str, int] = {}
        for i, (conversation, sampling) in enumerate(zip(messages, params, strict=True)):
            try:
                [rid] = llm.enqueue_chat([conversation], sampling_params=[sampling], use_tqdm=False)
            except Exception as exc:  # noqa: BLE001 - this request's own problem
                text = " ".join(str(exc).split())[:300]
                land(i, Completion(error=f"{classify_bad_request(text) or 'vllm_error'}: {text}"))
                continue
            # vLLM returns its internal id ("7-1a2b3c4d": ours plus a random suffix) while the
            # outputs carry the external one ("7"): accept either spelling.
            index_of[str(rid)] = i
            index_of.setdefault(str(rid).split("-", 1)[0], i)
        engine = llm.llm_engine
        with tqdm(total=len(messages), desc="vllm", unit="req", dynamic_ncols=True) as bar:
            while engine.has_unfinished_requests():
                for output in engine.step():
                    if output.finished and str(output.request_id) in index_of:
                        land(index_of[str(output.request_id)], _completion(output))
                        bar.update(1)

    def close(self) -> None:
        self._llm = None


def _completion(output: Any) -> Completion:
    choices = sorted(output.outputs, key=lambda o: o.index)
    return Completion(
        texts=[c.text for c in choices],
        finish_reasons=[c.finish_reason or "stop" for c in choices],
        prompt_tokens=len(output.prompt_token_ids or []),
        completion_tokens=sum(len(c.token_ids) for c in choices),
    )


def _json_schema(req: Request) -> dict[str, Any] | None:
    fmt = req.response_format_dict()
    if not fmt or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("json_schema", {}).get("schema")
    return json.loads(json.dumps(schema)) if schema else None
