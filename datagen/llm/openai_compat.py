"""Any OpenAI-compatible endpoint: bounded concurrency, retries that respect the server.

`openai`'s own retry loop is switched off (`max_retries=0`) so that one place decides what
is retried: 429, 5xx, timeouts, dropped connections and unparseable bodies are; 400/401/403/
404/422 are not (retrying a bad request only burns quota). Waits are jittered exponential
unless the server says `Retry-After`. A request that still fails comes back as a
`Completion` with `error` set, so the stage can count it and the rest of the batch survives.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from typing import Any

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)

from datagen.llm.base import ChatRequest, Completion, ResultCallback

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429}


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, openai.APIResponseValidationError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRYABLE_STATUS or exc.status_code >= 500
    if isinstance(exc, (ValueError, EmptyChoicesError)):  # garbage body: JSON decode errors etc.
        return True
    return False


class EmptyChoicesError(RuntimeError):
    """A 200 reply that carries no usable choice: treated like a transient server fault."""


def retry_after_seconds(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return max(0.0, float(raw) * scale)
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
    return None


class _ServerAwareWait:
    """Retry-After when the server sends one (capped), else jittered exponential backoff."""

    def __init__(self, initial: float, maximum: float):
        self.backoff = wait_random_exponential(multiplier=initial, max=maximum)
        self.maximum = maximum

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        told = retry_after_seconds(exc)
        if told is not None:
            return min(told, self.maximum)
        return self.backoff(state)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        return f"http_{exc.status_code}: {str(exc)[:200]}"
    if isinstance(exc, openai.APITimeoutError):
        return "timeout: request timed out"
    if isinstance(exc, openai.APIConnectionError):
        return f"connection: {str(exc)[:200]}"
    return f"bad_response: {type(exc).__name__}: {str(exc)[:200]}"


class OpenAICompatLLM:
    backend = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        max_concurrency: int = 64,
        max_attempts: int = 6,
        timeout: float = 120.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        n_mode: str = "auto",
        supports_json_schema: bool = True,
    ):
        if n_mode not in {"auto", "native", "fanout"}:
            raise ValueError(f"n_mode must be auto, native or fanout, not {n_mode!r}")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.n_mode = n_mode
        self.supports_json_schema = supports_json_schema
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._client: openai.AsyncOpenAI | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatLLM(model={self.model!r}, base_url={self.base_url!r})"

    def _new_client(self) -> openai.AsyncOpenAI:
        import httpx

        limits = httpx.Limits(max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency)
        return openai.AsyncOpenAI(
            base_url=self.base_url,
            api_key=self._api_key,
            max_retries=0,
            timeout=self.timeout,
            http_client=httpx.AsyncClient(limits=limits, timeout=self.timeout),
        )

    async def generate(
        self, requests: Sequence[ChatRequest], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        # A client per call: httpx clients are bound to the loop that made them, and
        # `generate_sync` may run each batch in a fresh loop.
        client = self._new_client()
        semaphore = asyncio.Semaphore(self.max_concurrency)
        results: list[Completion] = [Completion()] * len(requests)

        async def one(i: int, req: ChatRequest) -> None:
            completion = await self._complete(client, semaphore, req)
            results[i] = completion
            if on_result:
                on_result(i, completion)

        try:
            await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))
        finally:
            await client.close()
        return results

    async def _complete(
        self, client: openai.AsyncOpenAI, semaphore: asyncio.Semaphore, req: ChatRequest
    ) -> Completion:
        if self.n_mode == "fanout" and req.n > 1:
            return await self._fan_out(client, semaphore, req, req.n, Completion())
        try:
            completion = await self._call(client, semaphore, req, req.n)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a counted result
            return Completion(error=_describe(exc))
        missing = req.n - len(completion.texts)
        if missing > 0 and self.n_mode == "auto":
            # Some servers silently return one choice for n>1: ask for the rest one by one.
            return await self._fan_out(client, semaphore, req, missing, completion)
        return completion

    async def _fan_out(
        self, client: openai.AsyncOpenAI, semaphore: asyncio.Semaphore, req: ChatRequest, count: int, base: Completion
    ) -> Completion:
        async def single(k: int) -> Completion:
            seed = None if req.seed is None else req.seed + 1000 + k
            sub = ChatRequest(**{**req.__dict__, "n": 1, "seed": seed})
            try:
                return await self._call(client, semaphore, sub, 1)
            except Exception as exc:  # noqa: BLE001
                return Completion(error=_describe(exc))

        parts = await asyncio.gather(*(single(k) for k in range(count)))
        merged = Completion(
            texts=list(base.texts),
            finish_reasons=list(base.finish_reasons),
            prompt_tokens=base.prompt_tokens,
            completion_tokens=base.completion_tokens,
        )
        for part in parts:
            if part.error:
                return Completion(error=part.error)
            merged.texts += part.texts
            merged.finish_reasons += part.finish_reasons
            merged.prompt_tokens += part.prompt_tokens
            merged.completion_tokens += part.completion_tokens
        return merged

    async def _call(
        self, client: openai.AsyncOpenAI, semaphore: asyncio.Semaphore, req: ChatRequest, n: int
    ) -> Completion:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": req.message_dicts(),
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_tokens,
        }
        if n > 1:
            kwargs["n"] = n
        if req.stop:
            kwargs["stop"] = list(req.stop)
        if req.seed is not None:
            kwargs["seed"] = req.seed
        if req.response_format and self.supports_json_schema:
            kwargs["response_format"] = req.response_format_dict()
        retrying = AsyncRetrying(
            retry=retry_if_exception(is_retryable),
            stop=stop_after_attempt(self.max_attempts),
            wait=_ServerAwareWait(self.backoff_initial, self.backoff_max),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                async with semaphore:
                    response = await client.chat.completions.create(**kwargs)
                choices = sorted(response.choices or [], key=lambda c: c.index)
                if not choices or any(c.message is None for c in choices):
                    raise EmptyChoicesError("reply had no choices")
                usage = response.usage
                return Completion(
                    texts=[c.message.content or "" for c in choices],
                    finish_reasons=[c.finish_reason or "stop" for c in choices],
                    prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                    completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
                )
        raise AssertionError("unreachable: tenacity reraises the last error")

    def close(self) -> None:
        pass
