"""The wire side of an OpenAI-compatible endpoint: errors, what is retried and how long to
wait, and how a reply body becomes a `Completion`.

One place decides what is retried: 429, 408/409/425, 5xx, timeouts, dropped connections and
unparseable or empty bodies are; 400/401/403/404/422 are not (retrying a bad request only burns
quota). Waits are jittered exponential unless the server says `Retry-After`. Shared by the
online client (`openai_compat.py`) and the Batch API (`batch_api.py`).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from types import SimpleNamespace

import aiohttp
from tenacity import wait_random_exponential

from datagen.llm.base import Completion
from datagen.unicode_text import LONE_SURROGATE, REPLACEMENT

log = logging.getLogger(__name__)

RETRYABLE_STATUS = {408, 409, 425, 429}


class HTTPStatusError(Exception):
    """A non-2xx reply. Keeps the headers for Retry-After; never holds request headers (the key)."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str]):
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message
        self.headers = {k.lower(): v for k, v in headers.items()}


class EmptyChoicesError(RuntimeError):
    """A 200 reply that carries no usable choice: treated like a transient server fault."""


class BadBodyError(ValueError):
    """A 200 reply that is not a chat completion (truncated JSON, an HTML page from a proxy...)."""


class _Cancelled(Exception):
    """The run is stopping for a fatal error: this request is not sent."""


def is_retryable(exc: BaseException) -> bool:
    """Only what a later attempt can fix: server hiccups, overload, network trouble, garbage
    bodies. Never a programming or config error (a ValueError from our own code included)."""
    if isinstance(exc, HTTPStatusError):
        return exc.status in RETRYABLE_STATUS or exc.status >= 500
    if isinstance(exc, aiohttp.InvalidURL):  # a config mistake: no retry will fix it
        return False
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, aiohttp.ClientError, ConnectionError)):
        return True
    return isinstance(exc, (BadBodyError, EmptyChoicesError))


def retry_after_seconds(exc: BaseException | None) -> float | None:
    """Seconds the server asked us to wait (`retry-after-ms`, `Retry-After` seconds or HTTP date)."""
    headers = getattr(exc, "headers", None)
    if not headers:
        return None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            return max(0.0, float(raw_ms) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_wait(exc: BaseException, attempt: int, initial: float, maximum: float, retry_after_max: float) -> float:
    """Seconds before attempt `attempt + 1`: Retry-After when the server sends one (capped
    separately: a server may legitimately ask for longer than our own backoff ceiling), else
    tenacity's full-jitter `wait_random_exponential`. Only the wait comes from tenacity: its
    per-request `AsyncRetrying` cost ~8 % of the client's CPU at 1,000 req/s (py-spy,
    bench/results/orchestration_profile.txt), so the retry loop itself is the client's own."""
    told = retry_after_seconds(exc)
    if told is not None:
        return min(told, retry_after_max)
    return wait_random_exponential(multiplier=initial, max=maximum)(SimpleNamespace(attempt_number=attempt))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HTTPStatusError):
        return f"http_{exc.status}: {exc.message[:200]}"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout: request timed out"
    if isinstance(exc, (aiohttp.ClientError, ConnectionError)):
        return f"connection: {type(exc).__name__}: {str(exc)[:200]}"
    return f"bad_response: {type(exc).__name__}: {str(exc)[:200]}"


def _error_message(body: bytes) -> str:
    """The `error.message` of an OpenAI-style error body, else the start of the body."""
    try:
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    except ValueError:
        pass
    return body[:200].decode("utf-8", "replace").strip() or "(empty body)"


def parse_chat_completion(body: bytes) -> Completion:
    """The parts of a chat.completion reply we use; raises (retryably) on anything else."""
    return _parse_choices(body, lambda c: isinstance(c.get("message"), dict), lambda c: c["message"].get("content"),
                          "reply had a choice without a message")


def parse_text_completion(body: bytes) -> Completion:
    """A text_completion reply (`/v1/completions`: `choices[i].text`); raises like the chat parser."""
    return _parse_choices(body, lambda c: isinstance(c.get("text"), str), lambda c: c["text"],
                          "reply had a choice without text")


def _parse_choices(body: bytes, has_answer: Callable[[dict], bool], answer_of: Callable[[dict], str | None],
                   missing: str) -> Completion:
    """Both reply kinds: a JSON object whose `choices` each hold an answer, in index order, with usage."""
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise BadBodyError(f"reply is not JSON: {body[:80]!r}") from exc
    if not isinstance(data, dict):
        raise BadBodyError(f"reply is not a JSON object: {body[:80]!r}")
    choices = data.get("choices")
    if not choices or not isinstance(choices, list):
        raise EmptyChoicesError("reply had no choices")
    if any(not isinstance(c, dict) or not has_answer(c) for c in choices):
        raise EmptyChoicesError(missing)
    choices = sorted(choices, key=lambda c: c.get("index") or 0)
    usage = data.get("usage") or {}
    return Completion(
        texts=[_writable(answer_of(c) or "") for c in choices],
        finish_reasons=[c.get("finish_reason") or "stop" for c in choices],
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


def _writable(text: str) -> str:
    """A reply may escape half of a UTF-16 pair (`"\\ud83d"`: a model cut off mid-emoji); Python
    reads it as a lone surrogate that no UTF-8 file can hold, so the record's first write would
    crash the stage far from the cause. It becomes U+FFFD here, once, before the cache stores it."""
    repaired, count = LONE_SURROGATE.subn(REPLACEMENT, text)
    if count:
        log.warning("a reply held %d lone surrogate(s) (half an emoji?); replaced with U+FFFD", count)
    return repaired


def normalize_base_url(url: str) -> str:
    """One spelling per endpoint, so `HTTP://Host:80/v1/` and `http://host/v1` share a cache."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    default_port = {"http": 80, "https": 443}.get(scheme)
    netloc = host if parts.port in (None, default_port) else f"{host}:{parts.port}"
    return urlunsplit((scheme, netloc, parts.path.rstrip("/"), parts.query, ""))


def _message_shape(message: str) -> str:
    """A 400's text with numbers removed: 'max_tokens 9000 > 4096' is one shape for every record."""
    return "".join("#" if ch.isdigit() else ch for ch in message.lower())[:200]


def _merge(parts: Sequence[Completion]) -> Completion:
    """One completion out of several partial ones; any failed part fails the whole."""
    merged = Completion()
    for part in parts:
        if part.error:
            return Completion(error=part.error)
        merged.texts += part.texts
        merged.finish_reasons += part.finish_reasons
        merged.prompt_tokens += part.prompt_tokens
        merged.completion_tokens += part.completion_tokens
    return merged
