"""Dedup: exact duplicates on normalised text, then near duplicates by embedding similarity.

Greedy keep in priority order (judge score, then answer length, then input order): a record
is dropped only because an already-KEPT record is at least `threshold` similar, so of a pair
of near duplicates exactly one survives, never neither, and each drop names the kept record
and the similarity. Search is FAISS: an exact `IndexFlatIP` for small sets and an
`IndexIVFFlat` (inner product) above `ivf_threshold`, where exact all-pairs search would be
O(N^2). Vectors are L2-normalised, so inner product = cosine.

Every vector is searched once for its k nearest neighbours. If the k-th neighbour is still
above the threshold the list may be cut short (more than k near duplicates, e.g. a template
repeated 500 times), and a kept neighbour could be missed; those rows are searched again
with k doubled until the list ends below the threshold, so the greedy pass sees every
neighbour the index can find.
"""

from __future__ import annotations

import argparse
import math
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from datagen.records import Record, StageResult, dropped
from datagen.stages.context import StageContext

# Cosines are float32: a pair built to sit exactly at the threshold comes back a few ulps
# below it. The threshold is inclusive, so compare with this much slack.
SIM_EPS = 1e-6


class DedupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(
        0.9, ge=0.0, le=1.0, description="cosine similarity at or above which two records are near duplicates"
    )
    embed_field: str = Field(
        "instruction_input",
        pattern="^(instruction|instruction_input|all)$",
        description="text compared: instruction, instruction_input (instruction + input) "
        "or all (also the answer)",
    )
    embedder: str = Field(
        "static",
        description="static (model2vec distilled once from the bundled MiniLM: thousands of texts/s on a "
        "CPU), minilm (the bundled all-MiniLM-L6-v2 transformer), or a sentence-transformers / model2vec "
        "folder or hub id",
    )
    batch_size: int = Field(64, ge=1, description="embedding batch size (transformer embedders)")
    exact: bool = Field(
        True,
        description="drop exact duplicates (case, spacing, Unicode form and sentence punctuation around "
        "words ignored; digits, signs and decimal points kept)",
    )
    semantic: bool = Field(True, description="drop near duplicates by embedding similarity")
    ivf_threshold: int = Field(
        50_000,
        ge=2,
        description="above this many records compare within k-means cells (approximate) instead of exact search",
    )
    nlist: int | None = Field(None, ge=1, description="k-means cells (None = sqrt(2 N))")
    nprobe: int = Field(
        8, ge=1, description="most cells each record is compared with: higher = better recall, slower"
    )
    probe_margin: float = Field(
        0.05,
        ge=0.0,
        le=2.0,
        description="probe a cell beyond the nearest only if its centroid is within this cosine of the "
        "nearest one's (2 = always probe nprobe cells)",
    )
    train_size: int | None = Field(
        None, ge=1, description="vectors sampled to train the cells (None = 32 per cell, at most N)"
    )
    k: int = Field(
        32,
        ge=1,
        description="neighbours per exact search; rows whose k-th neighbour is still a duplicate are re-searched",
    )
    priority_scores: list[str] = Field(
        # quality's judge (1-5) when dedup runs after it, else distill's best-of-n judge
        # (1-10) or reward-model score, which is what a dedup placed before quality sees.
        default_factory=lambda: ["quality_judge", "judge", "reward"],
        description="meta.scores keys ranking which duplicate to keep (higher first, in turn); "
        "then the longer answer",
    )


# ---------------------------------------------------------------------------------------------
# exact duplicates


