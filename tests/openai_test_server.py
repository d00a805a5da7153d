"""A real OpenAI-compatible HTTP server on 127.0.0.1 for tests and benchmarks.

Why a real server: retries, timeouts, connection limits and caching only show their bugs
over real sockets, so the client is tested against this instead of a mock. The server runs
aiohttp on its own event loop in a background thread (or in the foreground as a script), so
it serves hundreds of concurrent connections while the test drives the client.

Replies are deterministic: choice k of a request whose last user message is P and seed S is
`echo: P #k` (plus ` seed=S` when a seed is given). A `json_schema` response format gets a
JSON object built from the schema instead. Token usage counts whitespace-separated words.

Faults are chosen per (prompt, attempt number), never by arrival order, so a test with many
concurrent requests sees the same faults on every run:
- `fail_first=k, fail_kind=...`: the first k attempts of every distinct prompt fail;
- `rate_429`, `rate_500`, `rate_timeout`, `rate_malformed`, `rate_html`, `rate_empty`,
  `rate_disconnect`: each attempt fails with that probability, drawn from a hash of
  (seed, prompt, attempt).
Fault kinds: 429 (with Retry-After), 500, 400, 401, timeout (sleeps `timeout_sleep`),
malformed (200, JSON content type, truncated JSON body), html (200 with an HTML page, as a
misbehaving proxy sends), empty (200 with `choices: []`), disconnect (the connection is
closed without a reply). Also: `latency` and per-prompt `prompt_latency`, `barrier=k` (hold
replies until k requests are in flight at once), `single_choice` (answer n>1 with one
choice, like llama.cpp), `api_key` (401 for any other bearer token).
Cost control: `rpm_limit` / `tpm_limit` (enforced token buckets, 429 + Retry-After past
them, x-ratelimit-* headers on every reply), `capacity` (latency grows with the requests in
flight, like a saturated inference server), and the Batch API (`/v1/files`, `/v1/batches`
with `batch_delay`, `batch_fail_rate`, `batch_expire_rate`).

Script use (another process, e.g. a pipeline reliability test or the throughput bench):
    python tests/openai_test_server.py --port 8000 --latency 0.2 --rate-429 0.1
prints `LISTENING http://127.0.0.1:PORT/v1` once it accepts connections, and offers
`POST /_control/configure` (JSON of config fields), `POST /_control/reset` and
`GET /_control/stats` so the other process can steer and inspect it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from aiohttp import web

FAULT_KINDS = ("429", "500", "400", "401", "timeout", "malformed", "html", "empty", "disconnect", "404",
               "context")


@dataclass
class ServerConfig:
    """What the server does to each request; every field can be changed at runtime."""

    latency: float = 0.0  # seconds added before every reply (faults included)
    prompt_latency: dict[str, float] = field(default_factory=dict)  # extra seconds for these prompts
    # Hold every reply until this many requests are in flight at once (or barrier_timeout
    # passed): proves a client reaches its concurrency bound without timing assumptions.
    barrier: int = 0
    barrier_timeout: float = 10.0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_timeout: float = 0.0
    rate_malformed: float = 0.0
    rate_html: float = 0.0
    rate_empty: float = 0.0
    rate_disconnect: float = 0.0
    fail_first: int = 0  # the first k attempts of each distinct prompt fail with `fail_kind`
    fail_kind: str = "429"
    fail_prompts: tuple[str, ...] = ()  # when set, `fail_first` applies to these prompts only
    retry_after: float | None = 1.0  # Retry-After header on 429s (None: no header)
    timeout_sleep: float = 30.0  # how long a "timeout" fault stalls before answering
    single_choice: bool = False  # answer n>1 with one choice, like llama.cpp's server
    api_key: str | None = None  # when set, any other bearer token gets a 401
    served_models: tuple[str, ...] | None = None  # when set, any other `model` gets a 404 (as vLLM does)
    max_prompt_words: int | None = None  # longer prompts get vLLM's context-length 400
    seed: int = 0  # salt of the random fault draws
    # Enforced rate limits, as providers do them: a token bucket per limit refilled at
    # limit/limit_period per second that holds `limit_burst_share` of the limit (OpenAI
    # enforces "600 RPM" as about 10 per second). Past it: 429 with Retry-After (and -ms)
    # set to when the next request would fit. Every reply carries x-ratelimit-* headers.
    rpm_limit: int = 0
    tpm_limit: int = 0  # tokens = prompt words + max_tokens x n, counted when the request arrives
    limit_period: float = 60.0  # seconds of a "minute" (tests shrink it)
    limit_burst_share: float = 1 / 60
    # A server with `capacity` slots: a request that arrives with k in flight takes
    # latency x max(1, k / capacity), as a saturated inference server's does.
    capacity: int = 0
    # Batch API (/v1/files, /v1/batches): a batch completes `batch_delay` s after creation;
    # each request then fails (500 in the error file) with `batch_fail_rate` or expires
    # with `batch_expire_rate` (the batch then ends "expired"), drawn from its custom_id
    # and the number of batches that carried that custom_id so far.
    batch_delay: float = 0.5
    batch_fail_rate: float = 0.0
    batch_expire_rate: float = 0.0
    completions: bool = True  # serve /v1/completions (raw prompts); False: 404 there, like a chat-only server
    # Saturating server (an LLM engine batching its sequences), on when token_rate > 0: every
    # choice of a reply is a sequence decoded at token_rate / knee tokens/s while at most `knee`
    # run; past the knee the server's total stays token_rate, minus `overload_slowdown` of it
    # per extra knee's worth of sequences, shared by all, so each token gets slower with the
    # load while a reply's time also grows with its length. Echo answers are padded to a
    # length drawn per (seed, prompt, choice) in [answer_min_tokens, answer_max_tokens] (capped
    # by max_tokens); `max_running` sequences at most run (0: no cap), later requests wait in
    # a FIFO queue that GET /metrics reports as vLLM does (when `metrics` is true).
    token_rate: float = 0.0
    knee: int = 16
    overload_slowdown: float = 0.0
    answer_min_tokens: int = 16
    answer_max_tokens: int = 256
    max_running: int = 0
    metrics: bool = False

    def __post_init__(self) -> None:
        if self.knee < 1 or self.answer_min_tokens < 1 or self.answer_max_tokens < self.answer_min_tokens:
            raise ValueError("knee and answer_min_tokens must be >= 1, answer_max_tokens >= answer_min_tokens")
        if self.fail_kind not in FAULT_KINDS:
            raise ValueError(f"fail_kind must be one of {FAULT_KINDS}, not {self.fail_kind!r}")


@dataclass
class RequestLog:
    """One HTTP request as the server saw it (times are `time.monotonic()` of this process)."""

    prompt: str
    attempt: int  # 1 for the first request carrying this prompt
    start: float
    end: float = 0.0
    outcome: str = "ok"  # "ok", a fault kind, or "cancelled" (client hung up first)
    n: int = 1
    seed: int | None = None
    client_port: int = 0  # the client's TCP port: tells which process sent it (see ray_cluster_helpers)
    tokens: int = 0  # completion tokens of the reply sent (0 for faults and hang-ups)


@dataclass
class ServerStats:
    requests: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    per_prompt: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)
    auth_headers: list[str] = field(default_factory=list)  # distinct values, first-seen order
    log: list[RequestLog] = field(default_factory=list)
    rate_limited: int = 0  # 429s sent because a rpm/tpm limit was reached
    files_uploaded: int = 0
    batches_created: int = 0
    batch_requests: int = 0  # request lines in all created batches
    # Saturating mode: tokens of every reply sent, when the first sequence started and the
    # last finished (monotonic), the most sequences decoding at once.
    tokens_served: int = 0
    first_decode: float = 0.0
    last_decode: float = 0.0
    max_sequences: int = 0

    @property
    def tokens_per_second(self) -> float:
        span = self.last_decode - self.first_decode
        return self.tokens_served / span if span > 0 else 0.0

    def __repr__(self) -> str:  # short: pytest prints it on every failed assertion
        return (
            f"ServerStats(requests={self.requests}, max_in_flight={self.max_in_flight}, "
            f"in_flight={self.in_flight}, outcomes={dict(self.outcomes)})"
        )

    def attempts(self, prompt: str) -> list[RequestLog]:
        return [entry for entry in self.log if entry.prompt == prompt]

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "per_prompt": dict(self.per_prompt),
            "outcomes": dict(self.outcomes),
            "auth_headers": list(self.auth_headers),
            "log": [asdict(entry) for entry in self.log],
            "rate_limited": self.rate_limited,
            "files_uploaded": self.files_uploaded,
            "batches_created": self.batches_created,
            "batch_requests": self.batch_requests,
            "tokens_served": self.tokens_served,
            "first_decode": self.first_decode,
            "last_decode": self.last_decode,
            "max_sequences": self.max_sequences,
            "tokens_per_second": self.tokens_per_second,
        }


def _unit_hash(*parts: Any) -> float:
    """A number in [0, 1) that depends only on `parts`: reproducible fault draws."""
    digest = hashlib.sha256(json.dumps(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _words(text: str) -> int:
    return len(text.split())


def _example_from_schema(schema: dict[str, Any], hint: str) -> Any:
    """A value that satisfies the simple schemas stages use (objects of scalars, enums)."""
    if "enum" in schema:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: _example_from_schema(sub, hint) for name, sub in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [_example_from_schema(schema.get("items", {}), hint) for _ in range(count)]
    if kind in {"integer", "number"}:
        low = schema.get("minimum", schema.get("exclusiveMinimum", 1))
        high = schema.get("maximum", schema.get("exclusiveMaximum", 5))
        value = max(low, min(high, 4))
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return hint


class OpenAITestServer:
    """Start with `start()` (background thread) or `serve_forever()` (this thread)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **config: Any):
        self.host = host
        self.port = port
        self.config = ServerConfig(**config)
        self._initial = self.config  # what reset() returns to (the CLI flags, in script use)
        self._stats = ServerStats()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopped: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        # Optional `responder(messages, choice_index, seed) -> str` that writes the reply text
        # instead of the echo (used by whole-pipeline tests); faults still apply first.
        self.responder: Any = None
        self._barrier_open: asyncio.Event | None = None
        self._buckets: dict[str, list[float]] = {}  # limit kind -> [level, stamp]
        self._files: dict[str, bytes] = {}
        self._batches: dict[str, dict[str, Any]] = {}
        self._batch_attempts: Counter = Counter()  # custom_id -> batches that carried it
        self._engine: _Engine | None = None  # the saturating mode's decoder (made on the server's loop)

    # ---- control from the test -------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def configure(self, **changes: Any) -> ServerConfig:
        """Change settings at runtime, e.g. `configure(latency=0.2, fail_first=2, fail_kind="500")`."""
        known = {f.name for f in fields(ServerConfig)}
        unknown = set(changes) - known
        if unknown:
            raise TypeError(f"unknown server settings: {sorted(unknown)}")
        with self._lock:
            self.config = replace(self.config, **changes)
            return self.config

    def reset(self) -> None:
        """Back to the settings it started with, counters zeroed (requests still in flight
        keep counting down)."""
        with self._lock:
            self.config = self._initial
            in_flight = self._stats.in_flight
            self._stats = ServerStats(in_flight=in_flight)
            self._buckets.clear()
            self._files.clear()
            self._batches.clear()
            self._batch_attempts.clear()
        self._close_barrier()

    def _close_barrier(self) -> None:
        if self._loop is not None and self._barrier_open is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._barrier_open.clear)

    def reset_stats(self) -> None:
        with self._lock:
            in_flight = self._stats.in_flight
            self._stats = ServerStats(in_flight=in_flight)
        self._close_barrier()

    @property
    def stats(self) -> ServerStats:
        """A snapshot copy: safe to read while the server keeps serving."""
        with self._lock:
            s = self._stats
            return ServerStats(
                requests=s.requests,
                in_flight=s.in_flight,
                max_in_flight=s.max_in_flight,
                per_prompt=Counter(s.per_prompt),
                outcomes=Counter(s.outcomes),
                auth_headers=list(s.auth_headers),
                log=[replace(entry) for entry in s.log],
                rate_limited=s.rate_limited,
                files_uploaded=s.files_uploaded,
                batches_created=s.batches_created,
                batch_requests=s.batch_requests,
                tokens_served=s.tokens_served,
                first_decode=s.first_decode,
                last_decode=s.last_decode,
                max_sequences=s.max_sequences,
            )

    # ---- lifecycle -----------------------------------------------------------------
    def start(self) -> OpenAITestServer:
        self._thread = threading.Thread(target=self._thread_main, name="openai-test-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError("test server failed to start") from self._error
        if not self._ready.is_set():
            raise RuntimeError("test server did not start within 30 s")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def __enter__(self) -> OpenAITestServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_forever(self, announce: bool = True) -> None:
        asyncio.run(self._main(announce))

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main(announce=False))
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self, announce: bool) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        self._barrier_open = asyncio.Event()
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/v1/files", self._upload_file)
        app.router.add_get("/v1/files/{file_id}/content", self._file_content)
        app.router.add_post("/v1/batches", self._create_batch)
        app.router.add_get("/v1/batches/{batch_id}", self._get_batch)
        app.router.add_post("/v1/batches/{batch_id}/cancel", self._cancel_batch)
        app.router.add_post("/_control/configure", self._control_configure)
        app.router.add_post("/_control/reset", self._control_reset)
        app.router.add_get("/_control/stats", self._control_stats)
        # handler_cancellation: a client that gives up (timeout) cancels our sleeping handler,
        # so in_flight drops and shutdown never waits on a 30 s stall.
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=4096, reuse_address=True)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._ready.set()
        if announce:
            print(f"LISTENING {self.base_url}", flush=True)
        try:
            await self._stopped.wait()
        finally:
            await self._runner.cleanup()

    # ---- handlers --------------------------------------------------------------------
    async def _models(self, request: web.Request) -> web.Response:
        served = self.config.served_models or ("test",)
        return web.json_response(
            {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "test"} for name in served]}
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        """vLLM's queue gauges in Prometheus text (only with `metrics`: other servers 404)."""
        if not self.config.metrics:
            return web.Response(status=404, text="404: Not Found")
        running, waiting = self._engine.requests() if self._engine is not None else (0, 0)
        labels = '{engine="0",model_name="test"}'
        text = (f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{labels} {float(running)}\n"
                f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{labels} {float(waiting)}\n")
        return web.Response(text=text, content_type="text/plain")

    async def _control_configure(self, request: web.Request) -> web.Response:
        try:
            config = self.configure(**(await request.json()))
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(config))

    async def _control_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    def _choose_fault(self, config: ServerConfig, prompt: str, attempt: int, auth: str) -> str | None:
        if config.api_key is not None and auth != f"Bearer {config.api_key}":
            return "401"
        if attempt <= config.fail_first and (not config.fail_prompts or prompt in config.fail_prompts):
            return config.fail_kind
        rates = (
            ("429", config.rate_429),
            ("500", config.rate_500),
            ("timeout", config.rate_timeout),
            ("malformed", config.rate_malformed),
            ("html", config.rate_html),
            ("empty", config.rate_empty),
            ("disconnect", config.rate_disconnect),
        )
        if not any(rate for _, rate in rates):
            return None  # skip the hash: the throughput bench runs this 1000+ times a second
        edge = 0.0
        draw = _unit_hash(config.seed, prompt, attempt)
        for kind, rate in rates:
            edge += rate
            if draw < edge:
                return kind
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "request body must be JSON with `messages`", "invalid_request_error")
        users = [m.get("content", "") for m in messages if m.get("role") == "user"]
        prompt = str(users[-1] if users else (messages[-1].get("content", "") if messages else ""))
        words = sum(_words(str(m.get("content", ""))) for m in messages)
        return await self._serve(request, body, prompt, words, self._reply)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        """`/v1/completions` (raw prompt in, `choices[i].text` out) with the same latency, faults,
        limits and counters as chat; `completions=False` makes it 404 like a chat-only server."""
        if not self.config.completions:
            return web.Response(status=404, text="404: Not Found")
        try:
            body = await request.json()
            prompt = body["prompt"]
        except (ValueError, KeyError, TypeError):
            return _error(400, "request body must be JSON with `prompt`", "invalid_request_error")
        if not isinstance(prompt, str):
            return _error(400, "`prompt` must be one string", "invalid_request_error")
        return await self._serve(request, body, prompt, _words(prompt), self._text_reply)

    async def _serve(self, request: web.Request, body: dict[str, Any], prompt: str, prompt_words: int,
                     reply_with: Any) -> web.StreamResponse:
        start = time.monotonic()
        auth = request.headers.get("Authorization", "")
        n = int(body.get("n") or 1)
        seed = body.get("seed")
        cost = prompt_words + int(body.get("max_tokens") or 0) * n
        with self._lock:
            config = self.config
            stats = self._stats
            stats.requests += 1
            stats.per_prompt[prompt] += 1
            attempt = stats.per_prompt[prompt]
            stats.in_flight += 1
            in_flight_at_arrival = stats.in_flight
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            if auth not in stats.auth_headers:
                stats.auth_headers.append(auth)
            peer = request.transport.get_extra_info("peername") if request.transport is not None else None
            entry = RequestLog(prompt=prompt, attempt=attempt, start=start, n=n, seed=seed,
                               client_port=int(peer[1]) if peer else 0)
            stats.log.append(entry)
            limit_wait, limit_headers = self._take_rate(config, cost, start)
            if limit_wait > 0:
                stats.rate_limited += 1
        fault = self._choose_fault(config, prompt, attempt, auth)
        if limit_wait > 0 and fault != "401":
            fault = "rate_limit"
        if fault is None and config.served_models is not None and body.get("model") not in config.served_models:
            fault = "404"
        if fault is None and config.max_prompt_words is not None and _words(prompt) > config.max_prompt_words:
            fault = "context"
        entry.outcome = "429" if fault == "rate_limit" else (fault or "ok")
        try:
            if config.barrier > 0:
                if stats.max_in_flight >= config.barrier:
                    self._barrier_open.set()
                try:
                    await asyncio.wait_for(self._barrier_open.wait(), config.barrier_timeout)
                except TimeoutError:
                    pass
            delay = config.latency + config.prompt_latency.get(prompt, 0.0)
            if config.capacity > 0 and fault != "rate_limit":
                delay *= max(1.0, in_flight_at_arrival / config.capacity)
            if fault == "rate_limit":
                delay = 0.0  # a real limiter answers at once
            if delay > 0:
                await asyncio.sleep(delay)
            if fault == "timeout":
                await asyncio.sleep(config.timeout_sleep)
                fault = None  # a client that waited this long gets its answer
            if fault == "disconnect":
                if request.transport is not None:
                    request.transport.close()
                raise asyncio.CancelledError  # nothing may be written any more
            if fault == "rate_limit":
                wait_headers = {"Retry-After": f"{max(1, int(limit_wait + 0.999))}",
                                "retry-after-ms": f"{limit_wait * 1000:.0f}", **limit_headers}
                return _error(429, "rate limit reached for requests", "rate_limit_exceeded", wait_headers)
            if fault is not None:
                return self._fault_response(fault, config)
            reply = reply_with(body, prompt, n, seed, config)
            if config.token_rate > 0:
                if self._engine is None:
                    self._engine = _Engine(self)
                await self._engine.decode([_words(_choice_text(c)) for c in reply["choices"]], config)
            entry.tokens = reply["usage"]["completion_tokens"]
            with self._lock:
                stats.tokens_served += entry.tokens
            if config.tpm_limit > 0:  # charged prompt + max_tokens on arrival: refund what was unused
                unused = int(body.get("max_tokens") or 0) * n - reply["usage"]["completion_tokens"]
                with self._lock:
                    if "tokens" in self._buckets and unused > 0:
                        capacity = max(1.0, config.tpm_limit * config.limit_burst_share)
                        self._buckets["tokens"][0] = min(capacity, self._buckets["tokens"][0] + unused)
            return web.json_response(reply, headers=limit_headers, dumps=_raw_json)
        except asyncio.CancelledError:
            if entry.outcome == "ok":  # the client hung up before its answer was ready
                entry.outcome = "cancelled"
            raise
        finally:
            with self._lock:
                stats.in_flight -= 1
                stats.outcomes[entry.outcome] += 1
                if stats is not self._stats:  # reset while we were sleeping
                    self._stats.in_flight -= 1
            entry.end = time.monotonic()

    def _take_rate(self, config: ServerConfig, cost: int, now: float) -> tuple[float, dict[str, str]]:
        """Charge this request to the rpm/tpm buckets (under the lock). Returns seconds until
        it would fit (0: it was admitted) and the x-ratelimit-* headers to send."""
        wait, headers = 0.0, {}
        charges = []
        for kind, limit, amount in (("requests", config.rpm_limit, 1), ("tokens", config.tpm_limit, cost)):
            if limit <= 0:
                continue
            rate = limit / config.limit_period
            capacity = max(1.0, limit * config.limit_burst_share)
            level, stamp = self._buckets.setdefault(kind, [capacity, now])
            level = min(capacity, level + (now - stamp) * rate)
            self._buckets[kind] = [level, now]
            need = min(amount, capacity)
            if level < need:
                wait = max(wait, (need - level) / rate)
            charges.append((kind, limit, amount, rate))
        if wait <= 0:
            for kind, _, amount, _ in charges:
                self._buckets[kind][0] -= amount
        for kind, limit, _, rate in charges:
            level = self._buckets[kind][0]
            headers[f"x-ratelimit-limit-{kind}"] = str(limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, int(level)))
            headers[f"x-ratelimit-reset-{kind}"] = f"{max(0.0, (1 - level) / rate) * 1000:.0f}ms"
        return wait, headers

    # ---- Batch API -------------------------------------------------------------------
    async def _upload_file(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        content, purpose, filename = b"", "", "upload.jsonl"
        async for part in reader:
            if part.name == "file":
                filename = part.filename or filename
                content = await part.read()
            elif part.name == "purpose":
                purpose = (await part.text()).strip()
        if purpose != "batch" or not content:
            return _error(400, "need multipart `file` and purpose=batch", "invalid_request_error")
        with self._lock:
            file_id = f"file-{len(self._files) + 1:05d}"
            self._files[file_id] = content
            self._stats.files_uploaded += 1
        return web.json_response({"id": file_id, "object": "file", "bytes": len(content), "filename": filename,
                                  "purpose": "batch", "created_at": int(time.time())})

    async def _file_content(self, request: web.Request) -> web.Response:
        content = self._files.get(request.match_info["file_id"])
        if content is None:
            return _error(404, "no such file", "not_found")
        return web.Response(body=content, content_type="application/jsonl")

    async def _create_batch(self, request: web.Request) -> web.Response:
        body = await request.json()
        content = self._files.get(body.get("input_file_id", ""))
        if content is None:
            return _error(400, "input_file_id: no such file", "invalid_request_error")
        # split("\n"), not splitlines(): a JSON string may hold U+2028 or U+0085 raw.
        lines = [json.loads(line) for line in content.decode("utf-8").split("\n") if line.strip()]
        with self._lock:
            batch_id = f"batch-{len(self._batches) + 1:05d}"
            attempts = {}
            for line in lines:
                self._batch_attempts[line["custom_id"]] += 1
                attempts[line["custom_id"]] = self._batch_attempts[line["custom_id"]]
            self._batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": body.get("endpoint"), "status": "validating",
                "input_file_id": body["input_file_id"], "output_file_id": None, "error_file_id": None,
                "created_at": int(time.time()), "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
                "_lines": lines, "_attempts": attempts, "_created": time.monotonic(),
                "_config": self.config,
            }
            self._stats.batches_created += 1
            self._stats.batch_requests += len(lines)
        return web.json_response(self._batch_view(batch_id))

    def _batch_view(self, batch_id: str) -> dict[str, Any]:
        batch = self._batches[batch_id]
        if batch["status"] in {"validating", "in_progress"}:
            batch["status"] = "in_progress"
            if time.monotonic() >= batch["_created"] + self.config.batch_delay:  # the delay as configured now
                self._finish_batch(batch)
        return {k: v for k, v in batch.items() if not k.startswith("_")}

    def _finish_batch(self, batch: dict[str, Any]) -> None:
        config: ServerConfig = batch["_config"]
        outputs, errors = [], []
        expired = False
        for line in batch["_lines"]:
            cid = line["custom_id"]
            draw = _unit_hash(config.seed, "batch", cid, batch["_attempts"][cid])
            if draw < config.batch_expire_rate:
                expired = True
                errors.append({"id": f"req-{cid[:8]}", "custom_id": cid, "response": None,
                               "error": {"code": "batch_expired", "message": "not done within the window"}})
            elif draw < config.batch_expire_rate + config.batch_fail_rate:
                errors.append({"id": f"req-{cid[:8]}", "custom_id": cid, "response": {
                    "status_code": 500, "body": {"error": {"message": "failed on purpose", "type": "server_error"}}},
                    "error": None})
            else:
                body = line["body"]
                users = [m.get("content", "") for m in body["messages"] if m.get("role") == "user"]
                prompt = str(users[-1] if users else "")
                n = int(body.get("n") or 1)
                reply = self._reply(body, prompt, n, body.get("seed"), config)
                outputs.append({"id": f"req-{cid[:8]}", "custom_id": cid,
                                "response": {"status_code": 200, "request_id": cid[:8], "body": reply}, "error": None})
        # Providers list results in no particular order: reverse, so clients must use custom_id.
        outputs.reverse()
        for kind, rows in (("output_file_id", outputs), ("error_file_id", errors)):
            if rows:
                file_id = f"file-{len(self._files) + 1:05d}"
                self._files[file_id] = "".join(_raw_json(r) + "\n" for r in rows).encode("utf-8")
                batch[kind] = file_id
        batch["request_counts"] = {"total": len(batch["_lines"]), "completed": len(outputs), "failed": len(errors)}
        batch["status"] = "expired" if expired else "completed"

    async def _get_batch(self, request: web.Request) -> web.Response:
        with self._lock:
            if request.match_info["batch_id"] not in self._batches:
                return _error(404, "no such batch", "not_found")
            return web.json_response(self._batch_view(request.match_info["batch_id"]))

    async def _cancel_batch(self, request: web.Request) -> web.Response:
        with self._lock:
            batch = self._batches.get(request.match_info["batch_id"])
            if batch is None:
                return _error(404, "no such batch", "not_found")
            if batch["status"] in {"validating", "in_progress"}:
                batch["status"] = "cancelled"
            return web.json_response(self._batch_view(batch["id"]))

    def _fault_response(self, fault: str, config: ServerConfig) -> web.Response:
        if fault == "429":
            headers = {} if config.retry_after is None else {"Retry-After": f"{config.retry_after:g}"}
            return _error(429, "rate limited by the test server", "rate_limit_exceeded", headers)
        if fault == "500":
            return _error(500, "the test server failed on purpose", "server_error")
        if fault == "400":
            return _error(400, "the test server rejects this request", "invalid_request_error")
        if fault == "401":
            return _error(401, "invalid api key", "invalid_api_key")
        if fault == "404":
            return _error(404, "The model does not exist.", "model_not_found")
        if fault == "context":
            limit = config.max_prompt_words or 0
            return _error(400, f"This model's maximum context length is {limit} tokens. However, you requested "
                          "more tokens in the messages. Please reduce the length of the messages.",
                          "invalid_request_error")
        if fault == "malformed":
            return web.Response(status=200, text='{"id": "x", "choices": [', content_type="application/json")
        if fault == "html":
            return web.Response(
                status=200, text="<html><body>upstream hiccup</body></html>", content_type="text/html"
            )
        if fault == "empty":
            return web.json_response(
                {
                    "id": "chatcmpl-empty",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": "test",
                    "choices": [],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                }
            )
        raise ValueError(f"unknown fault {fault!r}")

    def _reply(
        self, body: dict[str, Any], prompt: str, n: int, seed: Any, config: ServerConfig
    ) -> dict[str, Any]:
        count = 1 if config.single_choice else max(1, n)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        stops = body.get("stop") or []
        if isinstance(stops, str):
            stops = [stops]
        response_format = body.get("response_format") or {}
        choices = []
        completion_tokens = 0
        for k in range(count):
            text = f"echo: {prompt} #{k}" + (f" seed={seed}" if seed is not None else "")
            finish = "stop"
            if self.responder is not None:
                text = self.responder(body["messages"], k, seed)
            elif response_format.get("type") == "json_schema":
                schema = (response_format.get("json_schema") or {}).get("schema") or {}
                text = json.dumps(_example_from_schema(schema, text))
            elif response_format.get("type") == "json_object":
                text = json.dumps({"echo": text})
            else:
                if config.token_rate > 0:  # a long answer of this prompt's own length
                    span = config.answer_max_tokens - config.answer_min_tokens + 1
                    length = config.answer_min_tokens + int(_unit_hash(config.seed, "length", prompt, k) * span)
                    text = " ".join([text, *(f"w{i}" for i in range(max(0, length - _words(text))))])
                for stop in stops:
                    cut = text.find(stop)
                    if cut >= 0:
                        text = text[:cut]
                if max_tokens is not None and _words(text) > int(max_tokens):
                    text, finish = " ".join(text.split()[: int(max_tokens)]), "length"
            completion_tokens += _words(text)
            choices.append(
                {
                    "index": k,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            )
        prompt_tokens = sum(_words(str(m.get("content", ""))) for m in body["messages"])
        return {
            "id": f"chatcmpl-{hashlib.sha1(prompt.encode()).hexdigest()[:12]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "test"),
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


    def _text_reply(
        self, body: dict[str, Any], prompt: str, n: int, seed: Any, config: ServerConfig
    ) -> dict[str, Any]:
        """A text_completion: the chat reply's choices (responder, stops, max_tokens alike) as `text`.
        The responder sees the raw prompt as one user message."""
        chat = self._reply({**body, "messages": [{"role": "user", "content": prompt}]}, prompt, n, seed, config)
        chat["id"] = chat["id"].replace("chatcmpl-", "cmpl-")
        chat["object"] = "text_completion"
        chat["choices"] = [{"index": c["index"], "text": c["message"]["content"], "finish_reason": c["finish_reason"],
                            "logprobs": None} for c in chat["choices"]]
        return chat


def _choice_text(choice: dict[str, Any]) -> str:
    return str(choice.get("text") if "text" in choice else (choice.get("message") or {}).get("content", ""))


class _Engine:
    """The saturating mode's decoder: processor sharing with equal per-sequence speed, as a
    batching engine steps every running sequence once per step. Exact, not ticked: `progress`
    is the tokens each running sequence has decoded since the start, so a sequence admitted at
    progress P with L tokens finishes when progress reaches P + L; one task sleeps until the
    next finish at the current speed and wakes early when the set of sequences changes.
    Requests are admitted whole (as vLLM admits a request's n sequences), FIFO past `max_running`."""

    def __init__(self, server: OpenAITestServer) -> None:
        self.server = server
        self.progress = 0.0
        self.stamp = time.monotonic()
        self.running: dict[int, tuple[float, asyncio.Future]] = {}  # id -> (finish progress, done)
        self.running_requests: Counter = Counter()  # request id -> its sequences running
        self.owner: dict[int, int] = {}  # sequence id -> request id
        self.queue: list[tuple[int, list[int], asyncio.Future]] = []  # waiting requests
        self.ids = itertools.count()
        self.changed = asyncio.Event()
        self.task: asyncio.Task | None = None

    def requests(self) -> tuple[int, int]:
        """(running, waiting) sequences: vLLM counts each of a request's n choices."""
        return len(self.running), sum(len(lengths) for _, lengths, _ in self.queue)

    def speed(self, config: ServerConfig) -> float:
        """Tokens/s of each running sequence."""
        count = len(self.running)
        if count <= config.knee:
            return config.token_rate / config.knee
        total = config.token_rate * max(0.1, 1 - config.overload_slowdown * (count - config.knee) / config.knee)
        return total / count

    def advance(self, config: ServerConfig) -> None:
        now = time.monotonic()
        if self.running:
            self.progress += (now - self.stamp) * self.speed(config)
        self.stamp = now

    async def decode(self, lengths: list[int], config: ServerConfig) -> None:
        """Wait until every sequence of one reply (its choices' token counts) is decoded."""
        if self.task is None:
            self.task = asyncio.ensure_future(self._run())
        request = next(self.ids)
        admitted: asyncio.Future = asyncio.get_running_loop().create_future()
        self.queue.append((request, [max(1, n) for n in lengths], admitted))
        self._admit(config)
        sequences: list[int] = []
        try:
            sequences = await admitted
            await asyncio.gather(*(self.running[s][1] for s in sequences if s in self.running))
        finally:  # done, or the client hung up: its sequences stop taking turns
            self.queue = [q for q in self.queue if q[0] != request]
            self.advance(self.server.config)
            for seq in sequences:
                self.running.pop(seq, None)
                self.owner.pop(seq, None)
            self.running_requests.pop(request, None)
            self._admit(self.server.config)
            self.changed.set()

    def _admit(self, config: ServerConfig) -> None:
        self.advance(config)
        while self.queue:
            request, lengths, admitted = self.queue[0]
            if config.max_running and self.running and len(self.running) + len(lengths) > config.max_running:
                break
            self.queue.pop(0)
            ids = []
            for length in lengths:
                seq = next(self.ids)
                self.running[seq] = (self.progress + length, asyncio.get_running_loop().create_future())
                self.owner[seq] = request
                ids.append(seq)
            self.running_requests[request] = len(ids)
            if not admitted.done():
                admitted.set_result(ids)
            with self.server._lock:
                stats = self.server._stats
                stats.max_sequences = max(stats.max_sequences, len(self.running))
                if not stats.first_decode:
                    stats.first_decode = time.monotonic()
        self.changed.set()

    async def _run(self) -> None:
        while True:
            config = self.server.config
            self.advance(config)
            finished = [seq for seq, (end, done) in self.running.items() if end <= self.progress + 1e-9]
            for seq in finished:
                end, done = self.running.pop(seq)
                request = self.owner.pop(seq)
                self.running_requests[request] -= 1
                if not done.done():
                    done.set_result(None)
                with self.server._lock:
                    stats = self.server._stats
                    stats.last_decode = time.monotonic()
            if finished:
                for request in [r for r, left in self.running_requests.items() if left <= 0]:
                    del self.running_requests[request]
                self._admit(config)
            self.changed.clear()
            if not self.running:
                await self.changed.wait()
                continue
            next_end = min(end for end, _ in self.running.values())
            delay = max(0.0, (next_end - self.progress) / self.speed(config))
            try:
                await asyncio.wait_for(self.changed.wait(), delay)
            except TimeoutError:
                pass


def _raw_json(value: Any) -> str:
    """JSON with non-ASCII text raw, as servers built on orjson (vLLM) send it: U+2028 and
    U+0085 arrive unescaped, which is what a client's line splitting must survive. Half of a
    UTF-16 pair cannot be raw UTF-8, so a reply holding one is escaped whole (`\\ud83d`), as
    a server that cut a model's output mid-emoji sends it."""
    text = json.dumps(value, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value)
    return text


def _error(status: int, message: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    payload = {"error": {"message": message, "type": code, "param": None, "code": code}}
    return web.json_response(payload, status=status, headers=headers)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (see the LISTENING line)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every reply")
    for kind in ("429", "500", "timeout", "malformed", "html", "empty", "disconnect"):
        parser.add_argument(
            f"--rate-{kind}", type=float, default=0.0, help=f"share of attempts failing with {kind}"
        )
    parser.add_argument("--fail-first", type=int, default=0, help="first K attempts of each prompt fail")
    parser.add_argument("--fail-kind", default="429", choices=FAULT_KINDS)
    parser.add_argument("--retry-after", type=float, default=1.0)
    parser.add_argument("--timeout-sleep", type=float, default=30.0)
    parser.add_argument("--single-choice", action="store_true", help="answer n>1 with one choice")
    parser.add_argument("--api-key", default=None, help="require this bearer token (else 401)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rpm-limit", type=int, default=0, help="enforced requests per minute (429 past it)")
    parser.add_argument("--tpm-limit", type=int, default=0, help="enforced tokens per minute (429 past it)")
    parser.add_argument("--capacity", type=int, default=0, help="slots: latency grows with in-flight / capacity")
    parser.add_argument("--batch-delay", type=float, default=0.5, help="seconds until a batch completes")
    parser.add_argument("--token-rate", type=float, default=0.0,
                        help="saturating server: total tokens/s past the knee (0: off)")
    parser.add_argument("--knee", type=int, default=16, help="sequences decoded at full per-sequence speed")
    parser.add_argument("--overload-slowdown", type=float, default=0.0,
                        help="share of throughput lost per extra knee's worth of sequences")
    parser.add_argument("--answer-min-tokens", type=int, default=16, help="shortest drawn answer (words)")
    parser.add_argument("--answer-max-tokens", type=int, default=256, help="longest drawn answer (words)")
    parser.add_argument("--max-running", type=int, default=0, help="sequences run at once; later requests queue")
    parser.add_argument("--metrics", action="store_true", help="serve GET /metrics with vLLM's queue gauges")
    args = parser.parse_args(argv)
    server = OpenAITestServer(
        host=args.host,
        port=args.port,
        latency=args.latency,
        rate_429=args.rate_429,
        rate_500=args.rate_500,
        rate_timeout=args.rate_timeout,
        rate_malformed=args.rate_malformed,
        rate_html=args.rate_html,
        rate_empty=args.rate_empty,
        rate_disconnect=args.rate_disconnect,
        fail_first=args.fail_first,
        fail_kind=args.fail_kind,
        retry_after=args.retry_after,
        timeout_sleep=args.timeout_sleep,
        single_choice=args.single_choice,
        api_key=args.api_key,
        seed=args.seed,
        rpm_limit=args.rpm_limit,
        tpm_limit=args.tpm_limit,
        capacity=args.capacity,
        batch_delay=args.batch_delay,
        token_rate=args.token_rate,
        knee=args.knee,
        overload_slowdown=args.overload_slowdown,
        answer_min_tokens=args.answer_min_tokens,
        answer_max_tokens=args.answer_max_tokens,
        max_running=args.max_running,
        metrics=args.metrics,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
