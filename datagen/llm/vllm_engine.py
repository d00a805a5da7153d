"""In-process vLLM: the whole batch goes to `LLM.chat` at once and `n` is native.

vLLM schedules continuous batching itself, so handing it every request of a stage in one
call is what makes it fast; we only translate request/result types. Requests that differ in
sampling settings simply carry their own `SamplingParams` (vLLM accepts one per prompt).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from datagen.llm.base import ChatRequest, Completion, ResultCallback


class VLLMEngine:
    backend = "vllm"
    supports_json_schema = True

    def __init__(self, model: str, **engine_kwargs: Any):
        self.model = model
        self.name = f"vllm:{model}"
        self.engine_kwargs = engine_kwargs
        self._llm: Any = None

    def _load(self) -> Any:
        if self._llm is None:
            try:
                from vllm import LLM
            except ImportError as exc:
                raise RuntimeError("the vllm backend needs vLLM: pip install 'datagen[vllm]'") from exc
            self._llm = LLM(model=self.model, **self.engine_kwargs)
        return self._llm

    def sampling_params(self, req: ChatRequest) -> Any:
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
        self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        return await asyncio.to_thread(self._generate_all, list(requests), on_result)

    def _generate_all(self, requests: list[ChatRequest], on_result: ResultCallback | None) -> list[Completion]:
        results: list[Completion] = []
        try:
            llm = self._load()
            outputs = llm.chat(
                [r.message_dicts() for r in requests],
                sampling_params=[self.sampling_params(r) for r in requests],
                use_tqdm=True,
            )
        except Exception as exc:  # noqa: BLE001 - the batch fails as counted errors, not a crash
            results = [Completion(error=f"vllm_error: {exc}") for _ in requests]
        else:
            for output in outputs:
                choices = sorted(output.outputs, key=lambda o: o.index)
                results.append(
                    Completion(
                        texts=[c.text for c in choices],
                        finish_reasons=[c.finish_reason or "stop" for c in choices],
                        prompt_tokens=len(output.prompt_token_ids or []),
                        completion_tokens=sum(len(c.token_ids) for c in choices),
                    )
                )
        if on_result:
            for i, completion in enumerate(results):
                on_result(i, completion)
        return results

    def close(self) -> None:
        self._llm = None


def _json_schema(req: ChatRequest) -> dict[str, Any] | None:
    fmt = req.response_format_dict()
    if not fmt or fmt.get("type") != "json_schema":
        return None
    schema = fmt.get("json_schema", {}).get("schema")
    return json.loads(json.dumps(schema)) if schema else None
