"""Rate limits, the shared 429 cool-down and adaptive concurrency, over real sockets.

The loopback server enforces its own per-minute limits (token buckets, 429 + Retry-After
past them) and can model a saturated server whose latency grows with the requests in
flight. Every assertion counts what the server received or when (its own timestamps); no
test asserts a duration. The rate test runs on a scaled clock (a "minute" of 15 s on both
sides) so 200 requests take seconds, not minutes; the ratios are the issue's.
"""

from __future__ import annotations

import asyncio

import pytest

from datagen.llm import ChatRequest, generate_sync, make_llm
from datagen.llm.ratelimit import RequestLimiter, parse_reset


def make(server, **options):
    options.setdefault("backoff_initial", 0.01)
    options.setdefault("backoff_max", 0.05)
    options.setdefault("timeout", 10.0)
    return make_llm("openai:test", cache=None, base_url=server.base_url, api_key="k", **options)


def prompts(count: int, tag: str = "p", **kw) -> list[ChatRequest]:
    return [ChatRequest.chat(f"{tag}{i}", **kw) for i in range(count)]


def test_600_rpm_steady_state_reaches_the_limit_without_429s(openai_server):
    period = 15.0  # a 4x faster "minute" on server and client alike
    # The server lives in this process: on a loaded machine its thread can stall while the
    # client keeps its pace, and a 1-second burst allowance would then refuse the backlog
    # for the server's own stall. It banks 5 s of allowance instead; the limit still binds
    # (the rate assertion below fails a client faster than the limit).
    openai_server.configure(rpm_limit=600, limit_period=period, limit_burst_share=1 / 12)
    llm = make(openai_server, max_concurrency=32, max_requests_per_minute=600, rate_period=period)
    results = generate_sync(llm, prompts(200))
    assert all(r.ok for r in results)
    stats = openai_server.stats
    assert stats.outcomes["429"] < 0.01 * stats.requests, stats
    ok_starts = sorted(e.start for e in stats.log if e.outcome == "ok")
    skip = 10  # the opening burst (the buckets start full) is not steady state
    steady_rate = (len(ok_starts) - 1 - skip) / (ok_starts[-1] - ok_starts[skip])
    limit_rate = 600 / period
    assert steady_rate >= 0.95 * limit_rate, (steady_rate, limit_rate)
    assert steady_rate <= 1.05 * limit_rate, (steady_rate, limit_rate)


def test_without_a_client_limit_the_server_limit_answers_429(openai_server):
    """The server's limit is real: a client that ignores it gets 429s (so the test above can fail)."""
    openai_server.configure(rpm_limit=600, limit_period=15.0)
    # 32 at once from the start, as the burst-reaction tests: a slow start from 8 against a
    # server still slowed by an earlier test's leftover requests could stay under 40/s.
    llm = make(openai_server, max_concurrency=32, initial_concurrency=32, max_attempts=10, retry_after_max=0.2)
    generate_sync(llm, prompts(60))
    assert openai_server.stats.rate_limited > 0


def test_token_limit_counts_prompt_and_max_tokens_then_refunds_usage(openai_server):
    period = 15.0
    # The server charges prompt words + max_tokens on arrival and refunds unused tokens, as
    # we do; replies are short ("echo: tN #0" = 3 words), so refunds matter.
    openai_server.configure(tpm_limit=24000, limit_period=period)
    llm = make(openai_server, max_concurrency=16, max_tokens_per_minute=24000, rate_period=period)
    results = generate_sync(llm, prompts(80, "t", max_tokens=100))
    assert all(r.ok for r in results)
    stats = openai_server.stats
    assert stats.outcomes["429"] < 0.01 * stats.requests + 1, stats
    limiter = llm.inner.limiter
    # The bucket holds 200 tokens (half a second of 24000/15 s); without refunds each 100+
    # token request would drain it and the run would crawl at ~16 requests/s. With refunds
    # of ~95 unused tokens per reply it keeps admitting; the level never exceeds capacity.
    assert limiter.tokens.level <= limiter.tokens.capacity


