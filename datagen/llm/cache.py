"""SQLite response cache in front of any backend.

A run killed mid-batch resumes without paying again for what it already has, and an identical
rerun makes zero calls. Completions are committed in groups by one writer thread, off the event
loop: a completion waits at most `COMMIT_INTERVAL_S` (50 ms) or until `COMMIT_ROWS` (64) more
have landed, whichever comes first, and `put` waits whenever `MAX_UNSAVED` (128) landed
completions are not yet committed. So after `kill -9` at most `MAX_UNSAVED` answered calls
(normally those of the last 50 ms) are sent again, besides the ones in flight; a normal end
loses none: `CachedLLM.generate` returns (or raises) only after its completions are committed,
`close()` commits what is left, and so does an exit hook for caches nobody closed. Reads see
completions not yet committed (read-your-writes). Committing one row at a time on the event
loop cost ~0.12 ms a completion, a sixth of the 0.78 ms that 1280 replies/s leave for everything.

Failed requests and empty replies are never cached: a rerun retries them. The key holds the
backend's identity (endpoint, a fingerprint of local weights, output-changing engine options),
so retraining a model into the same folder never serves its old answers.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import json
import logging
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from datagen import faults
from datagen.errors import DatagenError, FatalLLMError
from datagen.llm.base import LLM, Completion, PromptRequest, Request, ResultCallback, UsageStats

log = logging.getLogger(__name__)

# Group commit. The bound after kill -9 is MAX_UNSAVED: a hard cap (put waits), not a typical figure.
COMMIT_INTERVAL_S = 0.05  # a landed completion is committed at most this long after it landed...
COMMIT_ROWS = 64  # ...or as soon as this many are waiting, whichever comes first
MAX_UNSAVED = 2 * COMMIT_ROWS  # landed but not committed, at most: one commit writing, one filling
# A whole batch as one JSON parameter: SQLite unpacks it in one statement step, without the GIL.
# (executemany binds row by row, taking the GIL back for each; under load that handoff waits up
# to the interpreter's 5 ms switch interval per row.)
_INSERT_BATCH = ("INSERT OR REPLACE INTO completions SELECT " + ", ".join(
    f"json_extract(value, '$[{i}]')" for i in range(6)) + " FROM json_each(?)")
_Row = tuple[str, str, str, str, str, float]

_open_caches: weakref.WeakSet[ResponseCache] = weakref.WeakSet()


class ResponseCache:
    """The SQLite file plus its writer thread (started with the first `put`). Thread-safe."""

    def __init__(self, path: str | Path, *, commit_interval: float = COMMIT_INTERVAL_S,
                 commit_rows: int = COMMIT_ROWS, max_unsaved: int = MAX_UNSAVED):
        if commit_rows < 1 or max_unsaved < commit_rows or commit_interval < 0:
            raise ValueError("ResponseCache: need commit_rows >= 1, max_unsaved >= commit_rows, commit_interval >= 0")
        self.path = Path(path)
        self.commit_interval = commit_interval
        self.commit_rows = commit_rows
        self.max_unsaved = max_unsaved
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the reading connection
        self._conn = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS completions ("
            " key TEXT PRIMARY KEY, backend TEXT, model TEXT, request TEXT,"
            " response TEXT, created REAL)"
        )
        self._conn.commit()
        # Writer state, under `_state`: `_unsaved` holds every landed row until its commit is
        # done (reads look here first); `_queued` the ones no commit has taken yet.
        self._state = threading.Condition(threading.Lock())
        self._unsaved: dict[str, _Row] = {}
        self._queued: list[_Row] = []
        self._oldest = 0.0  # monotonic time the oldest queued row landed
        self._hurry = False  # a flush or close waits: commit now, do not wait out the window
        self._stopping = False
        self._failed: BaseException | None = None
        self._writer: threading.Thread | None = None
        self._closed = False
        self.commits = 0  # commits made by the writer (a bench and the tests read it)
        self.put_waits = 0  # puts that found `max_unsaved` waiting and had to wait for the disk
        _open_caches.add(self)

    def get_many(self, keys: Sequence[str]) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        unique = list(dict.fromkeys(keys))
        if self._unsaved:
            # Checked before the file: a row leaves `_unsaved` only once committed, so every
            # key is found in one place or the other.
            with self._state:
                pending = {key: self._unsaved[key] for key in unique if key in self._unsaved}
            for key, row in pending.items():
                found[key] = Completion.from_json(row[4])
            unique = [key for key in unique if key not in pending]
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

    def put(self, key: str, backend: str, model: str, request: Request | str, completion: Completion) -> None:
        """Queue one completion for the writer; returns at once unless `max_unsaved` are waiting.
        `request` may be given as its `canonical()` text already."""
        text = request if isinstance(request, str) else request.canonical()
        row = (key, backend, model, text, completion.to_json(), time.time())
        with self._state:
            self._check()
            if len(self._unsaved) >= self.max_unsaved:
                self.put_waits += 1
            while len(self._unsaved) >= self.max_unsaved and self._failed is None:
                self._hurry = True
                self._state.notify_all()
                self._state.wait()
            self._check()
            self._unsaved[key] = row
            if not self._queued:
                self._oldest = time.monotonic()
            self._queued.append(row)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name=f"datagen-cache:{self.path.name}",
                                                daemon=True)
                self._writer.start()
            if len(self._queued) == 1 or len(self._queued) >= self.commit_rows:
                self._state.notify_all()

    @property
    def unsaved(self) -> int:
        """Completions handed to `put` and not committed yet."""
        return len(self._unsaved)

    def flush(self) -> None:
        """Return once every completion `put` so far is committed (raises if a commit failed)."""
        with self._state:
            while self._unsaved and self._failed is None:
                self._hurry = True
                self._state.notify_all()
                self._state.wait()
            self._check()

    def _check(self) -> None:
        if self._failed is not None:
            raise DatagenError(f"{self.path}: could not save LLM replies to the cache: "
                               f"{type(self._failed).__name__}: {self._failed}")
        if self._closed:
            raise DatagenError(f"{self.path}: the LLM cache is closed")

    def _write_loop(self) -> None:
        """Take what is queued when the window closes (or `commit_rows` wait, or someone
        flushes), write it in one transaction, then drop it from `_unsaved`."""
        conn: sqlite3.Connection | None = None
        try:
            conn = sqlite3.connect(str(self.path), timeout=30)
            conn.execute("PRAGMA synchronous=NORMAL")
            while True:
                with self._state:
                    while not self._queued and not self._stopping:
                        self._state.wait()
                    if not self._queued:
                        return
                    while len(self._queued) < self.commit_rows and not self._hurry and not self._stopping:
                        left = self._oldest + self.commit_interval - time.monotonic()
                        if left <= 0:
                            break
                        self._state.wait(left)
                    batch, self._queued, self._hurry = self._queued, [], False
                conn.execute(_INSERT_BATCH, (json.dumps(batch, ensure_ascii=False),))
                conn.commit()
                with self._state:
                    for row in batch:
                        if self._unsaved.get(row[0]) is row:  # not replaced by a newer put meanwhile
                            del self._unsaved[row[0]]
                    self.commits += 1
                    self._state.notify_all()
        except BaseException as exc:  # noqa: BLE001 - reported to every put/flush from now on
            with self._state:
                self._failed = exc
                self._state.notify_all()
            log.error("%s: could not save LLM replies to the cache: %s", self.path, exc)
        finally:
            if conn is not None:
                conn.close()

    def token_totals(self) -> list[tuple[str, str, int, int]]:
        """(backend, model, prompt tokens, completion tokens) summed over stored answers:
        what they cost, for a budget that spans reruns."""
        self.flush()
        with self._lock:
            rows = self._conn.execute(
                "SELECT backend, model, SUM(json_extract(response, '$.prompt_tokens')),"
                " SUM(json_extract(response, '$.completion_tokens')) FROM completions GROUP BY backend, model"
            ).fetchall()
        return [(b, m, int(p or 0), int(c or 0)) for b, m, p, c in rows]

    def __len__(self) -> int:
        self.flush()
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0])

    def close(self) -> None:
        """Commit what is left, stop the writer, close the file. Safe to call twice."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            with self._state:
                self._stopping = True
                self._state.notify_all()
            if self._writer is not None:
                self._writer.join()
            self._closed = True
            with self._lock:
                self._conn.close()
            _open_caches.discard(self)


