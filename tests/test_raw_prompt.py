"""Raw-prompt requests (`PromptRequest`, Magpie's kind) through the same pipes as chat requests:
their own cache keys, the usage counters, retries, the budget, and `/v1/completions` on the wire;
a chat-only endpoint stops the run with one line."""

from __future__ import annotations

import pytest

from datagen.errors import FatalLLMError
from datagen.llm import ChatRequest, PromptRequest, ResponseCache, generate_sync, make_llm
from datagen.llm.base import request_from_canonical
from datagen.llm.budget import Budget, BudgetExceeded, Rate


def make(server, cache=None, **options):
    options.setdefault("backoff_initial", 0.01)
    options.setdefault("backoff_max", 0.05)
    return make_llm("openai:test", cache=cache, base_url=server.base_url, api_key="k", **options)


def test_prompt_keys_never_meet_chat_keys_and_round_trip():
    raw = PromptRequest.raw("hello", max_tokens=9, stop=["x"], seed=3)
    chat = ChatRequest.chat("hello", max_tokens=9, stop=["x"], seed=3)
    assert raw.cache_key("openai", "m") != chat.cache_key("openai", "m")
    assert "messages" not in raw.canonical() and '"prompt": "hello"' in raw.canonical()
    assert request_from_canonical(raw.canonical()) == raw
    assert request_from_canonical(chat.canonical()) == chat
    assert raw.with_sampling(n=2).n == 2 and raw.with_sampling(n=2).prompt == "hello"


def test_completions_endpoint_answers_caches_and_counts(openai_server, tmp_path):
    cache = ResponseCache(tmp_path / "c.sqlite")
    llm = make(openai_server, cache)
    requests = [PromptRequest.raw(f"<|im_start|>user\nq{i}", max_tokens=50, seed=i) for i in range(5)]
    results = generate_sync(llm, requests)
    assert [r.text for r in results] == [f"echo: <|im_start|>user\nq{i} #0 seed={i}" for i in range(5)]
    assert llm.usage.calls == 5 and llm.usage.completion_tokens > 0
    # The same text as a chat request is a different request: sent, not served from the raw one.
    [chat] = generate_sync(llm, [ChatRequest.chat("<|im_start|>user\nq0", max_tokens=50, seed=0)])
    assert chat.ok and not chat.cached
    assert openai_server.stats.requests == 6
    again = make(openai_server, cache)
    assert all(r.cached for r in generate_sync(again, requests))
    assert openai_server.stats.requests == 6 and again.usage.cache_hits == 5


def test_completions_stop_n_and_max_tokens_go_on_the_wire(openai_server):
    llm = make(openai_server)
    [result] = generate_sync(llm, [PromptRequest.raw("alpha beta gamma delta", n=3, max_tokens=3, stop=["#"])])
    assert len(result.texts) == 3
    assert result.finish_reasons == ["length"] * 3
    assert openai_server.stats.log[0].n == 3


@pytest.mark.parametrize("kind", ["429", "500", "malformed", "empty", "disconnect"])
def test_completions_faults_are_retried_like_chat(openai_server, kind):
    openai_server.configure(fail_first=2, fail_kind=kind, retry_after=0.01)
    llm = make(openai_server)
    [result] = generate_sync(llm, [PromptRequest.raw("retry me")])
    assert result.ok, result.error
    assert [e.outcome for e in openai_server.stats.attempts("retry me")] == [kind, kind, "ok"]


def test_completions_are_budgeted(openai_server):
    budget = Budget(1.0)
    rate = Rate(100.0, 1000.0)
    llm = make(openai_server, budget=budget, price=rate)
    [result] = generate_sync(llm, [PromptRequest.raw("short", max_tokens=500)])
    assert result.ok and budget.reserved == 0
    assert budget.spent == pytest.approx(rate.cost(result.prompt_tokens, result.completion_tokens))
    with pytest.raises(BudgetExceeded):
        generate_sync(llm, [PromptRequest.raw("long", max_tokens=2000)])
    assert openai_server.stats.requests == 1


def test_chat_only_endpoint_stops_with_one_line(openai_server):
    openai_server.configure(completions=False)
    llm = make(openai_server)
    with pytest.raises(FatalLLMError) as caught:
        generate_sync(llm, [PromptRequest.raw(f"p{i}") for i in range(20)])
    message = str(caught.value)
    assert "\n" not in message
    assert "/completions answered 404" in message and "chat-only" in message
    assert openai_server.stats.requests < 20  # the rest were never sent
    # Chat requests still work against the same server.
    assert generate_sync(make(openai_server), [ChatRequest.chat("hi")])[0].ok


def test_local_backend_continues_a_raw_prompt(tiny_model_dir):
    llm = make_llm(f"local:{tiny_model_dir}")
    raw = PromptRequest.raw("<|im_start|>user\n", max_tokens=6, temperature=1.0, seed=1, n=2)
    chat = ChatRequest.chat("<|im_start|>user\n", max_tokens=6, temperature=1.0, seed=1)
    [done, as_chat] = generate_sync(llm, [raw, chat])
    assert done.ok and len(done.texts) == 2 and done.completion_tokens > 0
    # The raw prompt is tokenized as is; the chat one gets the template around it (longer).
    assert done.prompt_tokens < as_chat.prompt_tokens
    assert done.prompt_tokens == 3  # <|im_start|> user \n


def test_vllm_engine_sends_raw_prompts_to_generate_and_chats_to_chat(monkeypatch):
    """Routing only (a stand-in engine): the real engine path runs in tests/test_vllm_backend.py."""
    from types import SimpleNamespace

    from datagen.llm.vllm_engine import VLLMEngine

    calls: dict[str, list] = {"generate": [], "chat": []}

    def output(text: str) -> SimpleNamespace:
        return SimpleNamespace(outputs=[SimpleNamespace(index=0, text=text, finish_reason="stop", token_ids=[1, 2])],
                               prompt_token_ids=[1])

    class Engine:
        def generate(self, prompts, sampling_params, use_tqdm):
            calls["generate"].append(prompts)
            return [output(f"raw:{p}") for p in prompts]

        def chat(self, conversations, sampling_params, use_tqdm):
            calls["chat"].append(conversations)
            return [output(f"chat:{c[-1]['content']}") for c in conversations]

    engine = VLLMEngine("m")
    monkeypatch.setattr(engine, "_load", Engine)
    monkeypatch.setattr(engine, "sampling_params", lambda req: req.sampling)
    requests = [PromptRequest.raw("a"), ChatRequest.chat("b"), PromptRequest.raw("c")]
    results = generate_sync(engine, requests)
    assert [r.text for r in results] == ["raw:a", "chat:b", "raw:c"]
    assert calls == {"generate": [["a", "c"]], "chat": [[[{"role": "user", "content": "b"}]]]}
