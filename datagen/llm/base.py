"""One request type and one result type for every backend.

Stages build `ChatRequest`s and get back `Completion`s in the same order, whatever the
backend. A request that fails for good (after retries) comes back as a `Completion` with
`error` set instead of raising, so one bad call never sinks a batch of paid ones.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Protocol, runtime_checkable

ResultCallback = Callable[[int, "Completion"], None]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample, apart from what to answer (as vLLM splits prompt and `SamplingParams`).
    Frozen, so one object can be shared by thousands of requests and hashed."""

    n: int = 1
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None


_SAMPLING_FIELDS = tuple(f.name for f in fields(SamplingParams))

# Cache keys are built for every request of a stage before the first one is sent, so their
# JSON is built from pieces instead of one `json.dumps(..., sort_keys=True)` per request
# (which makes a new encoder each call: 8.7 us a key, 45 ms for 5,120 requests). The pieces
# are byte-identical to that reference (tests/test_cache_keys.py holds both to it).
_SORTED_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False)
_JSON = json.JSONEncoder(ensure_ascii=False)
_json_string = json.encoder.encode_basestring  # what _JSON writes for a str (ensure_ascii=False)
_SLOT = "\x00datagen:slot\x00"
_SLOT_JSON = _SORTED_JSON.encode(_SLOT)


def _body(sampling: SamplingParams, slot_name: str, slot_value: Any, response_format: str | None) -> dict[str, Any]:
    """What `canonical()` encodes: the sampling settings flat beside the request's one own
    field (`messages` or `prompt`); a chat request also carries its response_format."""
    body: dict[str, Any] = {name: getattr(sampling, name) for name in _SAMPLING_FIELDS}
    body[slot_name] = slot_value
    if slot_name == "messages":
        body["response_format"] = response_format
    return body


@functools.lru_cache(maxsize=1024)
def _frame(sampling_and_types: tuple[Any, ...], slot_name: str, response_format: str | None) -> tuple[str, str]:
    """The canonical JSON before and after its one per-request field (`messages` or `prompt`),
    for one set of sampling settings. The types ride along in the lru key: 1 == 1.0 == True
    for hashing, but json writes `1`, `1.0` and `true`, and keys must stay as they were."""
    text = _SORTED_JSON.encode(_body(sampling_and_types[0], slot_name, _SLOT, response_format))
    head, _, tail = text.partition(_SLOT_JSON)
    return head, tail


def _canonical(sampling: SamplingParams, slot_name: str, slot_value: Any, response_format: str | None) -> str:
    """`json.dumps({sampling fields, slot_name: slot_value[, response_format]}, sort_keys=True,
    ensure_ascii=False)`, with the sampling part looked up instead of encoded again."""
    try:
        lru_key = (sampling, type(sampling.temperature), type(sampling.top_p), type(sampling.max_tokens),
                   type(sampling.n), type(sampling.seed), tuple(map(type, sampling.stop)))
        head, tail = _frame(lru_key, slot_name, response_format)
    except TypeError:  # settings that cannot be hashed (e.g. a list for `stop`): the plain way
        return _SORTED_JSON.encode(_body(sampling, slot_name, slot_value, response_format))
    return head + _SORTED_JSON.encode(slot_value) + tail


@functools.lru_cache(maxsize=64)
def _key_prefix(*parts: str) -> str:
    """`json.dumps([*parts, x], ensure_ascii=False)` up to where x begins."""
    return _JSON.encode(list(parts))[:-1] + ", " if parts else "["


