"""The novelty filter must agree with rouge_score exactly: same tokens, same floats, same decisions."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from rouge_score import tokenize as rouge_tokenize

from datagen.novelty import (
    NoveltyIndex,
    f1_from_lcs,
    filter_novel,
    lcs_length,
    rouge_l,
    tokenize,
    tokenize_cjk,
)

SCORER = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

TRICKY = [
    "",
    "   ",
    "!!!",
    "Hello, World!",
    "hello world",
    "HELLO   world\n\nhello",
    "don't stop-believing_now",
    "e-mail me at a.b@c.com 24/7",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9",
    "\u212a is the Kelvin sign",  # lowercases to ASCII 'k'
    "\u0130stanbul",  # lowercases to 'i' + combining dot
    "\uff21\uff22\uff23 fullwidth",
    "\u8bf7\u89e3\u91ca\u4e0b\u9762\u8fd9\u4e2a\u6210\u8bed\u7684\u610f\u601d",
    "\u7528 Python \u5199\u4e00\u4e2a\u51fd\u6570",
    "x1 x2 x1 x2 x1",
    "tab\tseparated\tvalues",
    "1 2 3 4 5 6 7 8 9 10",
    "a " * 70,  # more tokens than one machine word: exercises the big-int LCS
]


def rouge_f(target: str, prediction: str) -> float:
    return SCORER.score(target, prediction)["rougeL"].fmeasure


def dp_lcs(a: list, b: list) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = (
                table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
            )
    return table[-1][-1]


def random_text(rng: random.Random, vocab: list[str], max_len: int = 14) -> str:
    seps = [" ", " ", " ", ", ", "-", "\n", ". ", "!? "]
    words = [rng.choice(vocab) for _ in range(rng.randint(0, max_len))]
    return "".join(w + rng.choice(seps) for w in words)


VOCAB = [
    "a",
    "the",
    "cat",
    "Cat",
    "dog",
    "DOG!",
    "of",
    "to",
    "1",
    "22",
    "x",
    "\u00e9t\u00e9",
    "\u4e2d\u6587",
    "K",
]


@pytest.mark.parametrize("text", TRICKY)
def test_tokenizer_matches_rouge_score(text: str) -> None:
    assert tokenize(text) == rouge_tokenize.tokenize(text, None)


def test_tokenize_cjk_adds_characters_only() -> None:
    assert tokenize_cjk("\u7528 Python \u5199") == ["\u7528", "python", "\u5199"]
    assert [t for t in tokenize_cjk("Hello \u4e16\u754c 42") if t.isascii()] == tokenize(
        "Hello \u4e16\u754c 42"
    )


@pytest.mark.parametrize("a", TRICKY)
@pytest.mark.parametrize("b", TRICKY[::3])
def test_rouge_l_matches_on_tricky_pairs(a: str, b: str) -> None:
    assert rouge_l(a, b) == rouge_f(a, b)
    assert rouge_l(b, a) == rouge_f(b, a)


def test_rouge_l_matches_on_random_pairs() -> None:
    rng = random.Random(1234)
    for _ in range(3000):
        a, b = random_text(rng, VOCAB), random_text(rng, VOCAB)
        assert rouge_l(a, b) == rouge_f(a, b), (a, b)


def test_lcs_matches_dp_including_long_sequences() -> None:
    rng = random.Random(7)
    for _ in range(400):
        n, m = rng.randint(0, 150), rng.randint(0, 150)
        alphabet = rng.randint(1, 6)
        a = [rng.randrange(alphabet) for _ in range(n)]
        b = [rng.randrange(alphabet) for _ in range(m)]
        assert lcs_length(a, b) == dp_lcs(a, b)


def test_empty_side_scores_zero_like_rouge_score() -> None:
    assert rouge_l("", "hello world") == 0.0 == rouge_f("", "hello world")
    assert rouge_l("\u4e2d\u6587\u53e5\u5b50", "\u4e2d\u6587\u53e5\u5b50") == 0.0  # no [a-z0-9] tokens
    index = NoveltyIndex(["\u4e2d\u6587\u53e5\u5b50", "hello world"])
    assert index.is_novel("\u4e2d\u6587\u53e5\u5b50")  # rouge_score would keep an exact Chinese duplicate
    assert index.max_similarity("!!!") == 0.0
    assert NoveltyIndex(["\u4e2d\u6587"], tokenizer=tokenize_cjk).max_similarity("\u4e2d\u6587") == 1.0


def test_f1_float_formula_at_the_threshold() -> None:
    """Rationally 0.7 (lcs 7 of 10+10, 14 of 20+20...) must come out as rouge_score's float does."""
    for lcs, n1, n2 in [
        (7, 10, 10),
        (14, 20, 20),
        (7, 8, 12),
        (21, 30, 30),
        (35, 50, 50),
        (7, 7, 13),
        (28, 40, 40),
        (49, 70, 70),
    ]:
        a = [f"w{i}" for i in range(n1)]
        b = a[:lcs] + [f"z{i}" for i in range(n2 - lcs)]
        expected = rouge_scorer._score_lcs(a, b).fmeasure
        assert f1_from_lcs(lcs, n1, n2) == expected
        text_a, text_b = " ".join(a), " ".join(b)
        index = NoveltyIndex([text_a])
        assert index.is_novel(text_b, 0.7) == (not expected > 0.7)
        assert index.max_similarity(text_b) == expected


