"""Backends behind one spec string: `local`, `openai:MODEL`, `vllm:MODEL`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from datagen.llm.base import LLM, ChatRequest, Completion, SamplingParams, UsageStats, generate_sync
from datagen.llm.cache import CachedLLM, ResponseCache

__all__ = [
    "LLM",
    "CachedLLM",
    "ChatRequest",
    "Completion",
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

        return OpenAICompatLLM(model or "", **options)
    from datagen.llm.vllm_engine import VLLMEngine

    return VLLMEngine(model or "", **options)


def make_llm(spec: str, cache: ResponseCache | str | Path | None = None, **options: Any) -> CachedLLM:
    """Build a backend from its spec; `options` go to the backend (e.g. base_url, max_concurrency)."""
    inner = make_backend(spec, **options)
    if cache is not None and not isinstance(cache, ResponseCache):
        cache = ResponseCache(cache)
    return CachedLLM(inner, cache)