def _key_digest(prefix_parts: tuple[str, ...], canonical: str) -> str:
    payload = _key_prefix(*prefix_parts) + _json_string(canonical) + "]"
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChatRequest:
    """Chat messages plus `SamplingParams`; `response_format` is an OpenAI-style JSON string
    (e.g. a json_schema) that backends which cannot honour it do not send."""

    messages: tuple[tuple[str, str], ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    response_format: str | None = None

    @staticmethod
    def chat(
        messages: Sequence[dict[str, str]] | str,
        *,
        n: int = 1,
        temperature: float = 0.7,
        top_p: float = 1.0,
        max_tokens: int = 512,
        stop: Sequence[str] = (),
        seed: int | None = None,
        response_format: dict[str, Any] | None = None,
    ) -> ChatRequest:
        """Build a request from a prompt string or a list of `{"role", "content"}` dicts."""
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        return ChatRequest(
            messages=tuple((m["role"], m["content"]) for m in messages),
            sampling=SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                    stop=tuple(stop), seed=seed),
            response_format=json.dumps(response_format, sort_keys=True) if response_format else None,
        )

    # Read-only views of the sampling settings: `req.n` reads as plainly as `req.sampling.n`.
    @property
    def n(self) -> int:
        return self.sampling.n

    @property
    def temperature(self) -> float:
        return self.sampling.temperature

    @property
    def top_p(self) -> float:
        return self.sampling.top_p

    @property
    def max_tokens(self) -> int:
        return self.sampling.max_tokens

    @property
    def stop(self) -> tuple[str, ...]:
        return self.sampling.stop

    @property
    def seed(self) -> int | None:
        return self.sampling.seed

    def with_sampling(self, **changes: Any) -> ChatRequest:
        """The same messages with some sampling settings changed (e.g. one of n samples)."""
        return replace(self, sampling=replace(self.sampling, **changes))

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def response_format_dict(self) -> dict[str, Any] | None:
        return json.loads(self.response_format) if self.response_format else None

    def canonical(self) -> str:
        """Stable JSON of everything that changes the answer: the cache key's body. Flat (the
        sampling settings beside the messages), so keys stay what they were before the split."""
        return _canonical(self.sampling, "messages", self.messages, self.response_format)

    @property
    def estimate_parts(self) -> tuple[tuple[str, str], ...]:
        """The text a token estimate counts (budget reservations, token-rate buckets)."""
        return self.messages

    @staticmethod
    def from_canonical(text: str) -> ChatRequest:
        """The request back from `canonical()` (e.g. a row shipped to a Ray worker)."""
        data = json.loads(text)
        sampling = SamplingParams(**{name: data[name] for name in _SAMPLING_FIELDS})
        return ChatRequest(messages=tuple(tuple(m) for m in data["messages"]),  # type: ignore[misc]
                           sampling=replace(sampling, stop=tuple(sampling.stop)),
                           response_format=data.get("response_format"))

    def cache_key(self, backend: str, model: str, identity: str = "", canonical: str | None = None) -> str:
        """`identity` is the backend's `cache_identity()` as JSON: endpoint, weights, engine options.
        `canonical`: this request's own `canonical()`, when the caller already made it."""
        canonical = self.canonical() if canonical is None else canonical
        return _key_digest((backend, model, identity) if identity else (backend, model), canonical)


@dataclass(frozen=True)
class PromptRequest:
    """A raw prompt string plus the same `SamplingParams`: text the model continues as is, with
    no chat template around it (Magpie's pre-query prompt). It travels through the cache, the
    usage counters, the rate limiter and the budget exactly as a `ChatRequest` does; backends
    send it as a completion (`/v1/completions`, `LLM.generate`, raw token ids)."""

    prompt: str
    sampling: SamplingParams = field(default_factory=SamplingParams)
    response_format: None = None  # never sent: kept so code that reads a request's format needs no branch

    @staticmethod
    def raw(prompt: str, *, n: int = 1, temperature: float = 0.7, top_p: float = 1.0, max_tokens: int = 512,
            stop: Sequence[str] = (), seed: int | None = None) -> PromptRequest:
        return PromptRequest(prompt=prompt, sampling=SamplingParams(
            n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop=tuple(stop), seed=seed))

    n = property(lambda self: self.sampling.n)
    temperature = property(lambda self: self.sampling.temperature)
    top_p = property(lambda self: self.sampling.top_p)
    max_tokens = property(lambda self: self.sampling.max_tokens)
    stop = property(lambda self: self.sampling.stop)
    seed = property(lambda self: self.sampling.seed)

    @property
    def estimate_parts(self) -> tuple[tuple[str, str], ...]:
        return (("", self.prompt),)

    def with_sampling(self, **changes: Any) -> PromptRequest:
        return replace(self, sampling=replace(self.sampling, **changes))

    def response_format_dict(self) -> None:
        return None

    def canonical(self) -> str:
        """Sampling settings plus `prompt` and no `messages`: a raw prompt's cache key can never
        equal a chat request's, and chat keys are left exactly as they were."""
        return _canonical(self.sampling, "prompt", self.prompt, None)

    def cache_key(self, backend: str, model: str, identity: str = "", canonical: str | None = None) -> str:
        canonical = self.canonical() if canonical is None else canonical
        return _key_digest((backend, model, identity, "prompt"), canonical)


