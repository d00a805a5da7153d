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
- Adaptive concurrency: the in-flight limit follows the server's *per-output-token*
  latency, not whole-request latency (which grows with the answer's length and `n`, not
  only with queueing: a healthy CPU server writing a 256-token answer takes a minute). It
  slow-starts at `initial_concurrency` (8) and steps up (at most 2x a step) while a step buys
  tokens/s (load / per-token time), never towards replies that would outlast the timeout: a burst at
  `max_concurrency` on a slow server makes every answer slow at once, and they time out
  together. Then it tracks `limit x min(1, TOLERANCE x baseline / per_token) + sqrt(limit)`
  (Netflix concurrency-limits' gradient, TCP Vegas' base RTT) with the baseline set at the
  level slow start kept; see `_Gradient` below. Hard signals cut it in half at once (once
  per round trip): a timeout, 429, 503/504/529, a reply slower than an explicit
  `latency_ceiling`, or a short answer (no per-token evidence) slower than
  `short_reply_ceiling`. A server that reports its own queue (vLLM's `/metrics`
  `vllm:num_requests_waiting`, see `observe_queue`) caps the limit at what the server runs
  of ours; timeouts of requests sent before that cut do not cut again. A clean signal
  regrows the limit by half per round trip, up to the level slow start kept.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# Share of a per-minute limit our bucket may spend at once: half a second's worth.
BURST_SHARE = 1 / 120
SLOW_STATUSES = {503, 504, 529}  # "overloaded": back off concurrency like a timeout
HARD_STATUSES = SLOW_STATUSES | {429}  # halve the in-flight limit (429 also starts the cool-down)

# The per-token gradient (`_Gradient`): why each number is what it is.
TOLERANCE = 1.5  # per-token latency up to 1.5x the baseline is batching, not queueing
MIN_GRADIENT = 0.5  # the gradient never cuts more per round trip than a hard signal does
GROWTH = 0.5  # clean signal: the limit grows by half per round trip (multiplicative recovery)
MIN_SAMPLE_TOKENS = 8  # shorter answers carry no per-token evidence (overhead dominates)
INITIAL_CONCURRENCY = 8  # slow start begins here: a burst at max_concurrency can outlast its timeout
GROW_EFFICIENCY = 0.2  # slow start grows on while >= 20 % of the added load comes back as tokens/s
KEEP_EFFICIENCY = 0.05  # ... and keeps the last step only if >= 5 % of it did
DEADLINE_SHARE = 0.9  # a step may slow the longest reply seen to at most 90 % of the timeout
MIN_STEP = 1.25  # a smaller step than this is not worth a round trip's measurement
BASELINE_SECONDS = 600.0  # slow start is repeated this often (the server may have changed)
REPROBE_AFTER_CUT = 60.0  # ... or this soon when a cut ended it (a transient must not pin the limit)
QUEUE_INTERVAL = 1.0  # at most one queue-driven cut per second (metrics are polled ~1/s)
HISTORY_SECONDS = 0.5  # the (time, limit) series keeps at most one point per half second
HISTORY_MAX = 2048  # ... and is thinned to half when it reaches this many points


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
    load: int = 1  # requests in flight right after this one was admitted
    serial: int = 0  # admissions before this one (tells replies to an old load from new ones)
    output_budget: int = 0  # max_tokens x n of the request: the most it may ask the server to write


