"""ROUGE-L novelty filter: the decisions of `rouge_score`, without its quadratic cost.

Self-Instruct / Stanford Alpaca keep a generated instruction only if its ROUGE-L F1 with every
instruction already in the pool is <= 0.7. Done naively (`rouge_score` per pair, a Python
O(n*m) DP each) that is the slowest step of the whole bootstrap once the pool has thousands of
entries. This module gives *exactly* the same scores and decisions, faster:

1. Tokenize once (same rule as rouge_score's default tokenizer: lowercase, runs of [a-z0-9];
   no stemming) and map tokens to ids.
2. Upper bound: LCS(a, b) <= |multiset(a) & multiset(b)|, so F1 <= 2*overlap / (|a| + |b|).
   The overlap of a candidate with *every* pool entry is one `np.bincount` over posting lists
   of (token, k-th occurrence) features: a multiset intersection is a set intersection of
   those features. Entries whose bound cannot beat the threshold are never looked at again.
3. Exact LCS only for the survivors, bit-parallel on Python ints (one add/or/and per token),
   then F1 computed with rouge_score's own float formula, so ties at the threshold (e.g. an
   F1 of exactly 0.7) fall the same way.

Edge case kept on purpose: a text with no [a-z0-9] tokens (e.g. pure Chinese) scores 0 with
everything, as in rouge_score. `tokenize_cjk` is an opt-in tokenizer that also counts each
CJK character as a token (not rouge_score's behaviour; useful for Chinese data).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

Tokenizer = Callable[[str], list[str]]

_TOKEN_RE = re.compile(r"[a-z0-9]+")
# CJK unified ideographs (+ext A, compatibility), kana, hangul syllables.
_CJK_TOKEN_RE = re.compile(r"[a-z0-9]+|[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]")
# Float slack for the bound test: the bound is exact rational arithmetic done in floats (error
# ~1e-16); a pair is skipped only when its bound is below the threshold by more than this.
_EPS = 1e-9


def tokenize(text: str) -> list[str]:
    """rouge_score's default tokenizer without stemming.

    rouge_score lowercases, replaces every run of non-[a-z0-9] with a space, splits and drops
    empty tokens: that is exactly the maximal [a-z0-9] runs of the lowercased text (note that
    `str.lower` runs first, so e.g. the Kelvin sign becomes an ASCII 'k' in both).
    """
    return _TOKEN_RE.findall(text.lower())


def tokenize_cjk(text: str) -> list[str]:
    """Like `tokenize`, plus one token per CJK character (opt-in; differs from rouge_score)."""
    return _CJK_TOKEN_RE.findall(text.lower())


def f1_from_lcs(lcs: int, len_target: int, len_prediction: int) -> float:
    """ROUGE-L F1 with rouge_score's exact float operations (`_score_lcs` + `fmeasure`).

    Symmetric in its two lengths even in floating point: 2*p*r only rescales by a power of two.
    """
    if len_target == 0 or len_prediction == 0:
        return 0.0
    precision = lcs / len_prediction
    recall = lcs / len_target
    if precision + recall > 0:
        return 2 * precision * recall / (precision + recall)
    return 0.0


def _position_masks(ids: Iterable[int]) -> dict[int, int]:
    """token id -> bitmask of its positions; the 'pattern' side of the bit-parallel LCS."""
    masks: dict[int, int] = {}
    for pos, tok in enumerate(ids):
        masks[tok] = masks.get(tok, 0) | (1 << pos)
    return masks


def _lcs_with_masks(masks: dict[int, int], length: int, other: Iterable[int]) -> int:
    """LCS length by the bit-vector algorithm (Allison-Dix / Hyyro): O(|other|) word ops.

    V holds a 1 for every pattern position not yet matched; each symbol of `other` moves
    matches via one addition. LCS = number of zero bits.
    """
    full = (1 << length) - 1
    v = full
    for tok in other:
        m = masks.get(tok)
        if m:
            u = v & m
            v = ((v + u) | (v - u)) & full
    return length - v.bit_count()


def lcs_length(a: list[str] | list[int], b: list[str] | list[int]) -> int:
    """Length of the longest common subsequence of two token sequences."""
    if not a or not b:
        return 0
    if len(b) > len(a):
        a, b = b, a
    return _lcs_with_masks(_position_masks(a), len(a), b)  # type: ignore[arg-type]


def rouge_l(target: str, prediction: str, tokenizer: Tokenizer = tokenize) -> float:
    """ROUGE-L F1 of two texts; equal to RougeScorer(["rougeL"]).score(target, prediction).fmeasure."""
    t, p = tokenizer(target), tokenizer(prediction)
    return f1_from_lcs(lcs_length(t, p), len(t), len(p))


class _IntBuffer:
    """Append-only int32 array with amortised O(1) growth (posting lists, lengths)."""

    __slots__ = ("data", "size")

    def __init__(self, capacity: int = 4) -> None:
        self.data = np.empty(capacity, dtype=np.int32)
        self.size = 0

    def append(self, value: int) -> None:
        if self.size == len(self.data):
            grown = np.empty(len(self.data) * 2, dtype=np.int32)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size] = value
        self.size += 1

    def view(self) -> np.ndarray:
        return self.data[: self.size]


@dataclass(frozen=True)
class Match:
    """The most similar pool entry: its index (insertion order), text and ROUGE-L F1."""

    index: int
    text: str
    score: float


@dataclass
class NoveltyStats:
    queries: int = 0
    bound_survivors: int = 0  # pool entries whose bound passed (exact LCS computed)
    pairs_total: int = 0  # pairs a naive filter would have scored

    def as_dict(self) -> dict[str, int]:
        return {
            "queries": self.queries,
            "lcs_computed": self.bound_survivors,
            "pairs_total": self.pairs_total,
        }


class NoveltyIndex:
    """A growing pool of texts answering "is this candidate too similar to anything in it?".

    `is_novel(text)` is True when ROUGE-L F1 with every pool entry is <= threshold (dropped
    when > threshold, as Self-Instruct / Alpaca do). `most_similar(text, above=t)` gives the
    highest-scoring entry among those scoring > t (ties: lowest index, like rouge_score's
    `score_multi`). Scores are bit-identical to rouge_score's.
    """

    def __init__(self, texts: Iterable[str] = (), threshold: float = 0.7, tokenizer: Tokenizer = tokenize):
        self.threshold = threshold
        self.tokenizer = tokenizer
        self.texts: list[str] = []
        self._vocab: dict[str, int] = {}
        self._docs: list[tuple[int, ...]] = []
        self._lengths = _IntBuffer(64)
        # feature (token id, k-th occurrence) -> posting list of pool indices holding it
        self._features: dict[tuple[int, int], _IntBuffer] = {}
        self.stats = NoveltyStats()
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        return len(self.texts)

    def _ids(self, tokens: list[str], grow: bool) -> list[int]:
        if grow:
            vocab = self._vocab
            return [vocab.setdefault(tok, len(vocab)) for tok in tokens]
        return [self._vocab.get(tok, -1) for tok in tokens]

    @staticmethod
    def _feature_keys(ids: list[int]) -> list[tuple[int, int]]:
        seen: dict[int, int] = {}
        keys = []
        for tok in ids:
            k = seen.get(tok, 0)
            seen[tok] = k + 1
            keys.append((tok, k))
        return keys

    def add(self, text: str) -> int:
        """Add `text` to the pool (no check); returns its index."""
        ids = self._ids(self.tokenizer(text), grow=True)
        index = len(self.texts)
        self.texts.append(text)
        self._docs.append(tuple(ids))
        self._lengths.append(len(ids))
        for key in self._feature_keys(ids):
            posting = self._features.get(key)
            if posting is None:
                posting = self._features[key] = _IntBuffer()
            posting.append(index)
        return index

    def most_similar(self, text: str, above: float = -1.0) -> Match | None:
        """The pool entry with the highest ROUGE-L F1 among those scoring > `above`, else None.

        With the default `above=-1` this is the exact nearest entry (None only for an empty pool).
        """
        n_pool = len(self.texts)
        self.stats.queries += 1
        self.stats.pairs_total += n_pool
        if n_pool == 0:
            return None
        ids = self._ids(self.tokenizer(text), grow=False)
        n = len(ids)
        best: Match | None = None
        if n > 0:
            postings = [
                self._features[key].view()
                for key in self._feature_keys(ids)
                if key[0] >= 0 and key in self._features
            ]
            if postings:
                overlap = np.bincount(np.concatenate(postings), minlength=n_pool)
                denom = (self._lengths.view() + n).astype(np.float64)
                bound = 2.0 * overlap / denom
                survivors = np.flatnonzero((overlap > 0) & (bound > above - _EPS))
                if len(survivors):
                    # Highest bound first so the branch-and-bound stops early; stable for ties.
                    order = survivors[np.argsort(-bound[survivors], kind="stable")]
                    masks = _position_masks(ids)
                    for idx in order.tolist():
                        b = bound[idx]
                        if best is not None and b < best.score - _EPS:
                            break
                        self.stats.bound_survivors += 1
                        doc = self._docs[idx]
                        score = f1_from_lcs(_lcs_with_masks(masks, n, doc), len(doc), n)
                        if score > above and (
                            best is None or score > best.score or (score == best.score and idx < best.index)
                        ):
                            best = Match(idx, self.texts[idx], score)
        if best is None and above < 0.0:
            # Every entry scores 0 (no shared token, or an empty side), which beats a negative floor.
            best = Match(0, self.texts[0], 0.0)
        return best

    def max_similarity(self, text: str) -> float:
        """Exact max ROUGE-L F1 of `text` against the pool (0.0 for an empty pool)."""
        match = self.most_similar(text)
        return match.score if match else 0.0

    def is_novel(self, text: str, threshold: float | None = None) -> bool:
        """True when no pool entry has ROUGE-L F1 > threshold (default: the index's)."""
        limit = self.threshold if threshold is None else threshold
        return self.most_similar(text, above=limit) is None

    def add_if_novel(self, text: str, threshold: float | None = None) -> tuple[bool, Match | None]:
        """Check and, if novel, add. Returns (added, the blocking match when not added)."""
        limit = self.threshold if threshold is None else threshold
        match = self.most_similar(text, above=limit)
        if match is None:
            self.add(text)
            return True, None
        return False, match


def filter_novel(
    texts: Iterable[str], threshold: float = 0.7, pool: Iterable[str] = (), tokenizer: Tokenizer = tokenize
) -> list[bool]:
    """Alpaca's greedy pass: keep a text if it is novel w.r.t. `pool` + the texts kept before it."""
    index = NoveltyIndex(pool, threshold=threshold, tokenizer=tokenizer)
    return [index.add_if_novel(text)[0] for text in texts]
