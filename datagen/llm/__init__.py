"""Backends behind one spec string: `local`, `openai:MODEL`, `vllm:MODEL`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datagen.llm.base import (
    LLM,
    ChatRequest,
    Completion,
    PromptRequest,
    Request,
    SamplingParams,
    UsageStats,
    generate_sync,
)
from datagen.llm.cache import CachedLLM, ResponseCache

__all__ = [
    "LLM",
    "CachedLLM",
    "ChatRequest",
    "Completion",
    "PromptRequest",
    "Request",
    "ResponseCache",
    "SamplingParams",
    "UsageStats",
    "generate_sync",
    "make_backend",
    "make_llm",
    "parse_spec",
]

BACKENDS = ("local", "openai", "vllm")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`openai:gpt-4o-mini` -> ("openai", "gpt-4o-mini"); `local` -> ("local", None)."""
    backend, _, model = spec.partition(":")
    backend = backend.strip().lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown LLM backend {spec!r}: use local, local:PATH, openai:MODEL or vllm:MODEL")
    if backend in {"openai", "vllm"} and not model:
        raise ValueError(f"{spec!r} needs a model name, e.g. {backend}:MODEL")
    return backend, model or None


def make_backend(spec: str, **options: Any) -> LLM:
    """The bare backend for a spec (nothing loaded yet: models load on first use)."""
    backend, model = parse_spec(spec)
    if backend == "local":
        from datagen.llm.local import LocalLLM

        return LocalLLM(model, **options)
    if backend == "openai":
        from datagen.llm.openai_compat import OpenAICompatLLM

        return OpenAICompatLLM.from_flat(model or "", options)
    from datagen.llm.vllm_engine import VLLMEngine

    return VLLMEngine(model or "", **options)


@dataclass(frozen=True)
class BackendFacts:
    """What a backend is, read without building a client: the cache's identity and the
    in-flight bound (the Ray pool's driver side and the resume hashes need only these)."""

    name: str
    backend: str
    model: str
    supports_json_schema: bool
    identity: dict[str, Any]
    max_concurrency: int
    timeout: float


# Options that are gates or secrets, never part of what the endpoint is.
GATE_OPTIONS = ("api_key", "limiter", "budget", "price")


def backend_facts(spec: str, options: dict[str, Any]) -> BackendFacts:
    backend, model = parse_spec(spec)
    if backend == "openai":
        from datagen.llm.endpoint_options import EndpointOptions

        endpoint = EndpointOptions.from_flat({k: v for k, v in options.items() if k not in GATE_OPTIONS})
        return BackendFacts(f"openai:{model or ''}", "openai", model or "", endpoint.supports_json_schema,
                            endpoint.identity(), endpoint.transport.max_concurrency, endpoint.transport.timeout)
    # Local and vLLM backends load nothing until their first request: the object is the description.
    inner = make_backend(spec, **options)
    identity = inner.cache_identity() if hasattr(inner, "cache_identity") else {}
    return BackendFacts(inner.name, inner.backend, inner.model, inner.supports_json_schema, identity,
                        int(getattr(inner, "max_concurrency", 1)), float(getattr(inner, "timeout", 0.0)))


def make_llm(spec: str, cache: ResponseCache | str | Path | None = None, **options: Any) -> CachedLLM:
    """Build a backend from its spec; `options` go to the backend (e.g. base_url, max_concurrency)."""
    inner = make_backend(spec, **options)
    if cache is not None and not isinstance(cache, ResponseCache):
        cache = ResponseCache(cache)
    return CachedLLM(inner, cache)