@dataclass
class _Waiter:
    tokens: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    output_budget: int = 0


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
        short_reply_ceiling: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        initial_concurrency: int = INITIAL_CONCURRENCY,
        deadline: float | None = None,
    ):
        """`latency_ceiling`: any reply slower than this is congestion (set explicitly);
        `short_reply_ceiling`: only a reply too short to judge per token is (the default
        timeout/2 of `EndpointOptions.limiter`); `initial_concurrency`: where slow start begins
        (adaptive only); `deadline`: the request timeout, which slow start never steps
        towards; `clock`: the gradient's time (tests)."""
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.min_concurrency = max(1, min(min_concurrency, max_concurrency))
        self.adaptive = adaptive
        self.latency_ceiling = latency_ceiling
        self.short_reply_ceiling = short_reply_ceiling
        self.clock = clock
        self.deadline = deadline
        start = min(max_concurrency, max(self.min_concurrency, initial_concurrency)) if adaptive else max_concurrency
        self.limit = float(start)  # the adaptive in-flight limit
        self.in_flight = 0
        self.resume_at = 0.0  # shared cool-down: nothing is admitted before this
        self.cuts = 0  # how often a hard signal halved the limit (tests, the bench)
        self.lowest_limit = self.limit
        self._last_cut = -math.inf
        self._gradient = _Gradient(self)
        self.admissions = 0
        self.sequences = 1.0  # mean choices per request: a server counts its queue in sequences
        self.timeouts = 0  # attempts that timed out (retried or not), for the run report
        self.queue_cuts = 0  # cuts because the server reported requests waiting in its queue
        self.history: list[tuple[float, float]] = [(clock(), self.limit)]  # (clock time, limit)
        now = time.monotonic()
        self.period = period
        self.requests = self._bucket(requests_per_minute, period, now)
        self.tokens = self._bucket(tokens_per_minute, period, now)
        self._lock = threading.Lock()
        self._waiters: list[tuple[int, int, _Waiter]] = []  # heap of (-priority, arrival, waiter)
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        # Growth that short replies earned (slow start, +1 each, no per-token evidence) says
        # nothing about requests that may write more: they are held at the level it began
        # from until one of them reports (see `_slots_for`).
        self._short_growth_from: float | None = None
        self._short_budget = 0  # the largest output budget among the replies that earned it

    @staticmethod
    def _bucket(per_minute: float | None, period: float, now: float) -> TokenBucket | None:
        if not per_minute:
            return None
        capacity = max(1.0, per_minute * BURST_SHARE)
        return TokenBucket(rate=per_minute / period, capacity=capacity, level=capacity, stamp=now)

    # ---- the interface --------------------------------------------------------------
    async def acquire(self, tokens: int = 0, priority: int = 0, output_budget: int = 0) -> Ticket:
        """Wait until this attempt may be sent. Higher `priority` goes first (retries);
        `output_budget` (max_tokens x n) tells a request that may write long answers from the
        short ones the limit may have grown on."""
        loop = asyncio.get_running_loop()
        with self._lock:  # fast path: a slot free, nothing to wait for, no one queued who must go first
            now = time.monotonic()
            if (self.in_flight < self._slots_for(output_budget) and self._wait(tokens, now) <= 0
                    and self._may_pass(priority, now)):
                return self._admit(tokens, now, output_budget)
            waiter = _Waiter(tokens, loop.create_future(), loop, output_budget)
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
        output_tokens: int | None = None,
        sequences: int = 1,
    ) -> None:
        """Report how the attempt went; frees its slot and adjusts limits. Safe to call once
        per ticket from `finally`; later calls are ignored. `output_tokens` (the reply's
        completion tokens over its `sequences` choices) is what the gradient divides by."""
        now = time.monotonic()
        with self._lock:
            if ticket.settled:
                return
            ticket.settled = True
            self.in_flight -= 1
            if self.tokens is not None and tokens_used is not None and ticket.tokens > tokens_used:
                self.tokens.give_back(ticket.tokens - tokens_used)
            self.timeouts += timed_out
            self.sequences += (max(1, sequences) - self.sequences) / 16  # choices per request, smoothed
            if status == 429:
                self._cool_down(now, retry_after if retry_after is not None else 1.0)
            if headers:
                self._apply_headers(now, headers)
            if self.adaptive:
                self._adapt(ticket, now, latency, status, timed_out, output_tokens, sequences)
            queued = bool(self._waiters)
        if queued:
            self._pump_soon()

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

    def _adapt(self, ticket: Ticket, now: float, latency: float | None, status: int | None, timed_out: bool,
               output_tokens: int | None, sequences: int) -> None:
        per_sequence = output_tokens / max(1, sequences) if output_tokens is not None else 0.0
        evidence = latency is not None and per_sequence >= MIN_SAMPLE_TOKENS
        congested = timed_out or status in HARD_STATUSES or (
            latency is not None and self.latency_ceiling is not None and latency > self.latency_ceiling
        ) or (
            not evidence and latency is not None and self.short_reply_ceiling is not None
            and latency > self.short_reply_ceiling
        )
        if congested:
            self._cut(ticket, now)
        elif status is not None and status < 400:
            if evidence:
                assert latency is not None
                if self._short_growth_from is not None and ticket.output_budget > self._short_budget:
                    # The first longer request has reported: what short replies earned is not
                    # its level. Slow start measures again from where that growth began; replies
                    # to requests sent before (beside the short ones) describe another load.
                    self._gradient.measure_again(self._short_growth_from)
                    self._short_growth_from, self._short_budget = None, 0
                # The load it ran under: at least what is in flight as it lands (the first
                # wave is admitted one by one, at loads 1..n, yet all of it runs at n).
                load = max(ticket.load, self.in_flight + 1)
                self._gradient.sample(ticket, latency / per_sequence, per_sequence, load, latency)
            elif self._gradient.phase != "steady" and not self._gradient.baseline:
                # Slow start with nothing to judge per token yet (short answers: a judge, a
                # classifier): +1 per reply, twice the limit per round trip, as TCP's slow start.
                if self._short_growth_from is None:
                    self._short_growth_from = self.limit
                self._short_budget = max(self._short_budget, ticket.output_budget)
                self._set_limit(self.limit + 1.0)
            else:  # no per-token evidence: AIMD's additive increase, about +1 per round trip
                grown = self.limit + 1.0 / self.limit
                if self._gradient.phase == "steady":  # never past the level slow start kept
                    grown = min(grown, max(self.limit, self._gradient.ceiling))
                self._set_limit(grown)

    def _cut(self, ticket: Ticket, now: float) -> None:
        # One cut per round trip: replies to requests admitted before the last cut
        # describe the old load and must not cut again.
        if ticket.admitted >= self._last_cut:
            self._set_limit(self.limit / 2)
            self._last_cut = now
            self.cuts += 1
            self._gradient.interrupted()

    def _set_limit(self, value: float) -> None:
        self.limit = max(float(self.min_concurrency), min(float(self.max_concurrency), value))
        self.lowest_limit = min(self.lowest_limit, self.limit)
        now = self.clock()
        last_t, last_limit = self.history[-1]
        if now - last_t >= HISTORY_SECONDS and abs(self.limit - last_limit) >= 0.5:
            self.history.append((now, self.limit))
            if len(self.history) >= HISTORY_MAX:
                self.history = self.history[::2]

    def observe_queue(self, waiting: float) -> None:
        """The server's own queue (vLLM `/metrics` `vllm:num_requests_waiting`, polled by the
        client): requests waiting there are in flight for us but served by no one, so the
        limit drops to what the server runs of ours, `in_flight - waiting` (vLLM counts each of
        a request's n choices: `waiting` is divided by our mean n) (at most by half
        per QUEUE_INTERVAL). Judged against what is in flight, not the limit, a queue that
        persists while our earlier requests drain is not cut again and again. An empty queue
        is no evidence to grow on: a server may serve everything it admitted, slowly."""
        if not self.adaptive or waiting <= 0:
            return
        with self._lock:
            now = self.clock()
            target = self.in_flight - waiting / self.sequences  # vLLM queues each of n choices
            if now - self._gradient.last_queue_cut < QUEUE_INTERVAL or target >= self.limit:
                return
            self._gradient.last_queue_cut = now
            self._set_limit(max(self.limit / 2, target))
            self.queue_cuts += 1
            self._last_cut = time.monotonic()  # timeouts of requests sent before it: the old load
            self._gradient.interrupted()

    def _slots_for(self, output_budget: int) -> int:
        """The in-flight limit for a request that may write `output_budget` tokens: a limit
        grown only on shorter replies does not apply to it. (Modelled on vllm serve on 2 CPU
        cores: a classifier's one-word replies grew the limit to 64, and the next stage's long
        answers, sent 64 at once, timed out; tests/test_adaptive_concurrency.py.)"""
        slots = max(1, int(self.limit))
        if self._short_growth_from is not None and output_budget > self._short_budget:
            slots = min(slots, max(1, int(self._short_growth_from)))
        return slots

    def _may_pass(self, priority: int, now: float) -> bool:
        """Whether a request may take a free slot past the queue. A worker whose reply just
        landed asks again for its next request in the same loop turn; handing its slot to a
        queued worker instead costs a loop turn per request, and at 256 in flight that turn
        waits behind every other reply of the burst (~4 % of throughput in
        bench/orchestration.py). So it may pass waiters of no higher priority, and only for
        the slot: never while a waiter needs the rate buckets to refill, whose tokens it would
        take. Retries (higher priority) still go first."""
        if not self._waiters:
            return True
        best_priority, _, head = self._waiters[0]
        return priority >= -best_priority and self._wait(head.tokens, now) <= 0

    def _pump_soon(self) -> None:
        """Admit waiters on the loop's next turn, after the settling worker had its chance to
        take the slot for its next request (`_may_pass`); at once outside a loop."""
        try:
            asyncio.get_running_loop().call_soon(self._pump)
        except RuntimeError:
            self._pump()

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
                if self.in_flight >= self._slots_for(head.output_budget):
                    break
                wait = self._wait(head.tokens, now)
                if wait > 0:
                    wake_in = wait
                    break
                heapq.heappop(self._waiters)
                admitted.append((head, self._admit(head.tokens, now, head.output_budget)))
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

    def _admit(self, tokens: int, now: float, output_budget: int = 0) -> Ticket:
        if self.requests is not None:
            self.requests.take(1)
        if self.tokens is not None:
            self.tokens.take(tokens)
        self.in_flight += 1
        self.admissions += 1
        return Ticket(tokens=tokens, admitted=now, load=self.in_flight, serial=self.admissions,
                      output_budget=output_budget)

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