def test_exactly_at_threshold_is_kept_above_is_dropped() -> None:
    # 7 of 10 tokens shared in order, both length 10: F1 == 0.7 (as a float here) -> novel
    a = "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"
    b = "w0 w1 w2 w3 w4 w5 w6 z0 z1 z2"
    score = rouge_f(a, b)
    index = NoveltyIndex([a])
    assert index.is_novel(b, 0.7) == (score <= 0.7)
    assert not index.is_novel(b, score - 1e-12)
    assert index.is_novel(b, score)


def brute_force(pool: list[str], text: str) -> tuple[float, int]:
    scores = [rouge_f(p, text) for p in pool]
    return max(scores), int(np.argmax(scores))


@pytest.mark.parametrize("seed", range(4))
def test_index_matches_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    vocab = VOCAB[: 5 + seed * 3]
    pool = [random_text(rng, vocab, max_len=10) for _ in range(150)]
    index = NoveltyIndex(pool)
    for _ in range(120):
        text = random_text(rng, vocab, max_len=10)
        best, arg = brute_force(pool, text)
        match = index.most_similar(text)
        assert match is not None
        assert (match.score, match.index) == (best, arg), text
        for threshold in (-0.5, 0.0, 0.25, 0.5, 0.7, 0.9, 1.0):
            assert index.is_novel(text, threshold) == (best <= threshold)
            found = index.most_similar(text, above=threshold)
            assert (found is None) == (best <= threshold)
            if found is not None:
                assert found.score == best and found.index == arg


def test_empty_index() -> None:
    index = NoveltyIndex()
    assert index.is_novel("anything at all")
    assert index.most_similar("anything") is None
    assert index.max_similarity("anything") == 0.0


def alpaca_greedy(texts: list[str], threshold: float) -> list[bool]:
    pool: list[list[str]] = []
    kept = []
    for text in texts:
        tokens = SCORER._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(tokens, p).fmeasure for p in pool]
        if scores and max(scores) > threshold:
            kept.append(False)
        else:
            pool.append(tokens)
            kept.append(True)
    return kept


def test_greedy_filter_matches_alpaca_style_loop_with_planted_duplicates() -> None:
    rng = random.Random(99)
    words = "write explain a short long poem story email about the ocean moon city for kids in french".split()
    texts: list[str] = []
    for _ in range(400):
        if texts and rng.random() < 0.3:
            base = rng.choice(texts).split()
            base[rng.randrange(len(base))] = rng.choice(words)
            texts.append(" ".join(base))
        else:
            texts.append(" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))))
    for threshold in (0.5, 0.7):
        ours = filter_novel(texts, threshold=threshold)
        assert ours == alpaca_greedy(texts, threshold)
        assert 0 < sum(ours) < len(texts)  # the data really exercises both outcomes


def test_add_if_novel_reports_blocking_match() -> None:
    index = NoveltyIndex(["Write a short poem about the ocean."])
    added, match = index.add_if_novel("Write a short poem about the sea.")
    assert not added and match is not None and match.index == 0 and match.score > 0.7
    added, match = index.add_if_novel("List three uses of baking soda.")
    assert added and match is None and len(index) == 2


_word = st.sampled_from(VOCAB + ["Z", "zz", "!!", "\u00df"])
_text = st.lists(_word, max_size=12).map(" ".join)


@settings(max_examples=300, deadline=None)
@given(_text, _text)
def test_property_rouge_l_equals_rouge_score(a: str, b: str) -> None:
    assert rouge_l(a, b) == rouge_f(a, b)


@settings(max_examples=100, deadline=None)
@given(st.lists(_text, min_size=1, max_size=15), _text, st.floats(0, 1))
def test_property_index_decisions(pool: list[str], text: str, threshold: float) -> None:
    best, _ = brute_force(pool, text)
    assert NoveltyIndex(pool).is_novel(text, threshold) == (best <= threshold)
