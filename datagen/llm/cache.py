"""SQLite response cache in front of any backend.

Each completion is committed the moment it arrives, so a run killed mid-batch resumes
without paying for the calls it already made, and an identical rerun makes zero calls.
Failed requests and empty replies are never cached: a rerun retries them. The key holds
the backend's identity (endpoint, a fingerprint of local weights, output-changing engine
options), so retraining a model into the same folder never serves its old answers.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datagen import faults
from datagen.errors import FatalLLMError
from datagen.llm.base import LLM, Completion, PromptRequest, Request, ResultCallback, UsageStats


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS completions ("
            " key TEXT PRIMARY KEY, backend TEXT, model TEXT, request TEXT,"
            " response TEXT, created REAL)"
        )
        self._conn.commit()

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        unique = list(dict.fromkeys(keys))
        with self._lock:
            for start in range(0, len(unique), 500):
                chunk = unique[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT key, response FROM completions WHERE key IN ({marks})", chunk
                ).fetchall()
                for key, response in rows:
                    found[key] = Completion.from_json(response)
        return found

    def put(self, key: str, backend: str, model: str, request: Request, completion: Completion) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO completions VALUES (?, ?, ?, ?, ?, ?)",
                (key, backend, model, request.canonical(), completion.to_json(), time.time()),
            )
            self._conn.commit()

    def token_totals(self) -> list[tuple[str, str, int, int]]:
        """(backend, model, prompt tokens, completion tokens) summed over stored answers:
        what they cost, for a budget that spans reruns."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT backend, model, SUM(json_extract(response, '$.prompt_tokens')),"
                " SUM(json_extract(response, '$.completion_tokens')) FROM completions GROUP BY backend, model"
            ).fetchall()
        return [(b, m, int(p or 0), int(c or 0)) for b, m, p, c in rows]

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class CachedLLM:
    """Wraps a backend: serves hits from SQLite, forwards misses once, counts usage."""

    def __init__(self, inner: LLM, cache: ResponseCache | None):
        self.inner = inner
        self.cache = cache
        self.name = inner.name
        self.backend = inner.backend
        self.model = inner.model
        self.supports_json_schema = inner.supports_json_schema
        self.usage = UsageStats()
        identity = inner.cache_identity() if hasattr(inner, "cache_identity") else {}
        self.identity = json.dumps(identity, sort_keys=True, ensure_ascii=False, default=str)

    def cache_identity(self) -> dict[str, Any]:
        return json.loads(self.identity)

    def key(self, request: Request) -> str:
        """The cache key of `request` as this backend will really send it: a response_format
        the backend cannot honour is not sent, so it must not split the cache either. A raw
        prompt's key is built apart from every chat key (`PromptRequest.cache_key`)."""
        if request.response_format and not self.supports_json_schema:
            request = dataclasses.replace(request, response_format=None)
        return request.cache_key(self.backend, self.model, self.identity)

    async def generate(
        self, requests: Sequence[Request], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        requests = list(requests)
        keys = [self.key(r) for r in requests]
        hits = self.cache.get_many(keys) if self.cache is not None else {}
        results: list[Completion | None] = [None] * len(requests)
        # Identical requests inside one batch are sent once: same semantics as the cache.
        first_index: dict[str, int] = {}
        waiting: dict[str, list[int]] = {}
        to_send: list[int] = []
        for i, key in enumerate(keys):
            if key in hits:
                hit = hits[key]
                results[i] = Completion(
                    texts=list(hit.texts),
                    finish_reasons=list(hit.finish_reasons),
                    prompt_tokens=hit.prompt_tokens,
                    completion_tokens=hit.completion_tokens,
                    cached=True,
                )
            elif key in first_index:
                waiting[key].append(i)
            else:
                first_index[key] = i
                waiting[key] = []
                to_send.append(i)
        for i, result in enumerate(results):
            if result is not None:
                self.usage.add(result)
                if on_result:
                    on_result(i, result)

        def landed(j: int, completion: Completion) -> None:
            i = to_send[j]
            if completion.ok and not completion.is_empty and self.cache is not None:
                self.cache.put(keys[i], self.backend, self.model, requests[i], completion)
                faults.after_committed_call()
            results[i] = completion
            self.usage.add(completion)
            if on_result:
                on_result(i, completion)
            for dup in waiting[keys[i]]:
                # A duplicate of a success is free (counted as a cache hit); a duplicate of a
                # failure is a failure too, and must count as one, not as a hit.
                copy = Completion(
                    texts=list(completion.texts),
                    finish_reasons=list(completion.finish_reasons),
                    cached=completion.ok and not completion.is_empty,
                    error=completion.error,
                )
                results[dup] = copy
                self.usage.add(copy)
                if on_result:
                    on_result(dup, copy)

        if to_send and getattr(self.inner, "batch", False):
            if any(isinstance(requests[i], PromptRequest) for i in to_send):
                raise FatalLLMError(f"{self.name}: the Batch API route sends chat requests only; raw prompts "
                                    "(magpie) need the live endpoint: set batch: false for this stage's backend")
            # Batch API (openai `batch: true`): custom_id = cache key; batch ids are kept
            # next to the cache (in a pipeline: the run directory) so a rerun re-attaches.
            state_dir = self.cache.path.parent if self.cache is not None else None
            returned = await self.inner.generate_batch(
                [requests[i] for i in to_send], [keys[i] for i in to_send], state_dir, landed
            )
        elif to_send:
            returned = await self.inner.generate([requests[i] for i in to_send], landed)
            for j, completion in enumerate(returned):
                if results[to_send[j]] is None:  # a backend that did not call back
                    landed(j, completion)
        return [r if r is not None else Completion(error="internal: no result") for r in results]

    def close(self) -> None:
        self.inner.close()