@dataclass
class _Sample:
    per_token: float  # seconds per output token of one sequence
    bucket: int  # answers of similar length share a baseline (log2 of their tokens)
    load: int  # requests in flight while it ran
    latency: float  # the whole reply's seconds (the deadline guard reads the longest)


class _Gradient:
    """The in-flight limit from latency per output token, under the limiter's lock.

    Why per token: an LLM server's whole-request latency grows with the answer's length and
    `n`; the time per output token grows only with the load (a batch step serves every
    running sequence, so more sequences make each step, and each token, slower). Why per
    length bucket: a short answer's per-token time carries the fixed prefill/HTTP cost, so
    it is compared with other short answers, never with long ones.

    Slow start, because a burst is what a saturated server cannot take back: a run starts at
    `initial_concurrency` (8), `measure`s half a round trip there, then `grow`s by steps of up
    to 2x while a step pays. The yardstick is throughput, load / per-token time, so a server
    whose tokens get slower with load but whose total still rises (a CPU server, a GPU below
    its batch sweet spot) keeps growing, and one past its knee (more load, same total) stops:
    a step goes on while >= GROW_EFFICIENCY of the added load came back as tokens/s, and is
    kept if >= KEEP_EFFICIENCY did (else the level before is). A level counts only replies
    sent after it began, of lengths the level before saw too, and is judged only once they
    ran at >= 3/4 of its limit and half the step's added load (a stage with less work than
    the limit proves nothing); a level that gets no verdict within 3 quotas of replies
    falls back to measuring the level before. A step adds at least one slot and no more than
    keeps the longest reply within DEADLINE_SHARE of the timeout were per-token time to grow
    in proportion to the load (the worst a server past its knee does). The longest reply is
    the slowest of the level's or the slowest per-token time x the longest answer seen so far
    (short answers land first): a timed-out reply is paid for and thrown away.

    Then `steady`: the baseline is rescaled so the kept level's mean reads 1 (and held there:
    a new length's first reply sets its own), and
    limit -> limit x min(1, TOLERANCE x baseline / smoothed per-token time) + sqrt(limit)
    (a queue allowance, as Netflix's gradient limiter) when tokens slow down, or x(1 + GROWTH)
    per round trip while clean and filled, but never past the level slow start kept
    (`ceiling`); moved 1/limit of the way per reply (one full step per round trip). Slow start
    runs again from the current limit every BASELINE_SECONDS (the server may have changed), or
    REPROBE_AFTER_CUT after a hard signal or the server's queue ended it (at the cut limit, as
    TCP's ssthresh). A cut while steady lowers the ceiling by a quarter (not below the limit).
    """

    def __init__(self, limiter: RequestLimiter) -> None:
        self.limiter = limiter
        self.phase = "measure"
        self.baseline: dict[int, float] = {}
        self.samples: list[_Sample] = []
        self.previous: list[_Sample] = []  # the level before the current step
        self.reference: dict[int, float] = {}  # the baseline as the current step began
        self.previous_limit = limiter.limit
        self.level_at = 0  # admissions before the current level began
        self.waited = 0  # replies at this level that could not count towards a verdict
        self.longest_answer = 0.0  # most output tokens per sequence seen (the deadline guard)
        self.calibrated_at = -math.inf
        self.reprobe_after = BASELINE_SECONDS
        self.ceiling = float(limiter.max_concurrency)  # steady growth stops here (slow start's level)
        self.ratio = 1.0  # smoothed per-token time / baseline (steady phase)
        self.last_queue_cut = -math.inf
        self.steps = 0  # how often slow start raised the limit (tests, the bench's summary)
        self.step = 2.0  # the current step's factor

    def interrupted(self) -> None:
        """A hard cut or a queue cut (the limit already lowered)."""
        limiter = self.limiter
        if self.phase == "steady":
            self.ceiling = max(limiter.limit, 0.75 * self.ceiling)
            return
        kept = self.previous if self.phase == "grow" else self.samples
        self._settle(limiter.clock(), limiter.limit, kept)
        self.reprobe_after = REPROBE_AFTER_CUT

    def _quota(self) -> int:
        """Samples per level: about half a round trip at the current limit (4 to 16)."""
        return max(4, min(16, math.ceil(self.limiter.limit / 2)))

    def sample(self, ticket: Ticket, per_token: float, per_sequence: float, load: int, latency: float) -> None:
        limiter = self.limiter
        now = limiter.clock()
        if self.phase == "steady" and now - self.calibrated_at > self.reprobe_after:
            self._start_level("measure", [])
        bucket = int(math.log2(per_sequence))
        self.longest_answer = max(self.longest_answer, per_sequence)
        if self.phase == "steady":
            self.baseline.setdefault(bucket, per_token)
            return self._steady(per_token / self.baseline[bucket], load)
        self.baseline[bucket] = min(self.baseline.get(bucket, math.inf), per_token)
        if ticket.serial <= self.level_at:
            return  # admitted before this level began: it describes the old load
        if self.phase == "grow" and bucket not in self.reference:
            return self._no_verdict()  # a length with no lower-load time to compare with
        self.samples.append(_Sample(per_token, bucket, load, latency))
        if len(self.samples) < self._quota():
            return
        load_now, limit = _mean_load(self.samples), limiter.limit
        filled = load_now >= 0.75 * limit
        if self.phase == "measure":
            return self._step_or_settle(now) if filled else self._no_verdict()
        load_before = _mean_load(self.previous)
        if not filled or load_now < load_before * (1 + (self.step - 1) / 2):
            return self._no_verdict()
        ratio_before, ratio_now = self._mean_ratio(self.previous), self._mean_ratio(self.samples)
        gain = (load_now / load_before) * (ratio_before / ratio_now)
        efficiency = (gain - 1) / (load_now / load_before - 1)  # share of the added load that paid
        if efficiency >= GROW_EFFICIENCY:
            self._step_or_settle(now)
        elif efficiency >= KEEP_EFFICIENCY:
            self._settle(now, limit, self.samples)
        else:
            self._settle(now, self.previous_limit, self.previous)

    def _no_verdict(self) -> None:
        """A reply that cannot decide this level. Keep the latest quota's worth; after three
        quotas without a verdict, go back to measuring the level before (a grow level the stage
        cannot fill must not stand as a limit that a later, larger stage bursts into)."""
        self.waited += 1
        self.samples = self.samples[-(self._quota() - 1):]  # (a quota is at least 4)
        if self.waited >= 3 * self._quota() and self.phase == "grow":
            self.measure_again(self.previous_limit)

    def measure_again(self, limit: float) -> None:
        """Slow start from `limit`, measured afresh: replies to requests sent before describe
        another load and do not count."""
        self.limiter._set_limit(limit)
        self._start_level("measure", [])

    def _start_level(self, phase: str, previous: list[_Sample]) -> None:
        self.phase, self.previous, self.samples, self.waited = phase, previous, [], 0
        self.reference = dict(self.baseline)
        self.level_at = self.limiter.admissions

    def _longest(self) -> float:
        """The longest reply to expect at this level: the slowest seen, or the slowest
        per-token time x the longest answer seen so far (short answers land first)."""
        return max(max(s.latency for s in self.samples),
                   max(s.per_token for s in self.samples) * self.longest_answer)

    def _step_or_settle(self, now: float) -> None:
        limiter = self.limiter
        limit = limiter.limit
        bound = 2.0
        if limiter.deadline is not None:
            bound = min(bound, DEADLINE_SHARE * limiter.deadline / max(self._longest(), 1e-9))
        target = min(limit * bound, float(limiter.max_concurrency))
        if target < limit * MIN_STEP or int(target) <= int(limit):  # not worth, or no new slot
            return self._settle(now, limit, self.samples)
        self.previous_limit, self.step = limit, target / limit
        self._start_level("grow", self.samples)
        self.steps += 1
        limiter._set_limit(target)

    def _mean_ratio(self, samples: list[_Sample], reference: dict[int, float] | None = None) -> float:
        """Mean per-token time over the step's reference baseline (the same yardstick for the
        level before a step and the level after it)."""
        reference = self.reference if reference is None else reference
        ratios = [s.per_token / reference[s.bucket] for s in samples if s.bucket in reference]
        return sum(ratios) / len(ratios) if ratios else 1.0

    def _settle(self, now: float, limit: float, kept: list[_Sample]) -> None:
        """Steady control from `limit`; the baseline rescaled so the kept level's mean reads 1
        (lengths first seen at the last level already read about 1)."""
        reference = self.reference or dict(self.baseline)
        if kept and reference:
            scale = self._mean_ratio(kept, reference)
            self.baseline.update({bucket: value * scale for bucket, value in reference.items()})
        self.limiter._set_limit(limit)
        self.ceiling = self.limiter.limit
        self.phase, self.samples, self.previous, self.calibrated_at, self.ratio = "steady", [], [], now, 1.0
        self.reprobe_after = BASELINE_SECONDS

    def _steady(self, ratio: float, load: int) -> None:
        limiter = self.limiter
        limit = limiter.limit
        self.ratio += (ratio - self.ratio) / max(1.0, limit)
        gradient = max(MIN_GRADIENT, min(1.0, TOLERANCE / self.ratio))
        if gradient < 1.0:
            target = min(limit, limit * gradient + math.sqrt(limit))
        elif load >= 0.75 * limit:  # grow only a limit the stage fills
            target = min(self.ceiling, limit * (1 + GROWTH))
        else:
            return
        if target > limit or gradient < 1.0:
            limiter._set_limit(limit + (target - limit) / max(1.0, limit))


def _mean_load(samples: list[_Sample]) -> float:
    return sum(s.load for s in samples) / max(1, len(samples))


def estimate_prompt_tokens(messages: tuple[tuple[str, str], ...]) -> int:
    """A deliberately high guess of a prompt's tokens without the model's tokenizer: UTF-8
    bytes / 3 (BPE tokenizers average ~4 bytes per English token and ~3 per CJK character),
    plus the chat template's few tokens per message."""
    size = sum(len(role.encode("utf-8")) + len(content.encode("utf-8")) for role, content in messages)
    return math.ceil(size / 3) + 4 * len(messages) + 3