def test_429_cool_down_is_shared_across_concurrent_requests(openai_server):
    """Server-enforced limit, client without one: after a 429 with Retry-After R, the
    client sends nothing for R (in-flight requests aside), instead of each request
    retrying on its own clock while the others keep hammering."""
    openai_server.configure(rpm_limit=120, limit_period=60.0, limit_burst_share=1 / 60)  # 2 at once, 2/s
    llm = make(openai_server, max_concurrency=8, max_attempts=20, retry_after_max=5.0)
    results = generate_sync(llm, prompts(12))
    assert all(r.ok for r in results)
    log = sorted(openai_server.stats.log, key=lambda e: e.start)
    limited = [e for e in log if e.outcome == "429"]
    assert limited
    # The first 429's reply was sent at .end with Retry-After ~0.5 s (ms precision header):
    # requests that started after it arrived (allow 50 ms for ones already on the wire)
    # must wait for the cool-down.
    first = limited[0]
    sent_after = [e.start for e in log if e.start > first.end + 0.05]
    assert sent_after and min(sent_after) >= first.end + 0.3, (first, sent_after[:3])
    # The 200 replies announce the limit (x-ratelimit-limit-requests): the client adopts
    # it, so only the opening burst, sent before any reply, is refused.
    assert len(limited) <= 8, limited
    assert llm.inner.limiter.requests is not None


def test_adaptive_concurrency_serves_a_saturated_server_without_failures(openai_server):
    """A server with 4 slots: latency = 50 ms x in_flight/4. At 64 in flight (a run started
    at max_concurrency) a reply takes 0.8 s and the client gives up at 0.6 s. AIMD halves the limit when replies get slower
    than half the timeout; every request completes, and no retry times out (retries go
    ahead of the queue instead of behind it)."""
    openai_server.configure(latency=0.05, capacity=4)
    llm = make(openai_server, max_concurrency=64, timeout=0.6, max_attempts=4, initial_concurrency=64)
    results = generate_sync(llm, prompts(200, "a"))
    assert [r.error for r in results] == [None] * 200
    stats = openai_server.stats
    limiter = llm.inner.limiter
    assert limiter.cuts >= 1 and limiter.lowest_limit < 32
    # Timeouts (the client hung up) only in the opening wave, sent before any feedback.
    assert stats.outcomes["cancelled"] < 64, stats
    retries = [e for e in stats.log if e.attempt >= 2]
    assert all(e.outcome == "ok" for e in retries), [e for e in retries if e.outcome != "ok"][:3]


def test_fixed_concurrency_overruns_the_same_server(openai_server):
    """The baseline the adaptive test beats: 64 in flight against 4 slots times out."""
    openai_server.configure(latency=0.05, capacity=4)
    llm = make(openai_server, max_concurrency=64, timeout=0.6, max_attempts=2, adaptive_concurrency=False)
    results = generate_sync(llm, prompts(200, "f"))
    assert sum(not r.ok for r in results) > 0
    assert openai_server.stats.outcomes["cancelled"] > 0


def test_remaining_zero_header_pauses_until_reset():
    async def scenario() -> tuple[float, float]:
        limiter = RequestLimiter(4)
        loop = asyncio.get_running_loop()
        ticket = await limiter.acquire()
        limiter.settle(ticket, status=200, headers={"x-ratelimit-remaining-requests": "0",
                                                   "x-ratelimit-reset-requests": "300ms"})
        t0 = loop.time()
        ticket = await limiter.acquire()
        limiter.settle(ticket)
        return t0, loop.time()

    t0, t1 = asyncio.run(scenario())
    assert t1 - t0 >= 0.25  # a lower bound from the server's reset, not a speed claim


