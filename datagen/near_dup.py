"""Near duplicates among unit vectors: which pairs are at least `threshold` similar, and which
records a greedy pass in priority order keeps.

Greedy keep: a vector is dropped only because an already-KEPT one is at least `threshold`
similar, so of a pair of near duplicates exactly one survives, never neither. Search is an
exact FAISS `IndexFlatIP` for small sets; above `ivf_threshold` it is a cell join (spherical
k-means cells, each cell's members meet every vector probing it in one matrix product), with
probes added only for cells whose centroid is within `probe_margin`, so recall stays at that
of exact search on planted duplicates while 1M vectors take about a minute on 2 cores.
Vectors are L2-normalised, so inner product = cosine. No records here: only arrays.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Cosines are float32: a pair built to sit exactly at the threshold comes back a few ulps
# below it. The threshold is inclusive, so compare with this much slack.
SIM_EPS = 1e-6


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


def greedy_keep(
    n: int, order: np.ndarray, candidates: Callable[[int], tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The greedy pass both search paths share: visit rows in rank order; a row is dropped for
    its most similar candidate (better-ranked, above threshold) that is still kept.
    `candidates(i)` gives (ids, sims). Returns (keep, kept_by, by_sim)."""
    keep = np.ones(n, dtype=bool)
    kept_by = np.full(n, -1, dtype=np.int64)
    by_sim = np.zeros(n, dtype=np.float32)
    for i in order:
        js, ss = candidates(i)
        alive = keep[js]
        if alive.any():
            best = int(np.argmax(np.where(alive, ss, -np.inf)))
            keep[i] = False
            kept_by[i] = js[best]
            by_sim[i] = ss[best]
    return keep, kept_by, by_sim


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
    keep, kept_by, by_sim = greedy_keep(
        n, rows, lambda i: (pj[starts[i] : starts[i + 1]], ps[starts[i] : starts[i + 1]])
    )
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

    def candidates(i: int) -> tuple[np.ndarray, np.ndarray]:
        d_row, i_row = row_lists(int(i))
        return i_row, d_row

    keep, kept_by, by_sim = greedy_keep(n, sequential, candidates)

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