# Sentence punctuation that wraps words without changing what is asked. Anything else (signs,
# decimal points, %, #, +, punctuation inside a token) can change the meaning: "3.5" vs "35",
# "-5" vs "5", "50%" vs "50", "C#" vs "C" must not be exact duplicates.
_EDGE_PUNCT = ".,!?;:…\"'()[]{}«»„¿¡"
_DASHES = frozenset("-‐‑‒–—―")
_QUOTES = str.maketrans({"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"'})


def normalize_text(text: str) -> str:
    """The text as compared for exact duplicates: Unicode (NFKC), case, spacing and sentence
    punctuation at word edges ignored; digits and the signs and points around them kept.

    `Hello,  World!` == `hello world`, but `3.5` != `35` and `-5` != `5`: a punctuation mark
    is dropped only at the edge of a word, never inside one, and a leading one only when no
    digit follows it (`.5`, `(-5)` keep their point and sign).
    """
    text = unicodedata.normalize("NFKC", text).casefold().translate(_QUOTES)
    words = []
    for word in text.split():
        if all(ch in _DASHES for ch in word):  # a free-standing dash is sentence punctuation
            continue
        start, stop = 0, len(word)
        while start < stop and word[start] in _EDGE_PUNCT and not _digit_at(word, start + 1):
            start += 1
        while stop > start and word[stop - 1] in _EDGE_PUNCT:
            stop -= 1
        if start < stop:
            words.append(word[start:stop])
    return " ".join(words)


def _digit_at(word: str, pos: int) -> bool:
    return pos < len(word) and word[pos].isdigit()


def priority_order(records: Sequence[Record], score_keys: Sequence[str] = ("quality_judge",)) -> list[int]:
    """Indices best first: each score in `score_keys` (missing = lowest), then longer answer,
    then input order, so ties always break the same way."""

    def key(i: int) -> tuple:
        scores = records[i].meta.scores
        ranked = tuple(-float(scores[k]) if k in scores else math.inf for k in score_keys)
        return (*ranked, -len(records[i].output.strip()), i)

    return sorted(range(len(records)), key=key)


# ---------------------------------------------------------------------------------------------
# near duplicates


@dataclass
class SemanticResult:
    """Outcome of the greedy pass, indexed by position in the input vectors."""

    keep: np.ndarray  # bool (N,)
    kept_by: np.ndarray  # int (N,): the kept neighbour that caused a drop, -1 when kept
    by_sim: np.ndarray  # float32 (N,): similarity to `kept_by`
    max_sim: np.ndarray  # float32 (N,): kept: highest similarity to another kept record found; NaN if none
    stats: dict[str, Any] = field(default_factory=dict)


def build_index(vectors: np.ndarray) -> Any:
    """An exact FAISS inner-product index holding `vectors` (used up to `ivf_threshold`)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index


def assign_cells(
    vectors: np.ndarray,
    nlist: int | None = None,
    nprobe: int = 4,
    train_size: int | None = None,
    seed: int = 0,
    probe_margin: float = 2.0,
    chunk: int = 65_536,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Each vector's nearest k-means cells, at most `nprobe` of them (FAISS k-means + exact
    coarse search); -1 marks a probe skipped.

    A vector deep inside its cell has its near duplicates in that cell too; only one near a
    border needs the neighbouring cells. So a cell beyond the first is probed only when its
    centroid is within `probe_margin` (cosine) of the nearest centroid's similarity.
    nlist defaults to sqrt(2 N): the coarse search costs N * nlist dot products and the join
    about N * probes * N / nlist, and with the default margin a vector probes ~2 cells (1.84
    measured at 1M), so that nlist balances the two.
    """
    import faiss

    n, dim = vectors.shape
    cells = min(n, nlist or max(1, int(round(math.sqrt(2 * n)))))
    wanted = min(n, train_size or 32 * cells)
    rng = np.random.default_rng(seed)
    sample = vectors if wanted >= n else vectors[np.sort(rng.choice(n, wanted, replace=False))]
    # Coarse cells only need to be roughly right: few iterations, and no resampling or warning
    # from FAISS about a sample size we chose (k-means cost ~ sample * cells * iterations).
    kmeans = faiss.Kmeans(
        dim,
        cells,
        niter=10,
        seed=seed,
        spherical=True,
        max_points_per_centroid=max(1, -(-len(sample) // cells)),
        min_points_per_centroid=max(1, min(39, len(sample) // cells)),
    )
    kmeans.train(sample)
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(kmeans.centroids)
    probes = min(nprobe, cells)
    coarse = np.empty((n, probes), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        sims, coarse[start:stop] = quantizer.search(vectors[start:stop], probes)
        far = sims < sims[:, :1] - probe_margin
        coarse[start:stop][far] = -1
    mean_probes = float((coarse >= 0).sum() / max(1, n))
    info = {
        "index": "ivf",
        "nlist": cells,
        "nprobe": probes,
        "probe_margin": probe_margin,
        "mean_probes": round(mean_probes, 3),
        "train_size": int(len(sample)),
    }
    return coarse, info


@dataclass
class JoinResult:
    """All pairs at or above the threshold among probed cells, plus each row's nearest neighbour."""

    pair_i: np.ndarray  # int64 (P,)
    pair_j: np.ndarray  # int64 (P,)
    pair_sim: np.ndarray  # float32 (P,)
    top_sim: np.ndarray  # float32 (N,): nearest other vector found (-inf if none)
    top_id: np.ndarray  # int64 (N,): its index (-1 if none)


def cell_join(
    vectors: np.ndarray,
    coarse: np.ndarray,
    nlist: int,
    threshold: float,
    block_rows: int = 2048,
    on_progress: Callable[[int], None] | None = None,
) -> JoinResult:
    """Self-join of `vectors` through IVF cells as dense matrix products.

    A vector lives in its nearest cell and is compared with every vector living in any of its
    `nprobe` nearest cells: the same candidates an IVF search visits. An IVF search scans the
    cells query by query, a memory-bound loop (at 1M vectors it ran ~10x slower than the
    arithmetic needs); here each cell's members meet all the queries that probe that cell in
    one BLAS matrix product, so the same comparisons run at matrix-multiply speed. A pair found
    from either side counts for both (the lists are made symmetric).
    """
    n = len(vectors)
    home = coarse[:, 0]
    order = np.argsort(home, kind="stable")
    bounds = np.searchsorted(home[order], np.arange(nlist + 1))
    members = vectors[order]  # each cell's vectors contiguous
    slot = np.empty(n, dtype=np.int64)  # position of a vector inside its cell
    slot[order] = np.arange(n) - bounds[home[order]]
    flat_cells = coarse.ravel()
    flat_rows = np.repeat(np.arange(n), coarse.shape[1])
    valid = flat_cells >= 0
    by_cell = np.argsort(flat_cells[valid], kind="stable")
    probe_rows = flat_rows[valid][by_cell]
    probe_bounds = np.searchsorted(flat_cells[valid][by_cell], np.arange(nlist + 1))

    cut = threshold - SIM_EPS
    top_sim = np.full(n, -np.inf, dtype=np.float32)
    top_id = np.full(n, -1, dtype=np.int64)
    found_i: list[np.ndarray] = []
    found_j: list[np.ndarray] = []
    found_s: list[np.ndarray] = []
    for cell in range(nlist):
        lo, hi = bounds[cell], bounds[cell + 1]
        rows_all = probe_rows[probe_bounds[cell] : probe_bounds[cell + 1]]
        if lo == hi or not len(rows_all):
            continue
        block = members[lo:hi]
        ids = order[lo:hi]
        for start in range(0, len(rows_all), block_rows):
            rows = rows_all[start : start + block_rows]
            sims = vectors[rows] @ block.T
            at_home = np.flatnonzero(home[rows] == cell)
            sims[at_home, slot[rows[at_home]]] = -np.inf  # a vector is not its own neighbour
            best = sims.argmax(axis=1)
            best_sim = sims[np.arange(len(rows)), best]
            better = best_sim > top_sim[rows]
            top_sim[rows[better]] = best_sim[better]
            top_id[rows[better]] = ids[best[better]]
            hit_r, hit_c = np.nonzero(sims >= cut)
            if len(hit_r):
                found_i.append(rows[hit_r])
                found_j.append(ids[hit_c])
                found_s.append(sims[hit_r, hit_c])
        if on_progress:
            on_progress(hi - lo)
    if found_i:
        pair_i = np.concatenate(found_i + found_j)
        pair_j = np.concatenate(found_j + found_i)
        pair_sim = np.concatenate(found_s + found_s)
        # A pair seen from both sides appears twice per direction: keep one.
        key = np.unique(pair_i * n + pair_j, return_index=True)[1]
        pair_i, pair_j, pair_sim = pair_i[key], pair_j[key], pair_sim[key]
    else:
        pair_i = pair_j = np.zeros(0, dtype=np.int64)
        pair_sim = np.zeros(0, dtype=np.float32)
    return JoinResult(pair_i, pair_j, pair_sim, top_sim, top_id)


def greedy_pairs(join: JoinResult, rank: np.ndarray) -> SemanticResult:
    """The greedy keep of `greedy_select`, over the pair lists of `cell_join`.

    For a kept record the nearest kept neighbour is known only when its nearest neighbour
    overall was kept (its above-threshold neighbours are all dropped by definition): max_sim is
    that similarity, else NaN (the report's histogram skips NaN).
    """
    n = len(rank)
    better = rank[join.pair_j] < rank[join.pair_i]
    pi, pj, ps = join.pair_i[better], join.pair_j[better], join.pair_sim[better]
    by_row = np.argsort(pi, kind="stable")
    pi, pj, ps = pi[by_row], pj[by_row], ps[by_row]
    starts = np.searchsorted(pi, np.arange(n + 1))
    rows = np.unique(pi)
    rows = rows[np.argsort(rank[rows], kind="stable")]
    keep = np.ones(n, dtype=bool)
    kept_by = np.full(n, -1, dtype=np.int64)
    by_sim = np.zeros(n, dtype=np.float32)
    for i in rows:
        js, ss = pj[starts[i] : starts[i + 1]], ps[starts[i] : starts[i + 1]]
        alive = keep[js]
        if alive.any():
            best = int(np.argmax(np.where(alive, ss, -np.inf)))
            keep[i] = False
            kept_by[i] = js[best]
            by_sim[i] = ss[best]
    max_sim = np.full(n, np.nan, dtype=np.float32)
    nearest_kept = (join.top_id >= 0) & keep[np.where(join.top_id >= 0, join.top_id, 0)]
    max_sim[nearest_kept] = join.top_sim[nearest_kept]
    max_sim[~keep] = by_sim[~keep]
    return SemanticResult(keep=keep, kept_by=kept_by, by_sim=by_sim, max_sim=max_sim)


def search_neighbours(
    index: Any,
    vectors: np.ndarray,
    k: int,
    threshold: float,
    chunk: int = 16_384,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]], int]:
    """k-NN of every vector (itself included), plus longer lists for rows cut off above threshold.

    Returns (D, I, overrides, requeried): D/I are (N, k+1); `overrides[row]` replaces a row's
    list when it had to be searched again with a larger k.
    """
    n = len(vectors)
    kk = min(k + 1, n)
    dist = np.empty((n, kk), dtype=np.float32)
    ids = np.empty((n, kk), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        dist[start:stop], ids[start:stop] = index.search(vectors[start:stop], kk)
        if on_progress:
            on_progress(stop - start)
    overrides: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    cut = threshold - SIM_EPS
    rows = (
        np.flatnonzero((dist[:, -1] >= cut) & (ids[:, -1] >= 0)) if kk < n else np.array([], dtype=np.int64)
    )
    requeried = int(len(rows))
    width = kk
    while len(rows):
        width = min(n, width * 2)
        d2, i2 = index.search(vectors[rows], width)
        still = (d2[:, -1] >= cut) & (i2[:, -1] >= 0) & (width < n)
        for r, d_row, i_row, again in zip(rows, d2, i2, still, strict=True):
            if not again:
                overrides[int(r)] = (d_row, i_row)
        rows = rows[still]
    return dist, ids, overrides, requeried


def greedy_select(
    dist: np.ndarray,
    ids: np.ndarray,
    overrides: dict[int, tuple[np.ndarray, np.ndarray]],
    rank: np.ndarray,
    threshold: float,
) -> SemanticResult:
    """Keep records in `rank` order (0 = best); drop one only for an already-kept neighbour.

    Only neighbours with a better rank can cause a drop, and they are all decided before the
    record itself is, so one pass in rank order is exact given the neighbour lists.
    """
    n = len(rank)
    cut = threshold - SIM_EPS
    self_ids = np.arange(n)[:, None]
    safe = np.where(ids >= 0, ids, 0)
    candidate = (ids >= 0) & (ids != self_ids) & (dist >= cut) & (rank[safe] < rank[:, None])
    has_candidate = candidate.any(axis=1)

    def row_lists(i: int) -> tuple[np.ndarray, np.ndarray]:
        if i in overrides:
            d_row, i_row = overrides[i]
            ok = (i_row >= 0) & (i_row != i) & (d_row >= cut)
            ok &= rank[np.where(i_row >= 0, i_row, 0)] < rank[i]
            return d_row[ok], i_row[ok]
        return dist[i][candidate[i]], ids[i][candidate[i]]

    for i in overrides:
        has_candidate[i] = len(row_lists(i)[1]) > 0
    sequential = np.flatnonzero(has_candidate)
    sequential = sequential[np.argsort(rank[sequential], kind="stable")]

    keep = np.ones(n, dtype=bool)
    kept_by = np.full(n, -1, dtype=np.int64)
    by_sim = np.zeros(n, dtype=np.float32)
    for i in sequential:
        d_row, i_row = row_lists(int(i))
        alive = keep[i_row]
        if alive.any():
            best = int(np.argmax(np.where(alive, d_row, -np.inf)))
            keep[i] = False
            kept_by[i] = i_row[best]
            by_sim[i] = d_row[best]

    # Nearest kept neighbour of each kept record (for the report's similarity histogram).
    kept_nb = (ids >= 0) & (ids != self_ids) & keep[safe]
    masked = np.where(kept_nb, dist, -np.inf)
    max_sim = masked.max(axis=1) if masked.shape[1] else np.full(n, -np.inf, dtype=np.float32)
    for i, (d_row, i_row) in overrides.items():
        ok = (i_row >= 0) & (i_row != i)
        ok &= keep[np.where(i_row >= 0, i_row, 0)]
        max_sim[i] = d_row[ok].max() if ok.any() else -np.inf
    max_sim = np.where(np.isfinite(max_sim), max_sim, np.nan).astype(np.float32)
    max_sim[~keep] = by_sim[~keep]
    return SemanticResult(keep=keep, kept_by=kept_by, by_sim=by_sim, max_sim=max_sim)


def semantic_dedup(
    vectors: np.ndarray,
    rank: np.ndarray | None = None,
    threshold: float = 0.9,
    k: int = 32,
    ivf_threshold: int = 50_000,
    nlist: int | None = None,
    nprobe: int = 8,
    train_size: int | None = None,
    seed: int = 0,
    probe_margin: float = 0.05,
    on_progress: Callable[[int], None] | None = None,
) -> SemanticResult:
    """Greedy near-duplicate removal over L2-normalised `vectors` (rank 0 = keep first).

    Up to `ivf_threshold` vectors: exact k-NN search (FAISS flat). Above: k-means cells and a
    self-join of each vector with the members of its `nprobe` nearest cells (`cell_join`).
    """
    from datagen.embed import normalize_rows

    vectors = np.asarray(vectors)
    norms = np.linalg.norm(vectors, axis=1) if len(vectors) else np.ones(0)
    ready = vectors.dtype == np.float32 and vectors.flags.c_contiguous and np.allclose(norms, 1.0, atol=1e-4)
    if not ready:  # already-normalised float32 (embed_texts output) is used as is: no 1.5 GB copy at 1M
        vectors = normalize_rows(vectors)
    n = len(vectors)
    rank = np.arange(n) if rank is None else np.asarray(rank)
    if n == 0:
        empty = np.zeros(0, dtype=np.float32)
        return SemanticResult(np.zeros(0, bool), np.zeros(0, np.int64), empty, empty, {"index": "none"})
    started = time.perf_counter()
    if n <= ivf_threshold:
        index = build_index(vectors)
        built = time.perf_counter()
        dist, ids, overrides, requeried = search_neighbours(
            index, vectors, k, threshold, on_progress=on_progress
        )
        searched = time.perf_counter()
        result = greedy_select(dist, ids, overrides, rank, threshold)
        info: dict[str, Any] = {"index": "flat", "k": k, "requeried_rows": requeried}
    else:
        coarse, info = assign_cells(vectors, nlist, nprobe, train_size, seed, probe_margin)
        built = time.perf_counter()
        join = cell_join(vectors, coarse, info["nlist"], threshold, on_progress=on_progress)
        searched = time.perf_counter()
        result = greedy_pairs(join, rank)
        info["pairs"] = int(len(join.pair_i))
    done = time.perf_counter()
    result.stats = {
        **info,
        "index_seconds": round(built - started, 3),
        "search_seconds": round(searched - built, 3),
        "greedy_seconds": round(done - searched, 3),
    }
    return result


# ---------------------------------------------------------------------------------------------
# the stage


def run(records: list[Record], ctx: StageContext, config: DedupConfig) -> StageResult:
    """Exact then near-duplicate removal; kept records stay in input order."""
    from datagen.embed import record_text

    n = len(records)
    texts = [record_text(r, config.embed_field) for r in records]
    order = priority_order(records, config.priority_scores)
    drop_reason: dict[int, str] = {}
    kept_of: dict[int, int] = {}  # dropped index -> kept index
    sim_of: dict[int, float] = {}
    max_sim: dict[int, float] = {}
    stats: dict[str, Any] = {"input": n, "threshold": config.threshold, "embed_field": config.embed_field}

    if config.exact:
        first: dict[str, int] = {}
        for i in order:
            norm = normalize_text(texts[i])
            if norm in first:
                drop_reason[i] = "exact_duplicate"
                kept_of[i], sim_of[i], max_sim[i] = first[norm], 1.0, 1.0
            else:
                first[norm] = i
    survivors = [i for i in order if i not in drop_reason]  # still in priority order
    stats["exact_duplicates"] = len(drop_reason)

    near = 0
    if config.semantic and len(survivors) > 1:
        started = time.perf_counter()
        vectors = ctx.embed_texts(
            [texts[i] for i in survivors],
            model=config.embedder,
            batch_size=config.batch_size,
            progress=ctx.progress,
        )
        stats["embed_seconds"] = round(time.perf_counter() - started, 3)
        with ctx.bar(len(survivors), "dedup search", unit="rec") as bar:
            result = semantic_dedup(
                vectors,
                rank=np.arange(len(survivors)),
                threshold=config.threshold,
                k=config.k,
                ivf_threshold=config.ivf_threshold,
                nlist=config.nlist,
                nprobe=config.nprobe,
                train_size=config.train_size,
                seed=ctx.seed,
                probe_margin=config.probe_margin,
                on_progress=bar.update,
            )
            near = int((~result.keep).sum())
            bar.set_postfix(kept=len(survivors) - near, dropped=near + len(drop_reason))
        stats.update(result.stats)
        for pos, i in enumerate(survivors):
            if not np.isnan(result.max_sim[pos]):
                max_sim[i] = float(result.max_sim[pos])
            if not result.keep[pos]:
                drop_reason[i] = "near_duplicate"
                kept_of[i] = survivors[int(result.kept_by[pos])]
                sim_of[i] = float(result.by_sim[pos])
    stats["near_duplicates"] = near

    # An exact duplicate's representative may itself have gone as a near duplicate: point the
    # exact duplicate at the record that was finally kept (similarity: its twin's, as it was
    # never embedded), so every kept_id names a kept record; `via` names the twin.
    via: dict[int, int] = {}
    for i, reason in drop_reason.items():
        if reason == "exact_duplicate" and drop_reason.get(kept_of[i]) == "near_duplicate":
            rep = kept_of[i]
            via[i] = rep
            kept_of[i], sim_of[i] = kept_of[rep], sim_of[rep]

    kept: list[Record] = []
    gone: list[Record] = []
    for i, rec in enumerate(records):
        if i in drop_reason:
            detail: dict[str, Any] = {"kept_id": records[kept_of[i]].id, "similarity": round(sim_of[i], 4)}
            if i in via:
                detail["via"] = records[via[i]].id
            out = dropped(rec, drop_reason[i], **detail)
            out.meta.scores["max_sim"] = round(sim_of[i], 4)
            gone.append(out)
        else:
            out = rec.model_copy(deep=True)
            if i in max_sim:
                out.meta.scores["max_sim"] = round(max_sim[i], 4)
            kept.append(out)
    stats["kept"] = len(kept)
    return StageResult(kept=kept, dropped=gone, stats=stats)


# ---------------------------------------------------------------------------------------------
# CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from datagen.cli_config import add_stage_command

    add_stage_command(
        subparsers, "dedup", DedupConfig, run,
        help="drop exact and near-duplicate records (embeddings + FAISS)",
        description=(
            "Exact duplicates (case, spacing and sentence punctuation ignored; numbers kept), then near\n"
            "duplicates by cosine similarity of embeddings (a static model distilled from the bundled\n"
            "all-MiniLM-L6-v2 by default). Of each duplicate pair the record with the higher judge score,\n"
            "else the longer answer, is kept; each dropped record names the kept one."
        ),
        aliases={"embedder": ["--model"], "embed_field": ["--field"]},
        with_llm=False,
    )
