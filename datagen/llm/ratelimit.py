"""Admission control for a paid or slow endpoint: who may send a request, and when.

One `RequestLimiter` per backend instance decides for every attempt (first tries and
retries alike) through two calls, so a shared, cross-process limiter wraps it under
`executor: ray` (datagen/llm/ray_gate.py) without touching the client:

    ticket = await limiter.acquire(estimated_tokens, priority=attempt)
    ... send, read the reply ...
    limiter.settle(ticket, latency=..., status=..., headers=..., tokens_used=...)

What it enforces, and why each piece exists:
- `max_requests_per_minute` / `max_tokens_per_minute`: two token buckets refilled
  continuously. A request takes 1 request and its estimated tokens (prompt estimate +
  `max_tokens` x n) before it is sent; `settle` refunds what the reply's `usage` says was
  not used, so the token limit tracks real use, not the worst case. The buckets hold half a
  second's allowance: providers enforce per-minute limits in short slices (OpenAI: "600 RPM
  may be enforced as 10 per second"), so a minute's worth at once would be refused.
- `x-ratelimit-limit-*` / `-remaining-*` / `-reset-*` headers: a limit the server announces
  is adopted when none was configured; our bucket never believes in more than the server
  says is left (another client may share the key); a server that reports 0 left pauses
  admission until its reset.
- One shared cool-down: a 429 pauses admission of *every* request for its Retry-After
  (not just the one that got it), and empties the request bucket so traffic restarts gently.
- Adaptive concurrency (AIMD, as TCP): the in-flight limit starts at `max_concurrency`; a
  timeout, a 503 or a reply slower than `latency_ceiling` halves it (once per round trip),
  every good reply grows it by 1/limit (about +1 per round trip). A slow server is then
  used at the concurrency it can serve instead of being overrun into timeouts.
- Priority: retries are admitted before first attempts (higher `priority` first), so a
  request that timed out does not rejoin the back of the queue its own overload built.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

# Share of a per-minute limit our bucket may spend at once: half a second's worth.
BURST_SHARE = 1 / 120
SLOW_STATUSES = {503, 504, 529}  # "overloaded": back off concurrency like a timeout


@dataclass
class TokenBucket:
    """`rate` units per second, at most `capacity` saved up. A request larger than the
    capacity is let through when the bucket is full (it would never fit otherwise)."""

    rate: float
    capacity: float
    level: float = 0.0
    stamp: float = field(default_factory=time.monotonic)

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
            self.stamp = now

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds until `amount` can be taken (0 when it can be taken now)."""
        self.refill(now)
        need = min(amount, self.capacity)
        if self.level >= need:
            return 0.0
        return (need - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= amount

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


def parse_reset(raw: str | None) -> float | None:
    """`x-ratelimit-reset-*` values as OpenAI sends them ("1s", "6m0s", "20ms", "0.5") -> seconds."""
    if raw is None:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", raw)
    if not parts or "".join(a + b for a, b in parts) != raw:
        return None
    scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    return sum(float(value) * scale[unit] for value, unit in parts)


@dataclass
class Ticket:
    """One admitted attempt: what it reserved and when it was let through."""

    tokens: int
    admitted: float
    settled: bool = False


@dataclass
class _Waiter:
    tokens: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop


class RequestLimiter:
    """Concurrency, rate limits and the 429 cool-down of one backend; see the module doc.

    State is plain data under a lock (not bound to an event loop): `generate_sync` may run
    each batch in a fresh loop, and the limit must hold across them.
    """

    def __init__(
        self,
        max_concurrency: int,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        adaptive: bool = True,
        latency_ceiling: float | None = None,
        min_concurrency: int = 1,
        period: float = 60.0,
    ):
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.min_concurrency = max(1, min(min_concurrency, max_concurrency))
        self.adaptive = adaptive
        self.latency_ceiling = latency_ceiling
        self.limit = float(max_concurrency)  # the adaptive in-flight limit
        self.in_flight = 0
        self.resume_at = 0.0  # shared cool-down: nothing is admitted before this
        self.cuts = 0  # how often AIMD halved the limit (for tests and the progress line)
        self.lowest_limit = self.limit
        self._last_cut = -math.inf
        now = time.monotonic()
        self.period = period
        self.requests = self._bucket(requests_per_minute, period, now)
        self.tokens = self._bucket(tokens_per_minute, period, now)
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, int, _Waiter]] = []  # heap of (-priority, arrival, waiter)
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    @staticmethod
    def _bucket(per_minute: float | None, period: float, now: float) -> TokenBucket | None:
        if not per_minute:
            return None
        capacity = max(1.0, per_minute * BURST_SHARE)
        return TokenBucket(rate=per_minute / period, capacity=capacity, level=capacity, stamp=now)

    # ---- the interface --------------------------------------------------------------
    async def acquire(self, tokens: int = 0, priority: int = 0) -> Ticket:
        """Wait until this attempt may be sent. Higher `priority` goes first (retries)."""
        loop = asyncio.get_running_loop()
        with self._lock:  # fast path: nobody queued, a slot free, nothing to wait for
            now = time.monotonic()
            if not self._waiters and self.in_flight < max(1, int(self.limit)) and self._wait(tokens, now) <= 0:
                return self._admit(tokens, now)
            waiter = _Waiter(tokens, loop.create_future(), loop)
            heapq.heappush(self._waiters, (-priority, next(self._order), waiter))
        self._pump()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if waiter.future.done() and not waiter.future.cancelled():
                self.settle(waiter.future.result())  # admitted, then cancelled: free the slot
            raise

    def settle(
        self,
        ticket: Ticket,
        *,
        latency: float | None = None,
        status: int | None = None,
        timed_out: bool = False,
        headers: Mapping[str, str] | None = None,
        tokens_used: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        """Report how the attempt went; frees its slot and adjusts limits. Safe to call once
        per ticket from `finally`; later calls are ignored."""
        now = time.monotonic()
        with self._lock:
            if ticket.settled:
                return
            ticket.settled = True
            self.in_flight -= 1
            if self.tokens is not None and tokens_used is not None and ticket.tokens > tokens_used:
                self.tokens.give_back(ticket.tokens - tokens_used)
            if status == 429:
                self._cool_down(now, retry_after if retry_after is not None else 1.0)
            if headers:
                self._apply_headers(now, headers)
            if self.adaptive:
                self._adapt(ticket, now, latency, status, timed_out)
            queued = bool(self._waiters)
        if queued:
            self._pump()

    # ---- inside ---------------------------------------------------------------------
    def _cool_down(self, now: float, seconds: float) -> None:
        self.resume_at = max(self.resume_at, now + seconds)
        if self.requests is not None:
            self.requests.refill(now)
            self.requests.level = min(self.requests.level, 0.0)

    def _apply_headers(self, now: float, headers: Mapping[str, str]) -> None:
        for kind in ("requests", "tokens"):
            bucket = getattr(self, kind)
            if bucket is None:  # no limit configured: adopt the one the server announces
                try:
                    announced = float(headers.get(f"x-ratelimit-limit-{kind}") or 0)
                except ValueError:
                    announced = 0.0
                if announced > 0:
                    bucket = self._bucket(announced, self.period, now)
                    setattr(self, kind, bucket)
            raw = headers.get(f"x-ratelimit-remaining-{kind}")
            if raw is None:
                continue
            try:
                remaining = float(raw)
            except ValueError:
                continue
            if bucket is not None:
                bucket.refill(now)
                bucket.level = min(bucket.level, remaining)
            if remaining <= 0:
                reset = parse_reset(headers.get(f"x-ratelimit-reset-{kind}"))
                if reset:
                    self.resume_at = max(self.resume_at, now + reset)

    def _adapt(self, ticket: Ticket, now: float, latency: float | None, status: int | None, timed_out: bool) -> None:
        congested = timed_out or status in SLOW_STATUSES or (
            self.latency_ceiling is not None and latency is not None and latency > self.latency_ceiling
        )
        if congested:
            # One cut per round trip: replies to requests admitted before the last cut
            # describe the old load and must not cut again.
            if ticket.admitted >= self._last_cut:
                self.limit = max(float(self.min_concurrency), self.limit / 2)
                self._last_cut = now
                self.cuts += 1
                self.lowest_limit = min(self.lowest_limit, self.limit)
        elif status is not None and status < 400:
            self.limit = min(float(self.max_concurrency), self.limit + 1.0 / self.limit)

    def _pump(self) -> None:
        """Admit waiters, best first, while a slot is free and the buckets allow."""
        admitted: list[tuple[_Waiter, Ticket]] = []
        wake_in: float | None = None
        with self._lock:
            now = time.monotonic()
            while self._waiters:
                head = self._waiters[0][2]
                if head.future.done():  # cancelled while waiting
                    heapq.heappop(self._waiters)
                    continue
                if self.in_flight >= max(1, int(self.limit)):
                    break
                wait = self._wait(head.tokens, now)
                if wait > 0:
                    wake_in = wait
                    break
                heapq.heappop(self._waiters)
                admitted.append((head, self._admit(head.tokens, now)))
        for waiter, ticket in admitted:
            self._resolve(waiter, ticket)
        if wake_in is not None:
            self._schedule(wake_in)

    def _wait(self, tokens: int, now: float) -> float:
        """Seconds until the cool-down and both buckets let a request of `tokens` through."""
        wait = self.resume_at - now
        for bucket, amount in ((self.requests, 1), (self.tokens, tokens)):
            if bucket is not None and wait <= 0:
                wait = bucket.wait_for(amount, now)
        return wait

    def _admit(self, tokens: int, now: float) -> Ticket:
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)
        self.in_flight += 1
        return Ticket(tokens=tokens, admitted=now)

    def _schedule(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # settled from a thread without a loop: wake a waiter's loop
            with self._lock:
                loops = [w.loop for _, _, w in self._waiters if not w.loop.is_closed()]
            if loops:
                loops[0].call_soon_threadsafe(self._schedule, delay)
            return
        with self._lock:
            if self._timer is not None and not self._timer.cancelled():
                when = self._timer.when() - loop.time()
                if self._timer_loop is loop and when <= delay + 1e-4:
                    return
                self._timer.cancel()
            self._timer = loop.call_later(max(delay, 0.0005), self._on_timer)
            self._timer_loop = loop

    _timer_loop: asyncio.AbstractEventLoop | None = None

    def _on_timer(self) -> None:
        with self._lock:
            self._timer = None
        self._pump()

    def _resolve(self, waiter: _Waiter, ticket: Ticket) -> None:
        def set_result() -> None:
            if waiter.future.done():  # cancelled meanwhile: its slot goes back
                self.settle(ticket)
            else:
                waiter.future.set_result(ticket)

        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is waiter.loop:
            set_result()
        elif not waiter.loop.is_closed():
            waiter.loop.call_soon_threadsafe(set_result)
        else:
            self.settle(ticket)


def estimate_prompt_tokens(messages: tuple[tuple[str, str], ...]) -> int:
    """A deliberately high guess of a prompt's tokens without the model's tokenizer: UTF-8
    bytes / 3 (BPE tokenizers average ~4 bytes per English token and ~3 per CJK character),
    plus the chat template's few tokens per message."""
    size = sum(len(role.encode("utf-8")) + len(content.encode("utf-8")) for role, content in messages)
    return math.ceil(size / 3) + 4 * len(messages) + 3
