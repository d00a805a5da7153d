"""The embedded default backend (SmolLM2-135M on CPU), for real but tiny: few tokens, one
model load for the whole module. Output quality is not judged, only the contract."""

from __future__ import annotations

import pytest

from datagen.llm import ChatRequest, generate_sync

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_llm():
    from datagen.llm.local import LocalLLM

    llm = LocalLLM(threads=1)  # other processes share this machine's two cores
    yield llm
    llm.close()


def test_batch_returns_texts_n_and_usage(local_llm):
    requests = [
        ChatRequest.chat("Name three fruits.", temperature=0, max_tokens=16),
        ChatRequest.chat("Say something about the sea.", n=2, temperature=0.9, seed=1, max_tokens=16),
        ChatRequest.chat("Name a colour.", n=2, temperature=0, max_tokens=8),  # greedy with n>1
    ]
    landed: list[int] = []
    fruits, sea, colour = generate_sync(local_llm, requests, on_result=lambda i, c: landed.append(i))
    assert sorted(landed) == [0, 1, 2]
    for completion, n in ((fruits, 1), (sea, 2), (colour, 2)):
        assert completion.error is None
        assert len(completion.texts) == n and len(completion.finish_reasons) == n
        assert all(t.strip() for t in completion.texts)
        assert set(completion.finish_reasons) <= {"stop", "length"}
        assert completion.prompt_tokens > 0 and 0 < completion.completion_tokens <= 16 * n
    assert colour.texts[0] == colour.texts[1]  # greedy: the same answer twice


def test_stop_strings_and_length_limit(local_llm):
    stopped, cut = generate_sync(
        local_llm,
        [
            ChatRequest.chat("Write one sentence about trees.", temperature=0, max_tokens=16, stop=["e"]),
            ChatRequest.chat("Tell me a long story about a dragon.", temperature=0, max_tokens=3),
        ],
    )
    assert stopped.error is None
    assert "e" not in stopped.texts[0]
    assert stopped.finish_reasons == ["stop"]
    assert cut.finish_reasons == ["length"]
    assert cut.completion_tokens == 3


def test_same_seed_same_output(local_llm):
    # Each sample draws from its own generator seeded from its request, so a rerun repeats it.
    requests = [
        ChatRequest.chat("Invent a name for a cat.", n=2, temperature=1.0, seed=7, max_tokens=12),
        ChatRequest.chat("Invent a name for a dog.", n=2, temperature=1.0, seed=8, max_tokens=12),
    ]
    first = generate_sync(local_llm, requests)
    again = generate_sync(local_llm, requests)
    assert all(c.ok for c in first)
    assert [c.texts for c in again] == [c.texts for c in first]
