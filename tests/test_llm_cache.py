"""ResponseCache and CachedLLM on their own, with a scripted in-process backend.

The wire-level behaviour (resume after interruption, zero calls on rerun against a real
server) is in test_llm_openai.py; here are the bookkeeping rules the cache layer owns.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence

import pytest

from datagen.llm import CachedLLM, ChatRequest, Completion, ResponseCache, generate_sync, make_llm


class ScriptedLLM:
    """Answers `echo:<prompt>` and records every request it was asked; prompts starting with
    `fail` come back as errors. `callback=False` mimics a backend that only returns a list."""

    backend = "fake"
    supports_json_schema = False

    def __init__(self, model: str = "m", callback: bool = True):
        self.model = model
        self.name = f"fake:{model}"
        self.callback = callback
        self.batches: list[list[ChatRequest]] = []

    async def generate(self, requests: Sequence[ChatRequest], on_result=None) -> list[Completion]:
        self.batches.append(list(requests))
        results = []
        for i, req in enumerate(requests):
            prompt = req.messages[-1][1]
            await asyncio.sleep(0)
            if prompt.startswith("fail"):
                result = Completion(error="http_500: scripted failure")
            else:
                result = Completion(
                    texts=[f"echo:{prompt}:{k}" for k in range(req.n)],
                    finish_reasons=["stop"] * req.n,
                    prompt_tokens=len(prompt),
                    completion_tokens=req.n,
                )
            results.append(result)
            if on_result and self.callback:
                on_result(i, result)
        return results

    @property
    def sent(self) -> list[str]:
        return [r.messages[-1][1] for batch in self.batches for r in batch]

    def close(self) -> None:
        pass


def chat(prompt: str, **kw) -> ChatRequest:
    return ChatRequest.chat(prompt, **kw)


def _committed_rows(path) -> int:
    """Rows another connection (another process, or the file after kill -9) can see."""
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0]


def _put(cache: ResponseCache, prompt: str, tokens: int = 1) -> str:
    request = chat(prompt)
    key = request.cache_key("fake", "m")
    cache.put(key, "fake", "m", request, Completion(texts=[f"re {prompt}"], finish_reasons=["stop"],
                                                    prompt_tokens=tokens, completion_tokens=tokens))
    return key


def test_cache_uses_wal_and_persists_across_instances(tmp_path):
    path = tmp_path / "sub" / "cache.sqlite"
    cache = ResponseCache(path)
    mode = cache._conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"
    request = chat("hello")
    key = request.cache_key("fake", "m")
    cache.put(
        key,
        "fake",
        "m",
        request,
        Completion(texts=["hi"], finish_reasons=["stop"], prompt_tokens=3, completion_tokens=1),
    )
    cache.close()
    # A second connection (another process would look the same) sees the committed row.
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM completions").fetchone()[0] == 1
    again = ResponseCache(path)
    got = again.get_many([key, "missing"])
    assert list(got) == [key]
    assert got[key].texts == ["hi"] and got[key].prompt_tokens == 3 and got[key].completion_tokens == 1
    assert len(again) == 1


def test_get_many_handles_more_keys_than_one_sql_statement(tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    requests = [chat(f"q{i}") for i in range(1200)]
    keys = [r.cache_key("fake", "m") for r in requests]
    for key, req in zip(keys[::2], requests[::2], strict=True):
        cache.put(key, "fake", "m", req, Completion(texts=[key[:6]], finish_reasons=["stop"]))
    found = cache.get_many(keys + keys[:10])
    assert set(found) == set(keys[::2])
    assert all(found[k].texts == [k[:6]] for k in found)


def test_cache_key_covers_everything_that_changes_the_answer():
    base = chat("x")
    variants = [
        chat("y"),
        chat("x", n=2),
        chat("x", temperature=0.1),
        chat("x", top_p=0.5),
        chat("x", max_tokens=7),
        chat("x", stop=["\n"]),
        chat("x", seed=1),
        chat("x", response_format={"type": "json_object"}),
        ChatRequest.chat([{"role": "system", "content": "s"}, {"role": "user", "content": "x"}]),
    ]
    keys = {v.cache_key("openai", "m") for v in variants} | {base.cache_key("openai", "m")}
    assert len(keys) == len(variants) + 1
    assert base.cache_key("openai", "m") != base.cache_key("openai", "other")
    assert base.cache_key("openai", "m") != base.cache_key("vllm", "m")
    # Same content, different dict order: same key.
    a = chat("x", response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {}}})
    b = chat("x", response_format={"json_schema": {"schema": {}, "name": "a"}, "type": "json_schema"})
    assert a.cache_key("openai", "m") == b.cache_key("openai", "m")


def test_duplicates_in_a_batch_are_sent_once_and_all_answered(tmp_path):
    inner = ScriptedLLM()
    llm = CachedLLM(inner, ResponseCache(tmp_path / "c.sqlite"))
    requests = [chat("a"), chat("b"), chat("a"), chat("a", seed=1), chat("a")]
    seen: list[int] = []
    results = generate_sync(llm, requests, on_result=lambda i, c: seen.append(i))
    assert sorted(inner.sent) == ["a", "a", "b"]  # "a" plain once, "a" with seed once
    assert sorted(seen) == [0, 1, 2, 3, 4]
    assert [r.text for r in results] == ["echo:a:0", "echo:b:0", "echo:a:0", "echo:a:0", "echo:a:0"]
    assert [r.cached for r in results] == [False, False, True, False, True]
    assert llm.usage.requests == 5 and llm.usage.calls == 3 and llm.usage.cache_hits == 2
    results[2].texts.append("mutated")  # a stage editing one result must not edit another
    assert results[4].texts == ["echo:a:0"]


class StreamingScriptedLLM(ScriptedLLM):
    """The same answers, taken from a one-pass stream as `OpenAICompatLLM` takes them; records
    how many cache lookups had run when the first request was taken."""

    streams_requests = True

    def __init__(self, cache: ResponseCache | None = None):
        super().__init__()
        self.cache = cache
        self.lookups_at_first_request: int | None = None

    async def generate(self, requests, on_result=None) -> list[Completion]:
        taken: list[ChatRequest] = []
        self.batches.append(taken)
        results = [Completion()] * len(requests)
        for i, req in enumerate(requests):
            if self.lookups_at_first_request is None and self.cache is not None:
                self.lookups_at_first_request = self.cache.lookups
            taken.append(req)
            answer = (await ScriptedLLM.generate(ScriptedLLM(), [req]))[0]
            results[i] = answer
            on_result(i, answer)
        return results


class CountingCache(ResponseCache):
    lookups = 0

    def get_many(self, keys):
        self.lookups += 1
        return super().get_many(keys)


def test_a_streamed_batch_answers_exactly_as_an_eager_one(tmp_path):
    """Hits, misses, duplicates whose first copy was answered chunks earlier, failures and
    their duplicates: the stream a chunk at a time gives the eager path's results, calls and
    counters, and sends the first request after one lookup, not after keying all 1,000."""
    prompts = [f"p{i % 700}" if i % 11 else f"fail-{i % 3}" for i in range(1000)]
    outcomes = []
    for inner_type in (ScriptedLLM, StreamingScriptedLLM):
        cache = CountingCache(tmp_path / f"{inner_type.__name__}.sqlite")
        warm = CachedLLM(ScriptedLLM(), cache)
        generate_sync(warm, [chat(f"p{i}") for i in range(0, 700, 3)])  # every third prompt is a hit
        inner = StreamingScriptedLLM(cache) if inner_type is StreamingScriptedLLM else ScriptedLLM()
        llm = CachedLLM(inner, cache)
        cache.lookups = 0
        seen: list[int] = []
        results = generate_sync(llm, [chat(p) for p in prompts], on_result=lambda i, c, seen=seen: seen.append(i))
        assert sorted(seen) == list(range(1000))
        outcomes.append(([(r.texts, r.cached, r.error) for r in results], inner.sent, llm.usage.as_dict(), len(cache)))
        if inner_type is StreamingScriptedLLM:
            assert inner.lookups_at_first_request == 1
            assert cache.lookups == 5  # chunks of 64, 128, 256, 512 and the last 40
    eager, streamed = outcomes
    assert streamed == eager
    assert eager[2]["cache_hits"] > 300 and eager[2]["errors"]["http_500"] == 91


def test_hits_skip_the_backend_and_misses_are_committed_before_generate_returns(tmp_path):
    path = tmp_path / "c.sqlite"
    inner = ScriptedLLM()
    # A window far longer than the test: only generate's own flush can commit these.
    llm = CachedLLM(inner, ResponseCache(path, commit_interval=3600))
    seen: list[tuple[int, int]] = []

    def on_result(i: int, completion: Completion) -> None:
        # Readable at once through the cache (read-your-writes); a fresh connection waits for the commit.
        key = llm.key(chat("ab"[i]))
        seen.append((len(llm.cache.get_many([key])), _committed_rows(path)))

    generate_sync(llm, [chat("a"), chat("b")], on_result)
    assert seen == [(1, 0), (1, 0)]
    assert _committed_rows(path) == 2  # durable once generate returned
    inner.batches.clear()
    results = generate_sync(llm, [chat("b"), chat("c"), chat("a")])
    assert inner.sent == ["c"]
    assert [r.cached for r in results] == [True, False, True]
    assert [r.text for r in results] == ["echo:b:0", "echo:c:0", "echo:a:0"]
    # Tokens are only counted for what was paid for.
    assert llm.usage.prompt_tokens == 3 and llm.usage.cache_hits == 2


def test_failures_are_not_cached_and_duplicates_of_failures_count_as_failures(tmp_path):
    inner = ScriptedLLM()
    llm = CachedLLM(inner, ResponseCache(tmp_path / "c.sqlite"))
    results = generate_sync(llm, [chat("fail-1"), chat("ok"), chat("fail-1")])
    assert [r.ok for r in results] == [False, True, False]
    assert results[2].error == results[0].error and not results[2].cached
    assert len(llm.cache) == 1
    assert llm.usage.errors == {"http_500": 2} and llm.usage.cache_hits == 0
    inner.batches.clear()
    generate_sync(llm, [chat("fail-1"), chat("ok")])
    assert inner.sent == ["fail-1"]  # asked again; the success was not


def test_backend_without_callbacks_is_still_cached_and_reported(tmp_path):
    inner = ScriptedLLM(callback=False)
    llm = CachedLLM(inner, ResponseCache(tmp_path / "c.sqlite"))
    seen: list[int] = []
    results = generate_sync(llm, [chat("a"), chat("b"), chat("a")], on_result=lambda i, c: seen.append(i))
    assert [r.text for r in results] == ["echo:a:0", "echo:b:0", "echo:a:0"]
    assert sorted(seen) == [0, 1, 2]
    assert len(llm.cache) == 2


def test_no_cache_still_deduplicates_within_a_batch():
    inner = ScriptedLLM()
    llm = CachedLLM(inner, None)
    generate_sync(llm, [chat("a"), chat("a")])
    generate_sync(llm, [chat("a")])
    assert inner.sent == ["a", "a"]  # once per batch, nothing remembered between batches


def test_completion_json_round_trip():
    c = Completion(texts=["é", "b"], finish_reasons=["stop", "length"], prompt_tokens=4, completion_tokens=9)
    back = Completion.from_json(c.to_json())
    assert (back.texts, back.finish_reasons, back.prompt_tokens, back.completion_tokens) == (
        c.texts,
        c.finish_reasons,
        4,
        9,
    )


def test_make_llm_accepts_a_cache_path_and_rejects_bad_specs(tmp_path):
    llm = make_llm("openai:some-model", cache=tmp_path / "x.sqlite", base_url="http://127.0.0.1:9/v1")
    assert isinstance(llm.cache, ResponseCache) and llm.name == "openai:some-model"
    for bad in ["nonsense", "openai", "vllm:"]:
        with pytest.raises(ValueError):
            make_llm(bad)


def test_generate_sync_works_inside_a_running_loop():
    inner = ScriptedLLM()
    llm = CachedLLM(inner, None)

    async def from_async_code() -> list[Completion]:
        return generate_sync(llm, [chat("inside")])

    assert asyncio.run(from_async_code())[0].text == "echo:inside:0"


def test_request_is_messages_plus_frozen_sampling_and_round_trips():
    """`ChatRequest` = messages + `SamplingParams` (as in vLLM); its canonical form stays flat,
    so cache keys written before the split still match, and it round-trips (Ray rows)."""
    import dataclasses
    import json

    from datagen.llm import SamplingParams

    req = chat("x", n=2, temperature=0.3, stop=["\n"], seed=7, response_format={"type": "json_object"})
    assert req.sampling == SamplingParams(n=2, temperature=0.3, stop=("\n",), seed=7)
    assert (req.n, req.temperature, req.stop, req.seed) == (2, 0.3, ("\n",), 7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.sampling.n = 3  # type: ignore[misc]
    flat = json.loads(req.canonical())
    assert set(flat) == {"messages", "n", "temperature", "top_p", "max_tokens", "stop", "seed", "response_format"}
    assert ChatRequest.from_canonical(req.canonical()) == req
    one = req.with_sampling(n=1, seed=8)
    assert (one.n, one.seed, one.messages) == (1, 8, req.messages) and req.n == 2


# Group commit (datagen/llm/cache.py): the writer thread, its window, and the bound after kill -9.


def test_group_commit_reads_its_own_writes_and_counts_them_in_token_totals(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path, commit_interval=3600)
    key = _put(cache, "a", tokens=5)
    assert cache.unsaved == 1 and _committed_rows(path) == 0  # queued, not committed
    assert cache.get_many([key, "other"])[key].texts == ["re a"]
    assert cache.token_totals() == [("fake", "m", 5, 5)]  # the budget sees what was paid for
    assert cache.unsaved == 0 and _committed_rows(path) == 1
    cache.close()


def test_group_commit_starts_when_commit_rows_wait_and_never_holds_more_than_max_unsaved(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path, commit_interval=3600, commit_rows=4, max_unsaved=6)
    for i in range(3):
        _put(cache, f"p{i}")
    assert cache.unsaved == 3 and cache.commits == 0  # fewer than commit_rows: the window decides
    _put(cache, "p3")  # the 4th wakes the writer without any flush
    for _ in range(3000):
        if cache.commits:
            break
        threading.Event().wait(0.01)
    assert cache.commits == 1 and _committed_rows(path) == 4
    # put waits rather than let more than max_unsaved pile up: the bound after kill -9.
    most = 0
    for i in range(4, 60):
        _put(cache, f"p{i}")
        most = max(most, cache.unsaved)
    assert most <= 6
    cache.close()
    assert _committed_rows(path) == 60


def test_generate_commits_what_landed_even_when_it_fails(tmp_path):
    from datagen.errors import FatalLLMError

    class DiesAfterTwo(ScriptedLLM):
        async def generate(self, requests, on_result=None):
            for i, req in enumerate(requests[:2]):
                on_result(i, Completion(texts=[req.messages[-1][1]], finish_reasons=["stop"]))
            raise FatalLLMError("endpoint gone")

    path = tmp_path / "c.sqlite"
    llm = CachedLLM(DiesAfterTwo(), ResponseCache(path, commit_interval=3600))
    with pytest.raises(FatalLLMError):
        generate_sync(llm, [chat("a"), chat("b"), chat("c")])
    assert _committed_rows(path) == 2  # the paid calls are kept for the rerun


def test_a_failed_commit_is_a_clear_error_not_a_silent_loss(tmp_path):
    from datagen.errors import DatagenError

    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path, commit_interval=3600)
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE completions")  # e.g. the file replaced under a running stage
    _put(cache, "a")
    with pytest.raises(DatagenError, match=r"c\.sqlite: could not save LLM replies to the cache: "):
        cache.flush()
    with pytest.raises(DatagenError, match="could not save"):
        _put(cache, "b")


def test_a_cache_nobody_closed_commits_its_last_window_at_exit(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "c.sqlite"
    script = (
        "import sys; sys.path.insert(0, sys.argv[2])\n"
        "from datagen.llm import ChatRequest, Completion, ResponseCache\n"
        "cache = ResponseCache(sys.argv[1], commit_interval=3600)\n"
        "for i in range(5):\n"
        "    r = ChatRequest.chat(f'q{i}')\n"
        "    cache.put(r.cache_key('fake', 'm'), 'fake', 'm', r, Completion(texts=['x'], finish_reasons=['stop']))\n"
        "assert cache.unsaved == 5\n"
    )
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, "-c", script, str(path), str(root)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert _committed_rows(path) == 5


def test_group_commit_stores_rows_exactly_as_written(tmp_path):
    """Batches reach SQLite as one JSON array (json_each): every column must come out exactly
    as `put` got it, whatever the text holds, and a key put twice keeps its last answer."""
    path = tmp_path / "c.sqlite"
    cache = ResponseCache(path, commit_interval=3600)
    tricky = ['quote " backslash \\ tab \t newline \n', "é 中文 🙂 \u2028 \u0085 \x1c", "", "{\"json\": [1, 2]}"]
    written = {}
    for i, text in enumerate(tricky):
        request = chat(text or "empty", stop=[text] if text else [], seed=i)
        completion = Completion(texts=[text + "!"], finish_reasons=["stop"], prompt_tokens=i, completion_tokens=7)
        key = request.cache_key("fake", "m")
        cache.put(key, "fake", "m", request, completion)
        written[key] = (request.canonical(), completion.to_json())
    again = chat("again")
    key = again.cache_key("fake", "m")
    cache.put(key, "fake", "m", again, Completion(texts=["first"], finish_reasons=["stop"]))
    last = Completion(texts=["second"], finish_reasons=["length"])
    cache.put(key, "fake", "m", again, last)
    written[key] = (again.canonical(), last.to_json())
    cache.close()
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT key, backend, model, request, response, typeof(created) FROM completions").fetchall()
    assert {k: (req, resp) for k, _, _, req, resp, _ in rows} == written
    assert {(b, m, t) for _, b, m, _, _, t in rows} == {("fake", "m", "real")}