Request = ChatRequest | PromptRequest


def request_from_canonical(text: str) -> Request:
    """Either kind back from its `canonical()` text (a raw prompt has `prompt`, a chat `messages`)."""
    data = json.loads(text)
    if "prompt" in data:
        sampling = SamplingParams(**{name: data[name] for name in _SAMPLING_FIELDS})
        return PromptRequest(prompt=data["prompt"], sampling=replace(sampling, stop=tuple(sampling.stop)))
    return ChatRequest.from_canonical(text)


@dataclass
class Completion:
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.texts)

    @property
    def is_empty(self) -> bool:
        """Answered with nothing: never cached, so a rerun asks again."""
        return not any(text.strip() for text in self.texts)

    @property
    def text(self) -> str:
        return self.texts[0] if self.texts else ""

    def to_json(self) -> str:
        return json.dumps(
            {
                "texts": self.texts,
                "finish_reasons": self.finish_reasons,
                "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
            },
            ensure_ascii=False,
        )

    @staticmethod
    def from_json(raw: str) -> Completion:
        data = json.loads(raw)
        return Completion(
            texts=list(data["texts"]),
            finish_reasons=list(data["finish_reasons"]),
            prompt_tokens=int(data.get("prompt_tokens", 0)),
            completion_tokens=int(data.get("completion_tokens", 0)),
        )


@runtime_checkable
class LLM(Protocol):
    """What every backend offers. `name` is the backend spec, e.g. `openai:gpt-4o-mini`."""

    name: str
    backend: str
    model: str
    supports_json_schema: bool

    def cache_identity(self) -> dict[str, Any]:
        """Everything besides the request that changes an answer (endpoint, weights, engine
        options), and nothing that only changes speed. It is part of every cache key."""
        ...

    async def generate(
        self, requests: Sequence[Request], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        """Answer every request (chat or raw prompt); results in request order. `on_result(i, c)`
        fires as each lands. A backend that cannot continue raw prompts raises `FatalLLMError`.
        A backend with `streams_requests = True` accepts a one-pass stream here: it iterates
        `requests` once, in order, calls back for each item, and treats len() as an upper
        bound (the stream may end early); its returned list may be longer than the stream."""
        ...

    def close(self) -> None: ...


@dataclass
class UsageStats:
    """Counters a run report needs: calls made vs served from cache, tokens, failures."""

    requests: int = 0
    cache_hits: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def failed_requests(self) -> int:
        """Failures that say something is wrong with the endpoint, not with one record."""
        from datagen.errors import counts_against_error_rate

        return sum(count for kind, count in self.errors.items() if counts_against_error_rate(kind))

    def add(self, completion: Completion) -> None:
        self.requests += 1
        if completion.cached:
            self.cache_hits += 1
            return
        if completion.error:
            kind = completion.error.split(":", 1)[0]
            self.errors[kind] = self.errors.get(kind, 0) + 1
            return
        self.calls += 1
        self.prompt_tokens += completion.prompt_tokens
        self.completion_tokens += completion.completion_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_sync(coro: Any) -> Any:
    """Run a coroutine from sync code, also when called inside a running loop (e.g. Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def generate_sync(
    llm: LLM, requests: Sequence[Request], on_result: ResultCallback | None = None
) -> list[Completion]:
    return run_sync(llm.generate(list(requests), on_result))
