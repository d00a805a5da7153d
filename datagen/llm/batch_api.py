"""OpenAI Batch API: the same requests through `/v1/files` + `/v1/batches`, at about half price.

Flow per call: the cache misses become JSONL lines `{"custom_id": <cache key>, "method":
"POST", "url": "/v1/chat/completions", "body": <the same payload the live client sends>}`,
split at the provider's limits (50,000 requests or 200 MB per file), each chunk uploaded and
made a batch. The batch ids go into `<state_dir>/batches.json` *before* polling starts, so a
run killed at any point re-attaches on rerun to the batches it already paid for instead of
creating them again. Polling backs off (1 s, x1.5, up to a minute). When a batch ends, its
output and error files are downloaded and every answer goes through `on_result` (the
cache commits it at once). Requests that failed, expired or were cancelled are resubmitted
in a new batch, up to `max_rounds` times, then come back as failed completions.

Why custom_id = the cache key: answers come back in any order, possibly after a restart;
the key maps each one to its request and cache row without any other state.
The budget is charged at the batch price (`Rate.batch_share`): worst case reserved per
chunk before it is created, real usage settled per answer.

Left out on purpose: a crash between "batch created" and "id written" (one HTTP round trip)
can leave one orphan batch; the provider's batch list could find it, but not every
OpenAI-compatible server has one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from datagen.jsonl import dumps_jsonl, loads_jsonl
from datagen.llm.base import ChatRequest, Completion, ResultCallback
from datagen.llm.budget import BudgetExceeded, Reservation

MAX_REQUESTS_PER_FILE = 50_000
MAX_BYTES_PER_FILE = 200 * 1024 * 1024
TERMINAL = {"completed", "failed", "expired", "cancelled"}


def split_lines(lines: Sequence[bytes], max_requests: int, max_bytes: int) -> list[list[int]]:
    """Indices of `lines` in chunks of at most `max_requests` lines and `max_bytes` bytes."""
    chunks: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, line in enumerate(lines):
        if len(line) > max_bytes:
            raise ValueError(f"batch: one request is {len(line)} bytes, over the {max_bytes}-byte file limit")
        if current and (len(current) >= max_requests or size + len(line) > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(i)
        size += len(line)
    if current:
        chunks.append(current)
    return chunks


class BatchRunner:
    def __init__(
        self,
        client: Any,
        state_dir: str | Path | None,
        max_requests_per_file: int = MAX_REQUESTS_PER_FILE,
        max_bytes_per_file: int = MAX_BYTES_PER_FILE,
        poll_initial: float = 1.0,
        poll_max: float = 60.0,
        completion_window: str = "24h",
        max_rounds: int = 4,
    ):
        self.client = client
        if state_dir is None:  # no cache, so no run directory: keep the ids in the user cache
            from datagen.paths import cache_root

            state_dir = cache_root()
        self.state_path = Path(state_dir) / "batches.json"
        self.max_requests = max_requests_per_file
        self.max_bytes = max_bytes_per_file
        self.poll_initial = poll_initial
        self.poll_max = poll_max
        self.completion_window = completion_window
        self.max_rounds = max_rounds

    # ---- state on disk ----------------------------------------------------------------
    def _load(self) -> list[dict[str, Any]]:
        if not self.state_path.exists():
            return []
        try:
            return list(json.loads(self.state_path.read_text(encoding="utf-8")).get("batches", []))
        except ValueError:
            raise ValueError(f"{self.state_path}: not valid JSON; delete it to start the batches afresh") from None

    def _save(self, batches: list[dict[str, Any]]) -> None:
        from datagen.io import atomic_write_text

        atomic_write_text(self.state_path, json.dumps({"batches": batches}, indent=1))

    # ---- the run -------------------------------------------------------------------------
    async def run(self, requests: list[ChatRequest], keys: list[str],
                  on_result: ResultCallback | None = None) -> list[Completion]:
        results: list[Completion | None] = [None] * len(requests)
        index = {key: i for i, key in enumerate(keys)}
        failures: dict[str, str] = {}
        headers = {"Authorization": f"Bearer {self.client._api_key}", "User-Agent": "datagen"}
        async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=600)) as session:
            self.session = session
            batches = self._load()
            # Re-attach to what an earlier (killed) run created and did not collect yet.
            open_batches = [b for b in batches if not b.get("collected")]
            covered = {cid for b in open_batches for cid in b["custom_ids"]}
            todo = [key for key in keys if key not in covered]
            reservations: dict[str, Reservation] = {}
            for round_no in range(self.max_rounds + 1):
                if todo and round_no < self.max_rounds:
                    open_batches += await self._submit([requests[index[k]] for k in todo], todo, batches,
                                                       reservations)
                elif todo:
                    break
                if not open_batches:
                    break
                todo = []
                for batch in await self._wait_all(open_batches):
                    done = await self._collect(batch, index, results, requests, reservations, on_result)
                    for cid, why in done.items():
                        failures[cid] = why
                        if cid in index:
                            todo.append(cid)
                    batch["collected"] = True
                    self._save(batches)
                open_batches = []
        out = []
        for i, result in enumerate(results):
            if result is None:
                result = Completion(error=f"batch: {failures.get(keys[i], 'no answer')}")
                if on_result:
                    on_result(i, result)
            out.append(result)
        if self.client.budget is not None and self.client.budget.stopped:
            raise BudgetExceeded(self.client.budget.spent, self.client.budget.cap)
        return out

    async def _submit(self, requests: list[ChatRequest], keys: list[str], batches: list[dict[str, Any]],
                      reservations: dict[str, Reservation]) -> list[dict[str, Any]]:
        lines = [
            dumps_jsonl([{"custom_id": key, "method": "POST", "url": "/v1/chat/completions",
                          "body": json.loads(self.client._payload(req, req.n))}]).encode("utf-8")
            for key, req in zip(keys, requests, strict=True)
        ]
        created = []
        budget, rate = self.client.budget, self.client.price
        for chunk in split_lines(lines, self.max_requests, self.max_bytes):
            if budget is not None and rate is not None:
                try:
                    held = {keys[i]: budget.reserve(rate, requests[i].estimate_parts, requests[i].max_tokens,
                                                    requests[i].n, batch=True) for i in chunk}
                except BudgetExceeded:
                    break  # what was created still finishes; run() raises at the end
                reservations.update(held)
            file_id = await self._upload(b"".join(lines[i] for i in chunk))
            batch = await self._json("POST", "/batches", {
                "input_file_id": file_id, "endpoint": "/v1/chat/completions",
                "completion_window": self.completion_window,
            })
            entry = {"id": batch["id"], "input_file_id": file_id, "custom_ids": [keys[i] for i in chunk],
                     "created": time.time()}
            batches.append(entry)
            self._save(batches)  # before polling: a killed run re-attaches instead of paying twice
            created.append(entry)
        return created

    async def _wait_all(self, open_batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Poll until every batch is in a terminal state; returns their latest views."""
        delay = self.poll_initial
        pending = {b["id"]: b for b in open_batches}
        while True:
            for batch_id in list(pending):
                view = await self._json("GET", f"/batches/{batch_id}")
                if view.get("status") in TERMINAL:
                    pending[batch_id]["view"] = view
                    del pending[batch_id]
            if not pending:
                return open_batches
            await asyncio.sleep(delay)
            delay = min(self.poll_max, delay * 1.5)

    async def _collect(self, batch: dict[str, Any], index: dict[str, int], results: list[Completion | None],
                       requests: list[ChatRequest], reservations: dict[str, Reservation],
                       on_result: ResultCallback | None) -> dict[str, str]:
        """Commit the batch's answers; returns custom_id -> why, for the ones to resubmit."""
        from datagen.llm.wire import parse_chat_completion

        view = batch["view"]
        answered: set[str] = set()
        failed: dict[str, str] = {}
        if view.get("output_file_id"):
            for row in await self._lines(view["output_file_id"]):
                cid = row.get("custom_id")
                response = row.get("response") or {}
                if response.get("status_code") != 200:
                    failed[cid] = f"http_{response.get('status_code')}"
                    continue
                try:
                    completion = parse_chat_completion(json.dumps(response.get("body")).encode("utf-8"))
                except ValueError as exc:
                    failed[cid] = f"bad_response: {exc}"
                    continue
                answered.add(cid)
                self._settle(cid, reservations, completion)
                if cid in index and results[index[cid]] is None:
                    results[index[cid]] = completion
                    if on_result:
                        on_result(index[cid], completion)
        if view.get("error_file_id"):
            for row in await self._lines(view["error_file_id"]):
                error = row.get("error") or {}
                response = row.get("response") or {}
                failed[row.get("custom_id")] = str(error.get("code") or f"http_{response.get('status_code')}")
        for cid in batch["custom_ids"]:
            if cid not in answered:
                failed.setdefault(cid, view.get("status", "missing"))
                self._settle(cid, reservations, None)
        return failed

    def _settle(self, cid: str, reservations: dict[str, Reservation], completion: Completion | None) -> None:
        budget, held = self.client.budget, reservations.pop(cid, None)
        if budget is None:
            return
        if held is None:  # re-attached from an earlier run: charge what it cost
            held = Reservation(0.0, batch=True)
        budget.settle(held, self.client.price, completion.prompt_tokens if completion else 0,
                      completion.completion_tokens if completion else 0)

    # ---- HTTP --------------------------------------------------------------------------
    async def _json(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        from datagen.llm.wire import HTTPStatusError, _error_message

        url = f"{self.client.base_url}{path}"
        for attempt in range(6):
            async with self.session.request(method, url, json=payload) as response:
                body = await response.read()
                if response.status < 400:
                    return json.loads(body)
                error = HTTPStatusError(response.status, _error_message(body), response.headers)
            if response.status != 429 and response.status < 500:
                raise ValueError(f"{url}: {error}")
            await asyncio.sleep(min(30.0, 0.5 * 2**attempt))
        raise ValueError(f"{url}: {error} (after 6 attempts)")

    async def _upload(self, content: bytes) -> str:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", content, filename="requests.jsonl", content_type="application/jsonl")
        async with self.session.post(f"{self.client.base_url}/files", data=form) as response:
            body = await response.read()
            if response.status >= 400:
                from datagen.llm.wire import _error_message

                raise ValueError(f"{self.client.base_url}/files: {response.status} {_error_message(body)}")
            return str(json.loads(body)["id"])

    async def _lines(self, file_id: str) -> list[dict[str, Any]]:
        async with self.session.get(f"{self.client.base_url}/files/{file_id}/content") as response:
            body = await response.read()
            if response.status >= 400:
                raise ValueError(f"batch output {file_id}: http {response.status}")
        return loads_jsonl(body.decode("utf-8"), f"batch output {file_id}")