def test_retries_are_admitted_before_first_attempts():
    async def scenario() -> list[str]:
        limiter = RequestLimiter(1, adaptive=False)
        order: list[str] = []
        held = await limiter.acquire()

        async def waiter(name: str, priority: int) -> None:
            ticket = await limiter.acquire(priority=priority)
            order.append(name)
            limiter.settle(ticket)

        tasks = [asyncio.create_task(waiter(f"fresh{i}", 0)) for i in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(waiter("retry", 1)))
        await asyncio.sleep(0)
        limiter.settle(held)
        await asyncio.gather(*tasks)
        return order

    assert asyncio.run(scenario()) == ["retry", "fresh0", "fresh1", "fresh2"]


def test_a_worker_keeps_its_slot_for_its_next_request_but_never_ahead_of_a_retry():
    """A worker whose reply landed asks again in the same loop turn and takes the freed slot
    past queued fresh requests (a hand-off would cost each request a loop turn); a queued
    retry still goes first, and a slot nobody takes back reaches the queue on the next turn."""
    async def scenario(queued_priority: int) -> tuple[str, list[str]]:
        limiter = RequestLimiter(1, adaptive=False)
        held = await limiter.acquire()
        order: list[str] = []

        async def queued() -> None:
            ticket = await limiter.acquire(priority=queued_priority)
            order.append("queued")
            limiter.settle(ticket)

        task = asyncio.create_task(queued())
        await asyncio.sleep(0)

        async def worker_turn() -> str:
            limiter.settle(held)  # its reply landed...
            ticket = await limiter.acquire()  # ...and it asks for its next request in the same turn
            first = "queue" if order else "worker"
            limiter.settle(ticket)  # then it has nothing more: the queue gets the slot
            return first

        first = await asyncio.wait_for(worker_turn(), 5)
        await asyncio.wait_for(task, 5)
        return first, order

    assert asyncio.run(scenario(0)) == ("worker", ["queued"])
    assert asyncio.run(scenario(1)) == ("queue", ["queued"])


def test_a_worker_never_takes_tokens_a_queued_request_waits_for():
    async def scenario() -> bool:
        limiter = RequestLimiter(2, adaptive=False, tokens_per_minute=6000, period=60.0)
        limiter.tokens.level = 0.0  # the bucket is dry: the queued request waits for 50 tokens
        big = asyncio.ensure_future(limiter.acquire(tokens=50))
        await asyncio.sleep(0)
        limiter.tokens.level = 10.0  # enough for a small request, not for the queued one
        small = asyncio.ensure_future(limiter.acquire(tokens=10))
        await asyncio.sleep(0)
        passed = small.done()
        for task in (big, small):
            task.cancel()
        await asyncio.gather(big, small, return_exceptions=True)
        return passed

    assert asyncio.run(scenario()) is False


@pytest.mark.parametrize(("raw", "seconds"), [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("0.5", 0.5),
                                              ("1h2m3.5s", 3723.5), ("soon", None), (None, None)])
def test_parse_reset(raw, seconds):
    assert parse_reset(raw) == seconds


def test_aimd_halves_once_per_round_trip_and_grows_by_one_per_window():
    async def scenario() -> list[float]:
        limiter = RequestLimiter(16, latency_ceiling=1.0, initial_concurrency=16)
        seen = []
        tickets = [await limiter.acquire() for _ in range(8)]  # all admitted before any cut
        for ticket in tickets:  # eight timeouts of one window: one cut, not eight
            limiter.settle(ticket, timed_out=True)
        seen.append(limiter.limit)
        ticket = await limiter.acquire()  # admitted after the cut: a new window
        limiter.settle(ticket, latency=2.0, status=200)  # slower than the ceiling
        seen.append(limiter.limit)
        for _ in range(4):  # four good replies at limit 4: +1/4 each, about +1 per window
            ticket = await limiter.acquire()
            limiter.settle(ticket, latency=0.1, status=200)
        seen.append(limiter.limit)
        ticket = await limiter.acquire()
        limiter.settle(ticket, status=None)  # a connection error is no evidence either way
        seen.append(limiter.limit)
        return seen

    halved, quartered, grown, unchanged = asyncio.run(scenario())
    assert halved == 8 and quartered == 4
    assert 4.9 < grown < 5.0 and unchanged == grown