@atexit.register
def _close_open_caches() -> None:
    """A cache nobody closed (a script, a notebook) still commits its last window at exit."""
    for cache in list(_open_caches):
        try:
            cache.close()
        except Exception as exc:  # noqa: BLE001 - one bad cache must not stop the others
            log.error("%s: %s", cache.path, exc)


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
        return self.key_and_text(request)[0]

    def key_and_text(self, request: Request) -> tuple[str, str]:
        """The key and the request's `canonical()` text (what the cache stores beside the
        answer), made from one encoding whenever the two share it."""
        text = request.canonical()
        if request.response_format and not self.supports_json_schema:
            return dataclasses.replace(request, response_format=None).cache_key(
                self.backend, self.model, self.identity), text
        return request.cache_key(self.backend, self.model, self.identity, canonical=text), text

    async def generate(
        self, requests: Sequence[Request], on_result: ResultCallback | None = None
    ) -> list[Completion]:
        requests = list(requests)
        batch = _Lookup(self, requests, on_result)
        # Whatever way this ends, its completions are committed before it returns: a stage is
        # marked done only after its calls are durable.
        try:
            if getattr(self.inner, "batch", False):
                batch.resolve(0, len(requests))
                if batch.to_send:
                    await self._generate_batch_api(batch)
            elif getattr(self.inner, "streams_requests", False):
                # Keys are made and looked up a chunk at a time as the backend's workers take
                # requests, so the first one is on the wire at once instead of after every key
                # of the stage (~7 us each). Hits in a chunk are served when it is looked up.
                returned = await self.inner.generate(batch.stream(), batch.landed)
                batch.land_uncalled(returned)
            else:
                batch.resolve(0, len(requests))
                if batch.to_send:
                    batch.land_uncalled(await self.inner.generate([requests[i] for i in batch.to_send], batch.landed))
        except BaseException:
            await self._flush(quiet=True)
            raise
        await self._flush()
        return [r if r is not None else Completion(error="internal: no result") for r in batch.results]

    async def _generate_batch_api(self, batch: _Lookup) -> None:
        """Batch API (openai `batch: true`): custom_id = cache key; batch ids are kept next to
        the cache (in a pipeline: the run directory) so a rerun re-attaches."""
        sending = [batch.requests[i] for i in batch.to_send]
        if any(isinstance(request, PromptRequest) for request in sending):
            raise FatalLLMError(f"{self.name}: the Batch API route sends chat requests only; raw prompts "
                                "(magpie) need the live endpoint: set batch: false for this stage's backend")
        state_dir = self.cache.path.parent if self.cache is not None else None
        await self.inner.generate_batch(sending, [batch.keys[i] for i in batch.to_send], state_dir, batch.landed)

    async def _flush(self, quiet: bool = False) -> None:
        """Wait (off the loop) for the writer to commit this batch's last window. `quiet`: we
        are already failing; a commit error is logged, not raised over the first error."""
        if self.cache is None or not self.cache.unsaved:
            return
        try:
            await asyncio.to_thread(self.cache.flush)
        except Exception as exc:  # noqa: BLE001
            if not quiet:
                raise
            log.error("%s", exc)

    def close(self) -> None:
        self.inner.close()


