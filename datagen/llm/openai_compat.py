"""Any OpenAI-compatible endpoint: bounded concurrency, retries that respect the server.

One place decides what is retried: 429, 408/409/425, 5xx, timeouts, dropped connections
and unparseable or empty bodies are; 400/401/403/404/422 are not (retrying a bad request
only burns quota). Waits are jittered exponential unless the server says `Retry-After`.
A request that still fails comes back as a `Completion` with `error` set, so the stage can
count it and the rest of the batch survives.

Some failures are not one request's: a wrong key (401/403), a model the server does not
serve (404), a request shape the server rejects every time (the same 400 for different
requests), or an endpoint that refuses every connection. Those raise `FatalLLMError` after
cancelling everything not yet answered, so a run stops within the requests in flight
instead of turning thousands of paid calls into dropped records.

Why aiohttp and not the `openai` SDK: the SDK spends 1.4-3.7 ms of CPU per request on
request transformation, response models and (with httpx) a connection pool that scans every
connection on each request. At 256 requests in flight against a 200 ms server that is the
bottleneck (1280 req/s needs < 0.8 ms per request); a plain aiohttp POST costs ~0.2 ms.
The wire format is just the documented `POST {base_url}/chat/completions`, and for raw
prompts (`PromptRequest`, Magpie) `POST {base_url}/completions`; a chat-only server that
answers 404 there while it serves the model stops the run with one line saying so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from yarl import URL

from datagen.errors import FatalLLMError, classify_bad_request
from datagen.llm.base import Completion, PromptRequest, Request, ResultCallback
from datagen.llm.budget import Budget, BudgetExceeded, Rate
from datagen.llm.endpoint_options import EndpointOptions
from datagen.llm.ratelimit import RequestLimiter, estimate_prompt_tokens
from datagen.llm.wire import (
    HTTPStatusError,
    _Cancelled,
    _describe,
    _error_message,
    _merge,
    _message_shape,
    is_retryable,
    parse_chat_completion,
    parse_text_completion,
    retry_after_seconds,
    retry_wait,
)

log = logging.getLogger(__name__)

# The same 400 for this many different requests, before the endpoint has answered any request
# at all, means the request shape is wrong (a bad option, max_tokens beyond the model), not
# the records. Once it has answered, a 400 is one record's, and `max_error_rate` watches them.
REPEATED_BAD_REQUEST_LIMIT = 3
# "Too long" / "filtered" are normally one record's; only this many in a row with no answer is a shape error.
REPEATED_PER_RECORD_LIMIT = 8
# This many requests in a row failing to connect at all (after their retries): the endpoint is gone.
UNREACHABLE_LIMIT = 16
# The server's queue, as inference servers export it on `GET /metrics` (Prometheus text).
QUEUE_METRICS = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
QUEUE_POLL_SECONDS = 1.0
# Requests in progress (sending, waiting for a slot or a retry) per concurrency slot.
WORKERS_PER_SLOT = 2
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class OpenAICompatLLM:
    backend = "openai"

    def __init__(
        self,
        model: str,
        options: EndpointOptions | None = None,
        *,
        api_key: str | None = None,
        limiter: RequestLimiter | None = None,
        budget: Budget | None = None,
        price: Rate | None = None,
    ):
        """`options`: what the endpoint is and how to talk to it; `limiter` and `budget`: the run's
        rate and cost gates, passed in (under Ray they are the cluster's permit gate's stand-ins)."""
        self.options = options or EndpointOptions()
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = self.options.transport.url
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        # Set once a server answers n>1 with fewer choices (llama.cpp does): from then on
        # the extra samples are requested right away, in parallel, instead of after a round trip.
        self._server_ignores_n = False
        # Fail-fast state: the first fatal error stops every later request of this backend.
        self._fatal: FatalLLMError | None = None
        self._fatal_detail: asyncio.Future[str] | None = None
        self._bad_request_counts: dict[str, int] = {}
        self._unreachable_in_a_row = 0
        self._answered = 0
        # None: not asked yet; False: the endpoint serves no queue metric (never asked again).
        self._queue_metrics: bool | None = None if self.options.limits.queue_metrics else False
        self._urls: dict[str, URL | str] = {}
        # One limiter per backend instance, shared by every batch (datagen/llm/ratelimit.py).
        self.limiter = limiter if limiter is not None else self.options.limiter()
        self.budget = budget
        self.price = price

    @classmethod
    def from_flat(cls, model: str, options: dict[str, Any]) -> OpenAICompatLLM:
        """From options as users write them (`llm_options.openai`, CLI flags), flat."""
        rest = dict(options)
        gates = {key: rest.pop(key) for key in ("api_key", "limiter", "budget", "price") if key in rest}
        return cls(model, EndpointOptions.from_flat(rest), **gates)

    @property
    def max_concurrency(self) -> int:
        return self.options.transport.max_concurrency

    @property
    def timeout(self) -> float:
        return self.options.transport.timeout

    @property
    def supports_json_schema(self) -> bool:
        return self.options.supports_json_schema

    @property
    def n_mode(self) -> str:
        return self.options.n_mode

    @property
    def batch(self) -> bool:
        return self.options.batch.enabled

    # `generate` reads its requests as they are taken (len() only sizes its results and crew),
    # so `CachedLLM` can hand it a stream whose keys are looked up while the first calls fly.
    streams_requests = True

    def cache_identity(self) -> dict[str, Any]:
        return self.options.identity()

    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatLLM(model={self.model!r}, base_url={self.base_url!r})"

    def _url(self, route: str) -> URL | str:
        """The endpoint's URL, parsed once: aiohttp would parse a string again for every request."""
        url = self._urls.get(route)
        if url is None:
            text = f"{self.base_url}/{route}"
            try:
                url = URL(text)
            except ValueError:  # left to aiohttp, which reports it per request as before
                url = text
            self._urls[route] = url
        return url

    def _new_session(self) -> aiohttp.ClientSession:
        # One pooled connection per concurrent request; more would only idle.
        connector = aiohttp.TCPConnector(limit=self.max_concurrency, limit_per_host=0, ttl_dns_cache=300)
        return aiohttp.ClientSession(
            connector=connector,
            # Honour HTTP(S)_PROXY like other clients, but only when one is set: with
            # trust_env aiohttp does two thread-pool hops per request (proxy and netrc lookups).
            trust_env=any(os.environ.get(name) for name in _PROXY_VARS),
            headers={
                "Authorization": f"Bearer {self._api_key}",
                "Content-Type": "application/json",
                "Accept": "application/json",
                "User-Agent": "datagen",
            },
            timeout=aiohttp.ClientTimeout(total=self.timeout),
        )

    async def generate(
        self, requests: Sequence[Request], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        if self._fatal is not None:
            raise self._fatal
        # A session per call: aiohttp sessions are bound to the loop that made them, and
        # `generate_sync` may run each batch in a fresh loop.
        session = self._new_session()
        results: list[Completion] = [Completion()] * len(requests)
        stopped: list[BudgetExceeded] = []

        async def one(i: int, req: Request) -> None:
            try:
                completion = await self._complete(session, req)
            except BudgetExceeded as exc:  # the rest still finish: they are paid for
                stopped.append(exc)
                return
            results[i] = completion
            if on_result:
                on_result(i, completion)

        watcher = asyncio.ensure_future(self._watch_queue()) if self._should_watch_queue() else None
        # A fixed crew of workers takes requests in order, instead of one task per request:
        # 5,000 tasks started at once build 5,000 payloads and queue 5,000 waiters before the
        # first byte is sent (~0.2 s here). Twice the concurrency, so requests waiting out a
        # retry backoff (which hold no slot) never leave a slot idle. One pass over `requests`:
        # it may be a stream (`streams_requests`) that yields fewer than len() promises.
        queue = iter(enumerate(requests))

        async def worker() -> None:
            for i, req in queue:
                await one(i, req)

        tasks: list[asyncio.Future[None]] = []
        try:
            # The crew joins one worker per loop turn: started in one turn, all 512 first steps
            # (payload, slot, connect) ran before the loop polled a socket, so no request was
            # written for ~80 ms and the first replies came back ~0.1 s late (bench/orchestration.py).
            for _ in range(min(len(requests), WORKERS_PER_SLOT * max(1, self.max_concurrency))):
                tasks.append(asyncio.ensure_future(worker()))
                await asyncio.sleep(0)
            await asyncio.gather(*tasks)
        except FatalLLMError as exc:
            # Everything not answered yet is abandoned: finished requests already went to
            # `on_result` (and so to the cache); nothing more is sent.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self._fatal_detail is not None:  # the full message (e.g. the served models) is on its way
                self._fatal = FatalLLMError(await self._fatal_detail)
            raise (self._fatal or exc) from None
        finally:
            # Nothing outlives the call (a cancel during the crew's start, an unexpected error).
            leftover = [task for task in tasks if not task.done()]
            for task in leftover:
                task.cancel()
            if watcher is not None:
                watcher.cancel()
            await asyncio.gather(*leftover, *([watcher] if watcher else []), return_exceptions=True)
            await session.close()
        if stopped and self.budget is not None:
            raise BudgetExceeded(self.budget.spent, self.budget.cap)
        return results

    def _should_watch_queue(self) -> bool:
        return (self._queue_metrics is not False and hasattr(self.limiter, "observe_queue")
                and bool(getattr(getattr(self.limiter, "local", self.limiter), "adaptive", False)))

    async def _watch_queue(self) -> None:
        """Feed the server's queue length to the limiter about once a second, over a connection
        of its own (the request pool's are all taken at full load). Never fatal: an endpoint
        without the metric, or one that fails to answer it, is not asked again."""
        root = self.base_url[: -len("/v1")] if self.base_url.endswith("/v1") else self.base_url
        headers = {"Authorization": f"Bearer {self._api_key}", "User-Agent": "datagen"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=5),
                                         trust_env=any(os.environ.get(name) for name in _PROXY_VARS)) as session:
            while self._queue_metrics is not False:
                try:
                    async with session.get(f"{root}/metrics") as response:
                        text = await response.text() if response.status == 200 else ""
                except (TimeoutError, aiohttp.ClientError, UnicodeDecodeError):
                    text = ""
                waiting = parse_queue_metric(text)
                if waiting is None:
                    self._queue_metrics = False
                    return
                self._queue_metrics = True
                self.limiter.observe_queue(waiting)
                await asyncio.sleep(QUEUE_POLL_SECONDS)

    async def generate_batch(
        self, requests: Sequence[Request], keys: Sequence[str], state_dir: Any,
        on_result: ResultCallback | None = None,
    ) -> list[Completion]:
        """The same answers through `/v1/files` + `/v1/batches` (see datagen/llm/batch_api.py)."""
        from datagen.llm.batch_api import BatchRunner

        runner = BatchRunner(self, state_dir, **dict(self.options.batch.settings))
        return await runner.run(list(requests), list(keys), on_result)

    async def _complete(self, session: aiohttp.ClientSession, req: Request) -> Completion:
        if req.n > 1 and (self.n_mode == "fanout" or (self.n_mode == "auto" and self._server_ignores_n)):
            return await self._fan_out(session, req, req.n)
        try:
            completion = await self._call(session, req, req.n)
        except (FatalLLMError, BudgetExceeded):
            raise
        except Exception as exc:  # noqa: BLE001 - every other failure becomes a counted result
            return Completion(error=_describe(exc))
        if completion.error:  # one record's 400: asking again for more samples cannot help
            return completion
        missing = req.n - len(completion.texts)
        if missing > 0 and self.n_mode == "auto":
            # Some servers silently return one choice for n>1: ask for the rest one by one.
            self._server_ignores_n = True
            extra = await self._fan_out(session, req, missing)
            return _merge([completion, extra])
        return completion

    async def _fan_out(self, session: aiohttp.ClientSession, req: Request, count: int) -> Completion:
        """`count` samples as n=1 calls. Sample k (k >= 1) gets seed+1000+k so the samples
        differ on servers that honour seeds; sample 0 keeps the request's own seed, so auto
        mode gives the same texts whether it found out about the server before or after."""
        first = req.n - count  # samples already in hand (auto mode's first reply)

        async def single(k: int) -> Completion:
            seed = req.seed if req.seed is None or k == 0 else req.seed + 1000 + k
            sub = req.with_sampling(n=1, seed=seed)
            try:
                return await self._call(session, sub, 1)
            except (FatalLLMError, BudgetExceeded):
                raise
            except Exception as exc:  # noqa: BLE001
                return Completion(error=_describe(exc))

        parts = await asyncio.gather(*(single(k) for k in range(first, req.n)))
        return _merge(parts)

    def _payload(self, req: Request, n: int) -> bytes:
        body: dict[str, Any] = {"model": self.model}
        if isinstance(req, PromptRequest):
            body["prompt"] = req.prompt
        else:
            body["messages"] = req.message_dicts()
        body.update({
            "temperature": req.temperature,
            "top_p": req.top_p,
            "max_tokens": req.max_tokens,
        })
        if n > 1:
            body["n"] = n
        if req.stop:
            body["stop"] = list(req.stop)
        if req.seed is not None:
            body["seed"] = req.seed
        if req.response_format and self.supports_json_schema:
            body["response_format"] = req.response_format_dict()
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    async def _call(self, session: aiohttp.ClientSession, req: Request, n: int) -> Completion:
        payload = self._payload(req, n)
        url = self._url(_route(req))
        retry = self.options.retry
        number = 0
        try:
            while True:
                number += 1
                try:
                    # Only the request itself holds a slot: backoff waits free it for others.
                    completion = await self._attempt(session, url, payload, req, n, number)
                except Exception as exc:
                    if number >= retry.max_attempts or not is_retryable(exc):
                        raise
                    await asyncio.sleep(retry_wait(exc, number, retry.backoff_initial, retry.backoff_max,
                                                   retry.retry_after_max))
                    continue
                self._unreachable_in_a_row = 0
                self._answered += 1
                return completion
        except _Cancelled:
            raise FatalLLMError(str(self._fatal)) from None
        except HTTPStatusError as exc:
            if exc.status in {400, 422}:
                return self._bad_request(exc)
            if exc.status in {401, 403, 404}:
                # Stop everyone else first; the message may need one more round trip (/models).
                if self._fatal is None:
                    self._fatal = FatalLLMError(f"{self.base_url}: {exc.status} {exc.message[:200]}")
                    self._fatal_detail = asyncio.ensure_future(self._fatal_message(session, exc, _route(req)))
                    self._fatal = FatalLLMError(await asyncio.shield(self._fatal_detail))
                raise self._fatal from None
            raise
        except aiohttp.ClientConnectorError as exc:
            self._unreachable_in_a_row += 1
            if self._unreachable_in_a_row >= UNREACHABLE_LIMIT:
                self._fail(
                    f"cannot reach the OpenAI-compatible endpoint {self.base_url}: {exc.__class__.__name__}: "
                    f"{str(exc)[:160]} ({self._unreachable_in_a_row} requests in a row failed to connect after "
                    f"{self.options.retry.max_attempts} attempts each); check --base-url / OPENAI_BASE_URL and that the server is up"
                )
            raise

    async def _attempt(
        self, session: aiohttp.ClientSession, url: URL | str, payload: bytes, req: Request, n: int, number: int
    ) -> Completion:
        """One HTTP attempt between the budget/limiter's admission and its settlement."""
        reservation = None
        if self.budget is not None and self.price is not None:
            reservation = await self.budget.reserve_when_settled(self.price, req.estimate_parts, req.max_tokens, n)
        tokens = 0
        if self.limiter.tokens is not None:
            tokens = estimate_prompt_tokens(req.estimate_parts) + req.max_tokens * n
        try:
            ticket = await self.limiter.acquire(tokens, priority=number - 1,  # retries go first
                                                output_budget=req.max_tokens * n)
        except BaseException:
            if reservation is not None and self.budget is not None:
                self.budget.settle(reservation, None)
            raise
        started = time.monotonic()
        status: int | None = None
        headers: Any = None
        completion: Completion | None = None
        error: BaseException | None = None
        try:
            if self._fatal is not None:
                raise _Cancelled()
            async with session.post(url, data=payload) as response:
                body = await response.read()
                status, headers = response.status, response.headers
            if status >= 400:
                raise HTTPStatusError(status, _error_message(body), headers)
            completion = parse_text_completion(body) if isinstance(req, PromptRequest) else parse_chat_completion(body)
            return completion
        except BaseException as exc:
            error = exc
            raise
        finally:
            used = completion.prompt_tokens + completion.completion_tokens if completion else None
            self.limiter.settle(
                ticket, latency=time.monotonic() - started, status=status, headers=headers, tokens_used=used,
                timed_out=isinstance(error, (asyncio.TimeoutError, TimeoutError)),
                retry_after=retry_after_seconds(error) if status == 429 else None,
                output_tokens=completion.completion_tokens if completion else None, sequences=n,
            )
            if reservation is not None and self.budget is not None:
                self.budget.settle(reservation, self.price, completion.prompt_tokens if completion else 0,
                                   completion.completion_tokens if completion else 0)

    def _bad_request(self, exc: HTTPStatusError) -> Completion:
        """A 400 is one record's problem (too long, filtered, odd text) unless the same one
        keeps coming for different requests while nothing has been answered yet."""
        kind = classify_bad_request(exc.message)
        shape = _message_shape(exc.message)
        self._bad_request_counts[shape] = self._bad_request_counts.get(shape, 0) + 1
        limit = REPEATED_BAD_REQUEST_LIMIT if kind is None else REPEATED_PER_RECORD_LIMIT
        if self._answered == 0 and self._bad_request_counts[shape] >= limit:
            self._fatal = FatalLLMError(
                f"{self.base_url}/chat/completions answered {exc.status} to {self._bad_request_counts[shape]} "
                f"different requests and to nothing else: {exc.message[:200]} (the request shape is rejected, "
                "not one record: check the stage's max_tokens, n, response_format and the model's limits)"
            )
            raise self._fatal
        if kind is not None:
            return Completion(error=f"{kind}: {exc.message[:200]}")
        return Completion(error=f"http_{exc.status}: {exc.message[:200]}")

    def _fail(self, message: str) -> None:
        if self._fatal is None:
            self._fatal = FatalLLMError(message)
        raise self._fatal

    async def _fatal_message(self, session: aiohttp.ClientSession, exc: HTTPStatusError,
                             route: str = "chat/completions") -> str:
        where = f"{self.base_url}/{route}"
        said = exc.message[:200]
        if exc.status == 401:
            return f"{where} answered 401 Unauthorized: {said}; check OPENAI_API_KEY"
        if exc.status == 403:
            return f"{where} answered 403 Forbidden: {said}; check that OPENAI_API_KEY may use model '{self.model}'"
        served = await self._served_models(session)
        if served is None:
            return (f"{where} answered 404: {said}; model '{self.model}' or the URL is wrong "
                    "(check --base-url / OPENAI_BASE_URL, which usually ends in /v1)")
        if self.model in served and route == "completions":
            return (f"{where} answered 404: {said}; the server lists model '{self.model}' but does not serve raw "
                    "completions (a chat-only endpoint): magpie needs /v1/completions (vLLM, llama.cpp, TGI serve "
                    "it) or a local/vllm backend")
        if self.model in served:
            return f"{where} answered 404: {said}; the server lists model '{self.model}', so check the base URL"
        listed = ", ".join(served[:20]) + (" ..." if len(served) > 20 else "")
        return f"model '{self.model}' not served at {self.base_url}; served: {listed or '(none)'} ({exc.status}: {said})"

    async def _served_models(self, session: aiohttp.ClientSession) -> list[str] | None:
        """`GET /models` ids, or None when the server does not answer it usefully."""
        try:
            async with session.get(f"{self.base_url}/models", timeout=aiohttp.ClientTimeout(total=10)) as response:
                if response.status != 200:
                    return None
                data = json.loads(await response.read())
            return [str(m.get("id")) for m in data.get("data", []) if isinstance(m, dict)]
        except Exception:  # noqa: BLE001 - only a hint for the error message
            return None

    def close(self) -> None:
        pass


def parse_queue_metric(text: str) -> float | None:
    """Requests waiting in the server's queue, summed over its engines and models, from
    Prometheus text; None when no known queue metric is there."""
    total, found = 0.0, False
    for line in text.split("\n"):
        for name in QUEUE_METRICS:
            if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
                try:
                    total += float(line.rsplit(None, 1)[1])
                    found = True
                except (ValueError, IndexError):
                    pass
    return total if found else None


def _route(req: Request) -> str:
    return "completions" if isinstance(req, PromptRequest) else "chat/completions"
