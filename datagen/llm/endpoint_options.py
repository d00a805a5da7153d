"""The OpenAI-compatible client's settings, grouped by what they are about and frozen.

Users keep writing them flat (`llm_options: {openai: {base_url: ..., max_concurrency: 64}}`,
`--max-concurrency`); `EndpointOptions.from_flat` sorts them into transport, retries, limits
and Batch API settings once, with a one-line error for an unknown key. Every default lives
here and nowhere else. What the cache keys on (`identity`) is a function of these options
alone, so anything that needs a backend's identity or concurrency (resume hashes, the Ray
pool's driver side) reads it from here instead of building a client that never sends a request.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from typing import Any

from datagen.llm.ratelimit import RequestLimiter
from datagen.llm.wire import normalize_base_url

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MAX_CONCURRENCY = 64


@dataclass(frozen=True)
class Transport:
    base_url: str | None = None  # None: $OPENAI_BASE_URL, else the OpenAI API
    timeout: float = 120.0  # seconds per request
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY  # requests in flight (an upper bound when adaptive)

    @property
    def url(self) -> str:
        return (self.base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0  # a server's Retry-After longer than this is capped


@dataclass(frozen=True)
class Limits:
    max_requests_per_minute: float | None = None
    max_tokens_per_minute: float | None = None
    adaptive_concurrency: bool = True
    # Set: any reply slower than this halves the in-flight limit. None: only a reply too short
    # to judge per output token does, past half the timeout (long answers are judged per token).
    latency_ceiling: float | None = None
    # Poll the server's own queue (`GET /metrics`: vLLM, SGLang, TGI) at most once a second
    # while requests are out; an endpoint that does not serve it is asked once, then never.
    queue_metrics: bool = True
    # Where the adaptive limit's slow start begins (it steps up from there while that pays).
    initial_concurrency: int = 8
    rate_period: float = 60.0


@dataclass(frozen=True)
class BatchOptions:
    """`batch: true` sends through /v1/files + /v1/batches (datagen/llm/batch_api.py)."""

    enabled: bool = False
    settings: tuple[tuple[str, Any], ...] = ()  # BatchRunner keyword arguments (file sizes, polling)


@dataclass(frozen=True)
class EndpointOptions:
    transport: Transport = field(default_factory=Transport)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    limits: Limits = field(default_factory=Limits)
    batch: BatchOptions = field(default_factory=BatchOptions)
    n_mode: str = "auto"  # auto | native | fanout: how n>1 is sampled
    supports_json_schema: bool = True

    def __post_init__(self) -> None:
        if self.n_mode not in {"auto", "native", "fanout"}:
            raise ValueError(f"n_mode must be auto, native or fanout, not {self.n_mode!r}")
        if self.transport.max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if self.limits.initial_concurrency < 1:
            raise ValueError("initial_concurrency must be at least 1")

    @classmethod
    def from_flat(cls, options: dict[str, Any]) -> EndpointOptions:
        """`{base_url, max_concurrency, max_attempts, batch, ...}` as users write them."""
        groups: dict[str, dict[str, Any]] = {"transport": {}, "retry": {}, "limits": {}}
        top: dict[str, Any] = {}
        batch = BatchOptions()
        for key, value in options.items():
            if key == "batch":
                batch = dataclasses.replace(batch, enabled=bool(value))
            elif key == "batch_options":
                batch = dataclasses.replace(batch, settings=tuple(sorted((value or {}).items())))
            elif key in _TOP_LEVEL:
                top[key] = value
            elif key in _GROUP_OF:
                groups[_GROUP_OF[key]][key] = value
            else:
                close = difflib.get_close_matches(key, [*_GROUP_OF, *_TOP_LEVEL, "batch", "batch_options"], n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"llm_options.openai.{key}: unknown option{hint}")
        return cls(Transport(**groups["transport"]), RetryPolicy(**groups["retry"]), Limits(**groups["limits"]),
                   batch, **top)

    def identity(self) -> dict[str, Any]:
        """What changes an answer besides the request: the endpoint, whether a JSON schema is
        really sent, and how n>1 is sampled. Never concurrency, timeouts or retries."""
        return {"base_url": normalize_base_url(self.transport.url), "json_schema": self.supports_json_schema,
                "n_mode": self.n_mode}

    def limiter(self) -> RequestLimiter:
        """This client's own limiter: request/token buckets, 429 cool-down, the adaptive in-flight
        bound (per-token gradient; a short reply slower than half the timeout, or any reply
        slower than an explicit `latency_ceiling`, counts as congestion)."""
        limits = self.limits
        return RequestLimiter(self.transport.max_concurrency, requests_per_minute=limits.max_requests_per_minute,
                              tokens_per_minute=limits.max_tokens_per_minute, adaptive=limits.adaptive_concurrency,
                              latency_ceiling=limits.latency_ceiling, short_reply_ceiling=self.transport.timeout / 2,
                              period=limits.rate_period, initial_concurrency=limits.initial_concurrency,
                              deadline=self.transport.timeout)


_GROUP_OF = {name: group for group, kind in (("transport", Transport), ("retry", RetryPolicy), ("limits", Limits))
             for name in (f.name for f in dataclasses.fields(kind))}
_TOP_LEVEL = ("n_mode", "supports_json_schema")