def _duplicate_of(completion: Completion) -> Completion:
    """A duplicate of a success is free (counted as a cache hit); a duplicate of a failure is a
    failure too, and must count as one, not as a hit."""
    return Completion(texts=list(completion.texts), finish_reasons=list(completion.finish_reasons),
                      cached=completion.ok and not completion.is_empty, error=completion.error)


class _Lookup:
    """One `CachedLLM.generate` call's bookkeeping: which requests the cache answers, which
    repeat an earlier one of the batch (sent once, the same semantics as the cache), and which
    go to the backend (`to_send`, in the order the backend sees them)."""

    def __init__(self, llm: CachedLLM, requests: list[Request], on_result: ResultCallback | None):
        self.llm = llm
        self.requests = requests
        self.on_result = on_result
        self.keys: list[str] = [""] * len(requests)
        self.texts: list[str] = [""] * len(requests)  # each request's canonical() text, for the cache row
        self.results: list[Completion | None] = [None] * len(requests)
        self.to_send: list[int] = []
        self._first_index: dict[str, int] = {}  # key -> the request of this batch that carries it
        self._waiting: dict[str, list[int]] = {}  # key -> duplicates waiting for that request

    def _serve(self, i: int, completion: Completion) -> None:
        self.results[i] = completion
        self.llm.usage.add(completion)
        if self.on_result:
            self.on_result(i, completion)

    def resolve(self, start: int, stop: int) -> list[int]:
        """Key and look up requests[start:stop]; serve what the cache or an answered duplicate
        can. Returns the indices that must be sent (also appended to `to_send`)."""
        keyed = [self.llm.key_and_text(request) for request in self.requests[start:stop]]
        keys = [key for key, _ in keyed]
        self.keys[start:stop] = keys
        self.texts[start:stop] = [text for _, text in keyed]
        cache = self.llm.cache
        hits = cache.get_many([key for key in keys if key not in self._first_index]) if cache is not None else {}
        sending: list[int] = []
        for i, key in enumerate(keys, start):
            if key in self._first_index:
                answered = self.results[self._first_index[key]]
                if answered is None:
                    self._waiting[key].append(i)
                else:
                    self._serve(i, _duplicate_of(answered))
            elif key in hits:
                hit = hits[key]
                self._serve(i, Completion(texts=list(hit.texts), finish_reasons=list(hit.finish_reasons),
                                          prompt_tokens=hit.prompt_tokens, completion_tokens=hit.completion_tokens,
                                          cached=True))
            else:
                self._first_index[key] = i
                self._waiting[key] = []
                sending.append(i)
        self.to_send.extend(sending)
        return sending

    def stream(self) -> _Unsent:
        return _Unsent(self)

    def landed(self, j: int, completion: Completion) -> None:
        """The backend's callback for its j-th request (`to_send[j]`)."""
        i = self.to_send[j]
        cache = self.llm.cache
        if completion.ok and not completion.is_empty and cache is not None:
            cache.put(self.keys[i], self.llm.backend, self.llm.model, self.texts[i], completion)
            faults.after_committed_call()
        self._serve(i, completion)
        for dup in self._waiting.pop(self.keys[i], ()):
            self._serve(dup, _duplicate_of(completion))

    def land_uncalled(self, returned: Sequence[Completion]) -> None:
        """Results a backend returned without calling back (each backend may choose)."""
        for j, completion in enumerate(returned[: len(self.to_send)]):
            if self.results[self.to_send[j]] is None:
                self.landed(j, completion)


class _Unsent:
    """The requests the cache cannot answer, found a chunk at a time while they are taken. For
    backends with `streams_requests`: they read `len()` as an upper bound and iterate once.
    The first chunk is small, so the first request leaves at once; chunks then double up to
    `LAST_CHUNK`, since each lookup is one SQLite query (a GIL hand-off while calls are in flight)."""

    FIRST_CHUNK = 64
    LAST_CHUNK = 512

    def __init__(self, lookup: _Lookup):
        self._lookup = lookup

    def __len__(self) -> int:
        return len(self._lookup.requests)

    def __iter__(self) -> Iterator[Request]:
        lookup = self._lookup
        start, chunk = 0, self.FIRST_CHUNK
        while start < len(lookup.requests):
            for i in lookup.resolve(start, start + chunk):
                yield lookup.requests[i]
            start, chunk = start + chunk, min(2 * chunk, self.LAST_CHUNK)
