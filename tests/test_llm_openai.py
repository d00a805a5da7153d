"""The OpenAI-compatible client against a real HTTP server on 127.0.0.1.

Every check here counts what the server actually received (tests/openai_test_server.py),
so retries, concurrency, fan-out and caching are verified on the wire, not on mocks.
No test asserts a duration: where time matters (Retry-After) it is a lower bound taken
from the server's own request timestamps.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from datagen.llm import ChatRequest, Completion, ResponseCache, generate_sync, make_llm
from datagen.llm.endpoint_options import EndpointOptions, RetryPolicy
from datagen.llm.openai_compat import OpenAICompatLLM

SECRET = "sk-test-SECRET-4242"


def make(server, cache=None, **options):
    """Our client as stages get it, with fast backoff so retry tests stay quick."""
    options.setdefault("backoff_initial", 0.01)
    options.setdefault("backoff_max", 0.05)
    options.setdefault("timeout", 10.0)
    return make_llm("openai:test", cache=cache, base_url=server.base_url, api_key=SECRET, **options)


def prompts(count: int, tag: str = "p") -> list[ChatRequest]:
    return [ChatRequest.chat(f"{tag}{i}") for i in range(count)]


# ---- retries -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["429", "500", "malformed", "html", "empty", "disconnect"])
def test_transient_faults_are_retried_until_success(openai_server, kind):
    openai_server.configure(fail_first=2, fail_kind=kind, retry_after=0.01)
    llm = make(openai_server)
    results = generate_sync(llm, prompts(3))
    assert [r.error for r in results] == [None] * 3
    assert [r.text for r in results] == [f"echo: p{i} #0" for i in range(3)]
    stats = openai_server.stats
    assert stats.per_prompt == {f"p{i}": 3 for i in range(3)}  # two failures + the success
    assert stats.outcomes[kind] == 6 and stats.outcomes["ok"] == 3
    assert llm.usage.calls == 3 and llm.usage.errors == {}


def test_timeout_is_retried(openai_server):
    openai_server.configure(fail_first=1, fail_kind="timeout", timeout_sleep=5.0)
    llm = make(openai_server, timeout=0.5)
    [result] = generate_sync(llm, [ChatRequest.chat("slow")])
    assert result.ok, result.error
    assert result.text == "echo: slow #0"
    log = openai_server.stats.attempts("slow")
    assert [e.outcome for e in log] == ["timeout", "ok"]
    # The client hung up before the stalled reply: the retry started before that reply was due.
    assert log[1].start < log[0].start + 5.0


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    llm = make_llm(
        "openai:test",
        base_url=f"http://127.0.0.1:{port}/v1",
        api_key=SECRET,
        max_attempts=2,
        backoff_initial=0.01,
        backoff_max=0.02,
    )
    [result] = generate_sync(llm, [ChatRequest.chat("nobody home")])
    assert not result.ok
    assert result.error.startswith("connection:")


def test_gives_up_after_max_attempts_and_reports_error(openai_server, tmp_path):
    openai_server.configure(fail_first=100, fail_kind="500")
    llm = make(openai_server, cache=tmp_path / "c.sqlite", max_attempts=3)
    [result] = generate_sync(llm, [ChatRequest.chat("doomed")])
    assert result.error is not None and result.error.startswith("http_500")
    assert result.texts == []
    assert openai_server.stats.requests == 3
    assert llm.usage.errors == {"http_500": 1} and llm.usage.calls == 0


def test_retry_after_is_honoured(openai_server):
    wait = 0.3
    openai_server.configure(fail_first=2, fail_kind="429", retry_after=wait)
    # Our own backoff would retry within ~10 ms: only the header can explain longer gaps.
    llm = make(openai_server, backoff_initial=0.001, backoff_max=0.01)
    [result] = generate_sync(llm, [ChatRequest.chat("patience")])
    assert result.ok
    log = openai_server.stats.attempts("patience")
    assert [e.outcome for e in log] == ["429", "429", "ok"]
    for before, after in zip(log, log[1:], strict=False):
        # `end` is when the server finished the 429 (before the client could even read it).
        assert after.start - before.end >= wait - 0.01


def test_retry_after_above_our_backoff_ceiling_still_honoured(openai_server):
    openai_server.configure(fail_first=1, fail_kind="429", retry_after=0.2)
    llm = make(openai_server, backoff_initial=0.001, backoff_max=0.01, retry_after_max=5.0)
    [result] = generate_sync(llm, [ChatRequest.chat("ceiling")])
    assert result.ok
    first, second = openai_server.stats.attempts("ceiling")
    assert second.start - first.end >= 0.2 - 0.01


def test_retry_wait_is_full_jitter_backoff_unless_the_server_says_when():
    import random

    from datagen.llm.wire import HTTPStatusError, retry_wait

    random.seed(3)
    plain = ConnectionError("reset")
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (5, 1.0), (10_000, 1.0)]:  # no overflow far out
        waits = [retry_wait(plain, attempt, 0.1, 1.0, 60.0) for _ in range(400)]
        assert 0 <= min(waits) and max(waits) <= ceiling and max(waits) > 0.8 * ceiling  # the whole window is used
    told = HTTPStatusError(429, "slow down", {"Retry-After": "7"})
    assert retry_wait(told, 1, 0.1, 1.0, 60.0) == 7.0  # the server's word beats our ceiling...
    assert retry_wait(told, 1, 0.1, 1.0, 5.0) == 5.0  # ...up to retry_after_max


def test_client_errors_are_not_retried(openai_server):
    openai_server.configure(fail_first=100, fail_kind="400")
    llm = make(openai_server)
    [result] = generate_sync(llm, [ChatRequest.chat("bad")])
    assert openai_server.stats.requests == 1
    assert isinstance(result, Completion) and not result.ok
    assert result.error.startswith("http_400")
    assert llm.usage.errors == {"http_400": 1}


def test_wrong_api_key_stops_at_once_with_one_line(openai_server):
    """A 401 is fatal (no retry, no more requests); the line names the fix, never the key."""
    from datagen.errors import FatalLLMError

    openai_server.configure(api_key="the-right-key")
    llm = make(openai_server, max_concurrency=1)
    with pytest.raises(FatalLLMError) as raised:
        generate_sync(llm, prompts(2))
    assert openai_server.stats.requests == 1
    message = str(raised.value)
    assert "401" in message and "check OPENAI_API_KEY" in message and "invalid api key" in message
    assert "\n" not in message and SECRET not in message


# ---- concurrency, order, n -----------------------------------------------------------


def test_concurrency_is_bounded_and_reached(openai_server):
    bound = 16
    # The server holds every reply until `bound` requests are in flight at once: the run
    # only finishes quickly if the client really opens `bound` connections, and the
    # high-water mark shows it never opens more.
    openai_server.configure(barrier=bound, barrier_timeout=20.0, latency=0.05)
    llm = make(openai_server, max_concurrency=bound, initial_concurrency=bound)  # no slow start: the barrier
    results = generate_sync(llm, prompts(5 * bound))
    assert all(r.ok for r in results)
    assert openai_server.stats.max_in_flight == bound


def test_hundreds_of_concurrent_requests(openai_server):
    openai_server.configure(barrier=200, barrier_timeout=30.0, latency=0.05)
    llm = make(openai_server, max_concurrency=200, initial_concurrency=200)
    results = generate_sync(llm, prompts(400, "many"))
    assert all(r.ok for r in results)
    assert [r.text for r in results] == [f"echo: many{i} #0" for i in range(400)]
    assert openai_server.stats.max_in_flight == 200
    assert openai_server.stats.requests == 400


def test_results_come_back_in_request_order(openai_server):
    # p0 is the slowest to answer, so it lands last.
    openai_server.configure(prompt_latency={"p0": 0.3}, latency=0.01)
    llm = make(openai_server, max_concurrency=8)
    landed: list[int] = []
    results = generate_sync(llm, prompts(8), on_result=lambda i, c: landed.append(i))
    assert [r.text for r in results] == [f"echo: p{i} #0" for i in range(8)]
    assert sorted(landed) == list(range(8))
    assert landed[-1] == 0  # proves the arrival order really differed from request order


def test_n_is_native_when_the_server_supports_it(openai_server):
    llm = make(openai_server)
    [result] = generate_sync(llm, [ChatRequest.chat("many", n=3, seed=11)])
    assert result.texts == [f"echo: many #{k} seed=11" for k in range(3)]
    assert result.finish_reasons == ["stop"] * 3
    assert openai_server.stats.requests == 1


def test_n_fans_out_when_the_server_returns_one_choice(openai_server):
    openai_server.configure(single_choice=True)
    llm = make(openai_server)
    [first] = generate_sync(llm, [ChatRequest.chat("llama", n=3, seed=7)])
    assert len(first.texts) == 3 and len(set(first.texts)) == 3
    log = openai_server.stats.attempts("llama")
    assert [e.n for e in log] == [3, 1, 1]  # asked natively once, then filled up
    assert sorted(e.seed for e in log) == [7, 1008, 1009]
    # Now it knows: the next request fans out right away, n=1 each, same texts as before.
    openai_server.reset_stats()
    [again] = generate_sync(llm, [ChatRequest.chat("llama", n=3, seed=7)])
    assert sorted(again.texts) == sorted(first.texts)
    assert [e.n for e in openai_server.stats.attempts("llama")] == [1, 1, 1]


def test_fanout_mode_and_failures_inside_a_fan_out(openai_server):
    llm = make(openai_server, n_mode="fanout", max_attempts=2)
    [result] = generate_sync(llm, [ChatRequest.chat("fan", n=2, seed=1)])
    assert len(result.texts) == 2 and openai_server.stats.requests == 2
    openai_server.configure(fail_first=100, fail_kind="500")
    [failed] = generate_sync(llm, [ChatRequest.chat("fan2", n=2, seed=1)])
    assert failed.error is not None and failed.texts == []


def test_token_usage_is_summed(openai_server, tmp_path):
    openai_server.configure(fail_first=1, fail_kind="500")  # failed attempts cost no tokens
    llm = make(openai_server, cache=tmp_path / "c.sqlite")
    requests = [ChatRequest.chat("one two three", n=2), ChatRequest.chat("four five")]
    results = generate_sync(llm, requests)
    # The test server counts words: the prompt's, and PROMPT + 2 per "echo: PROMPT #k".
    assert [r.prompt_tokens for r in results] == [3, 2]
    assert [r.completion_tokens for r in results] == [2 * (3 + 2), 1 * (2 + 2)]
    assert llm.usage.prompt_tokens == 5
    assert llm.usage.completion_tokens == 14
    assert llm.usage.calls == 2
    # Served from cache, nothing is paid again.
    generate_sync(llm, requests)
    assert llm.usage.prompt_tokens == 5 and llm.usage.cache_hits == 2


def test_json_schema_response_format_is_sent(openai_server):
    schema = {
        "type": "json_schema",
        "json_schema": {
            "name": "rating",
            "schema": {
                "type": "object",
                "properties": {
                    "score": {"type": "integer", "minimum": 1, "maximum": 5},
                    "reason": {"type": "string"},
                },
                "required": ["score", "reason"],
            },
        },
    }
    request = ChatRequest.chat("rate this", response_format=schema)
    [result] = generate_sync(make(openai_server), [request])
    data = json.loads(result.text)
    assert data["score"] == 4 and isinstance(data["reason"], str)
    # A backend marked as not supporting it does not send it (plain text back).
    [plain] = generate_sync(make(openai_server, supports_json_schema=False), [request])
    assert plain.text == "echo: rate this #0"


def test_stop_and_max_tokens_are_sent(openai_server):
    llm = make(openai_server)
    stopped, cut = generate_sync(
        llm,
        [ChatRequest.chat("alpha beta", stop=["beta"]), ChatRequest.chat("a b c d e f", max_tokens=3)],
    )
    assert stopped.text == "echo: alpha " and stopped.finish_reasons == ["stop"]
    assert cut.text == "echo: a b" and cut.finish_reasons == ["length"]


# ---- cache and resume over the wire ----------------------------------------------------


def test_identical_rerun_makes_zero_requests(openai_server, tmp_path):
    cache_path = tmp_path / "cache.sqlite"
    first = generate_sync(make(openai_server, cache=cache_path), prompts(10))
    assert openai_server.stats.requests == 10
    openai_server.reset_stats()
    fresh = make(openai_server, cache=cache_path)  # a new process would look like this
    second = generate_sync(fresh, prompts(10))
    assert openai_server.stats.requests == 0
    assert [r.texts for r in second] == [r.texts for r in first]
    assert all(r.cached for r in second)
    assert fresh.usage.cache_hits == 10 and fresh.usage.calls == 0


def test_duplicates_in_one_batch_are_sent_once(openai_server):
    llm = make(openai_server)
    requests = [ChatRequest.chat("same"), ChatRequest.chat("other"), ChatRequest.chat("same")]
    results = generate_sync(llm, requests)
    assert openai_server.stats.per_prompt == {"same": 1, "other": 1}
    assert results[0].texts == results[2].texts


def test_interrupted_run_resumes_paying_only_for_missing(openai_server, tmp_path):
    cache_path = tmp_path / "cache.sqlite"
    openai_server.configure(latency=0.05)
    requests = prompts(12)
    llm = make(openai_server, cache=cache_path, max_concurrency=2)
    landed: list[int] = []

    async def run_until_four_landed() -> None:
        enough = asyncio.Event()

        def on_result(i: int, completion: Completion) -> None:
            landed.append(i)
            if len(landed) >= 4:
                enough.set()

        task = asyncio.create_task(llm.generate(requests, on_result))
        await enough.wait()
        task.cancel()  # like Ctrl-C in the middle of a stage
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_until_four_landed())
    saved = len(ResponseCache(cache_path))
    assert 4 <= saved < len(requests)
    assert openai_server.stats.requests < len(requests)

    openai_server.reset_stats()
    resumed = make(openai_server, cache=cache_path, max_concurrency=2)
    results = generate_sync(resumed, requests)
    assert all(r.ok for r in results)
    # Only the missing ones are answered. (A request the interrupted run had already
    # written can still reach the server now; it finds its client gone: "cancelled".)
    stats = openai_server.stats
    assert stats.outcomes["ok"] == len(requests) - saved
    assert stats.requests - stats.outcomes["cancelled"] == len(requests) - saved
    for i in landed:
        assert openai_server.stats.per_prompt[f"p{i}"] == 0
        assert results[i].cached
    assert resumed.usage.cache_hits == saved


def test_failed_requests_are_not_cached(openai_server, tmp_path):
    cache_path = tmp_path / "cache.sqlite"
    openai_server.configure(fail_first=100, fail_kind="500")
    [failed] = generate_sync(make(openai_server, cache=cache_path, max_attempts=2), [ChatRequest.chat("x")])
    assert failed.error is not None
    assert len(ResponseCache(cache_path)) == 0
    openai_server.configure(fail_first=0)
    openai_server.reset_stats()
    [ok] = generate_sync(make(openai_server, cache=cache_path), [ChatRequest.chat("x")])
    assert ok.ok and not ok.cached
    assert openai_server.stats.requests == 1  # the rerun asked again
    assert len(ResponseCache(cache_path)) == 1


def test_api_key_is_sent_but_never_shown_or_stored(openai_server, tmp_path, caplog):
    cache_path = tmp_path / "cache.sqlite"
    caplog.set_level("DEBUG")
    llm = make(openai_server, cache=cache_path)
    generate_sync(llm, prompts(3))
    assert openai_server.stats.auth_headers == [f"Bearer {SECRET}"]  # it did reach the server
    assert (
        SECRET not in repr(llm) and SECRET not in repr(llm.inner) and SECRET not in str(llm.usage.as_dict())
    )
    llm.cache.close()
    stored = b"".join(p.read_bytes() for p in Path(tmp_path).iterdir() if p.name.startswith("cache.sqlite"))
    assert stored and SECRET.encode() not in stored
    assert SECRET not in caplog.text


def test_key_comes_from_environment(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.base_url)
    llm = OpenAICompatLLM("test", EndpointOptions(retry=RetryPolicy(max_attempts=1)))
    assert "sk-from-env" not in repr(llm)
    [result] = generate_sync(make_llm("openai:test"), [ChatRequest.chat("env")])
    assert result.ok
    assert openai_server.stats.auth_headers == ["Bearer sk-from-env"]


# ---- the test server as a separate process (used by benches and pipeline tests) --------


def test_server_script_mode_and_control_endpoints():
    import subprocess
    import sys
    import urllib.request

    server_py = Path(__file__).resolve().parent / "openai_test_server.py"
    proc = subprocess.Popen(
        [sys.executable, str(server_py), "--port", "0", "--fail-first", "1", "--fail-kind", "500"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("LISTENING http://127.0.0.1:")
        base_url = line.split()[1]
        root = base_url.rsplit("/v1", 1)[0]

        def control(path: str, payload: dict | None = None) -> dict:
            data = None if payload is None else json.dumps(payload).encode()
            request = urllib.request.Request(f"{root}/_control/{path}", data=data)
            with urllib.request.urlopen(request, timeout=10) as resp:
                return json.loads(resp.read())

        llm = make_llm(
            "openai:test", base_url=base_url, api_key=SECRET, backoff_initial=0.01, backoff_max=0.02
        )
        [result] = generate_sync(llm, [ChatRequest.chat("remote")])
        assert result.text == "echo: remote #0"
        stats = control("stats")
        assert stats["requests"] == 2 and stats["outcomes"] == {"500": 1, "ok": 1}
        assert control("configure", {"single_choice": True})["single_choice"] is True
        [fanned] = generate_sync(llm, [ChatRequest.chat("remote2", n=2)])
        assert len(fanned.texts) == 2
        control("reset", {})  # back to the command-line settings (fail first attempt)
        assert control("stats")["requests"] == 0
        [again] = generate_sync(llm, [ChatRequest.chat("remote3", n=2)])
        assert len(again.texts) == 2 and control("stats")["outcomes"]["500"] >= 1
    finally:
        proc.terminate()
        proc.wait(10)


def test_seeded_fault_rates_are_reproducible_and_survived(openai_server):
    def run() -> list[tuple[str, int, str]]:
        openai_server.reset()
        openai_server.configure(
            rate_429=0.15, rate_500=0.15, rate_malformed=0.1, rate_disconnect=0.1, retry_after=0.01, seed=3
        )
        results = generate_sync(make(openai_server, max_attempts=10), prompts(30, "r"))
        assert all(r.ok for r in results)
        return sorted((e.prompt, e.attempt, e.outcome) for e in openai_server.stats.log)

    first = run()
    assert len(first) > 30  # some attempts failed and were retried
    assert run() == first  # same faults for the same prompts, whatever the arrival order


def test_flat_options_are_grouped_once_with_one_line_errors() -> None:
    """Users write options flat; the client gets them grouped and frozen, defaults in one place."""
    from datagen.llm import backend_facts
    from datagen.llm.endpoint_options import DEFAULT_MAX_CONCURRENCY

    options = EndpointOptions.from_flat({"base_url": "http://h:1/v1/", "max_attempts": 2, "batch": True,
                                         "max_requests_per_minute": 60, "n_mode": "fanout"})
    assert options.transport.url == "http://h:1/v1" and options.retry.max_attempts == 2
    assert options.batch.enabled and options.limits.max_requests_per_minute == 60
    assert options.transport.max_concurrency == DEFAULT_MAX_CONCURRENCY
    with pytest.raises(ValueError, match=r"llm_options.openai.max_concurency: unknown option \(did you mean 'max_concurrency'\?\)"):
        EndpointOptions.from_flat({"max_concurency": 8})
    # the identity without a client equals the client's own, and ignores speed settings
    client = OpenAICompatLLM.from_flat("m", {"base_url": "http://h:1/v1", "max_concurrency": 3})
    facts = backend_facts("openai:m", {"base_url": "http://h:1/v1", "max_concurrency": 9, "timeout": 5})
    assert facts.identity == client.cache_identity() and facts.max_concurrency == 9 and facts.timeout == 5


def test_limiter_and_budget_are_passed_in_not_patched(openai_server) -> None:
    """The run's gates go in through the constructor: the client uses the very objects given."""
    from datagen.llm.budget import Budget, Rate
    from datagen.llm.ratelimit import RequestLimiter

    limiter, budget = RequestLimiter(2), Budget(1.0)
    client = OpenAICompatLLM("test", EndpointOptions.from_flat({"base_url": openai_server.base_url}),
                             limiter=limiter, budget=budget, price=Rate(1000.0, 1000.0))
    assert client.limiter is limiter and client.budget is budget
    [result] = generate_sync(client, [ChatRequest.chat("hi", max_tokens=8)])
    assert result.ok and budget.spent > 0
