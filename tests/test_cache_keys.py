"""Cache keys are built from cached pieces (datagen/llm/base.py); every key and canonical text
must stay byte-identical to the plain `json.dumps` form they were defined by, or a rerun after
an upgrade would pay again for every answer it already has."""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import replace

from datagen.llm import ChatRequest
from datagen.llm.base import _SAMPLING_FIELDS, PromptRequest, SamplingParams


def reference_canonical(request: ChatRequest | PromptRequest) -> str:
    body = {name: getattr(request.sampling, name) for name in _SAMPLING_FIELDS}
    if isinstance(request, PromptRequest):
        body["prompt"] = request.prompt
    else:
        body["messages"] = request.messages
        body["response_format"] = request.response_format
    return json.dumps(body, sort_keys=True, ensure_ascii=False)


def reference_key(request: ChatRequest | PromptRequest, backend: str, model: str, identity: str = "") -> str:
    canonical = reference_canonical(request)
    if isinstance(request, PromptRequest):
        parts = [backend, model, identity, "prompt", canonical]
    else:
        parts = [backend, model, identity, canonical] if identity else [backend, model, canonical]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8")).hexdigest()


ALPHABET = ['a', 'Z', ' ', '"', '\\', '\n', '\t', '\x00', '\x1f', '\u2028', '\u2029', 'é', '中', '😀', '/', '{', '}',
            '\x00datagen:slot\x00']


def random_text(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))


def random_sampling(rng: random.Random) -> SamplingParams:
    return SamplingParams(
        n=rng.choice([1, 4, True]),
        temperature=rng.choice([0, 0.0, 0.7, 1, 1.0, 1e-7, 2.5e300]),
        top_p=rng.choice([1, 1.0, 0.95]),
        max_tokens=rng.choice([1, 32, 512, 512.0]),
        stop=tuple(random_text(rng) for _ in range(rng.randint(0, 3))),
        seed=rng.choice([None, 0, 7, 2**40]),
    )


def test_keys_and_canonical_text_match_the_plain_json_definition() -> None:
    rng = random.Random(2028)
    identities = ["", json.dumps({"base_url": "http://h/v1", "note": "\u2028é"}, ensure_ascii=False)]
    for _ in range(3000):
        sampling = random_sampling(rng)
        if rng.random() < 0.3:
            request: ChatRequest | PromptRequest = PromptRequest(prompt=random_text(rng), sampling=sampling)
        else:
            messages = tuple((rng.choice(["system", "user", "assistant"]), random_text(rng))
                             for _ in range(rng.randint(1, 3)))
            response_format = rng.choice([None, json.dumps({"type": "json_object", "x": random_text(rng)})])
            request = ChatRequest(messages=messages, sampling=sampling, response_format=response_format)
        assert request.canonical() == reference_canonical(request)
        backend, model = rng.choice([("openai", "gpt-4o-mini"), ("local", "é/中"), ("v\"llm", "m\\x")])
        identity = rng.choice(identities)
        assert request.cache_key(backend, model, identity) == reference_key(request, backend, model, identity)


def test_settings_equal_for_hashing_but_written_differently_keep_their_own_keys() -> None:
    """1 == 1.0 == True hash alike; json writes them apart. The cached pieces must not merge
    them, whichever comes first."""
    base = ChatRequest.chat("same words")
    variants = [base.with_sampling(temperature=1), base.with_sampling(temperature=1.0),
                base.with_sampling(n=True), base.with_sampling(n=1),
                base.with_sampling(max_tokens=512.0), base.with_sampling(max_tokens=512)]
    for order in (variants, variants[::-1]):
        keys = [request.cache_key("openai", "m") for request in order]
        assert keys == [reference_key(request, "openai", "m") for request in order]
    one, one_float, true_n, one_n, float_tokens, int_tokens = (request.cache_key("openai", "m") for request in variants)
    assert one != one_float and true_n != one_n and float_tokens != int_tokens


def test_unhashable_settings_fall_back_to_the_plain_form() -> None:
    request = ChatRequest(messages=(("user", "hi"),), sampling=replace(SamplingParams(), stop=["###"]))  # type: ignore[arg-type]
    assert request.canonical() == reference_canonical(request)
    assert request.cache_key("openai", "m", "{}") == reference_key(request, "openai", "m", "{}")
