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
import re
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
    model: str | None = Field(
        None, description="sentence-transformers model path or hub id (None = bundled all-MiniLM-L6-v2)"
    )
    batch_size: int = Field(64, ge=1, description="embedding batch size")
    exact: bool = Field(
        True, description="drop exact duplicates (casefolded, punctuation and spacing ignored)"
    )
    semantic: bool = Field(True, description="drop near duplicates by embedding similarity")
    ivf_threshold: int = Field(
        50_000,
        ge=2,
        description="above this many records use an IVF index (approximate) instead of exact search",
    )
    nlist: int | None = Field(None, ge=1, description="IVF cells (None = 4 * sqrt(N))")
    nprobe: int = Field(8, ge=1, description="IVF cells searched per query: higher = better recall, slower")
    train_size: int | None = Field(
        None, ge=1, description="vectors sampled to train the IVF index (None = 32 per cell, at most N)"
    )
    k: int = Field(
        32,
        ge=1,
        description="neighbours per search; rows whose k-th neighbour is still a duplicate are re-searched",
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


_SPACE = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Casefolded, punctuation removed, whitespace collapsed: `Hello,  World!` == `hello world`."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return _SPACE.sub(" ", text).strip()


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


def build_index(
    vectors: np.ndarray,
    ivf_threshold: int = 50_000,
    nlist: int | None = None,
    nprobe: int = 8,
    train_size: int | None = None,
    seed: int = 0,
    chunk: int = 65_536,
) -> tuple[Any, dict[str, Any], tuple[np.ndarray, np.ndarray] | None]:
    """A FAISS inner-product index holding `vectors`: flat (exact) up to `ivf_threshold`, IVF above.

    For IVF also returns each vector's `nprobe` nearest cells (Dq, Iq): the vectors are both
    the database and the queries, so the coarse assignment (half the IVF cost at 1M) is
    computed once and reused for adding and for searching.
    """
    import faiss

    n, dim = vectors.shape
    if n <= ivf_threshold:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return index, {"index": "flat"}, None
    cells = min(n, nlist or max(1, int(round(4 * math.sqrt(n)))))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, cells, faiss.METRIC_INNER_PRODUCT)
    wanted = min(n, train_size or 32 * cells)
    rng = np.random.default_rng(seed)
    sample = vectors if wanted >= n else vectors[np.sort(rng.choice(n, wanted, replace=False))]
    index.cp.seed = seed
    index.cp.niter = 10  # coarse cells only need to be roughly right; k-means cost is linear in iterations
    # We chose the sample size (cost of k-means ~ sample * cells); do not let FAISS resample or warn.
    index.cp.max_points_per_centroid = max(1, -(-len(sample) // cells))
    index.cp.min_points_per_centroid = max(1, min(39, len(sample) // cells))
    index.train(sample)
    index.nprobe = min(nprobe, cells)
    coarse_d = np.empty((n, index.nprobe), dtype=np.float32)
    coarse_i = np.empty((n, index.nprobe), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        coarse_d[start:stop], coarse_i[start:stop] = index.quantizer.search(vectors[start:stop], index.nprobe)
    first = np.ascontiguousarray(coarse_i[:, 0])
    index.add_core(n, faiss.swig_ptr(vectors), None, faiss.swig_ptr(first))
    info = {"index": "ivf", "nlist": cells, "nprobe": index.nprobe, "train_size": int(len(sample))}
    return index, info, (coarse_d, coarse_i)


def search_neighbours(
    index: Any,
    vectors: np.ndarray,
    k: int,
    threshold: float,
    coarse: tuple[np.ndarray, np.ndarray] | None = None,
    chunk: int = 16_384,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[np.ndarray, np.ndarray]], int]:
    """k-NN of every vector (itself included), plus longer lists for rows cut off above threshold.

    Returns (D, I, overrides, requeried): D/I are (N, k+1); `overrides[row]` replaces a row's
    list when it had to be searched again with a larger k. `coarse` is the IVF cell
    assignment from `build_index`, reused instead of recomputed.
    """
    n = len(vectors)
    kk = min(k + 1, n)
    dist = np.empty((n, kk), dtype=np.float32)
    ids = np.empty((n, kk), dtype=np.int64)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        if coarse is None:
            dist[start:stop], ids[start:stop] = index.search(vectors[start:stop], kk)
        else:
            dist[start:stop], ids[start:stop] = index.search_preassigned(
                vectors[start:stop], kk, coarse[1][start:stop], coarse[0][start:stop]
            )
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
    on_progress: Callable[[int], None] | None = None,
) -> SemanticResult:
    """Greedy near-duplicate removal over L2-normalised `vectors` (rank 0 = keep first)."""
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
    index, info, coarse = build_index(vectors, ivf_threshold, nlist, nprobe, train_size, seed)
    built = time.perf_counter()
    dist, ids, overrides, requeried = search_neighbours(
        index, vectors, k, threshold, coarse=coarse, on_progress=on_progress
    )
    searched = time.perf_counter()
    result = greedy_select(dist, ids, overrides, rank, threshold)
    done = time.perf_counter()
    result.stats = {
        **info,
        "k": k,
        "requeried_rows": requeried,
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
            model=config.model,
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
    from datagen.cli_common import add_io_args

    parser = subparsers.add_parser(
        "dedup",
        help="drop exact and near-duplicate records (embeddings + FAISS)",
        description=(
            "Exact duplicates (case, spacing and punctuation ignored), then near duplicates by cosine "
            "similarity of sentence embeddings (bundled all-MiniLM-L6-v2 by default). Of each duplicate "
            "pair the record with "
            "the higher judge score, else the longer answer, is kept; each dropped record names the kept one."
        ),
    )
    add_io_args(parser)
    defaults = DedupConfig()
    parser.add_argument(
        "--threshold",
        type=float,
        default=defaults.threshold,
        help=f"cosine similarity counted as duplicate (default {defaults.threshold})",
    )
    parser.add_argument(
        "--model", default=None, help="sentence-transformers model path or hub id (default: bundled)"
    )
    parser.add_argument(
        "--field",
        default=defaults.embed_field,
        choices=["instruction", "instruction_input", "all"],
        help=f"text compared (default {defaults.embed_field})",
    )
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="embedding batch size")
    parser.add_argument(
        "--k", type=int, default=defaults.k, help=f"neighbours per search (default {defaults.k})"
    )
    parser.add_argument(
        "--ivf-threshold",
        type=int,
        default=defaults.ivf_threshold,
        help=f"records above which an IVF index is used (default {defaults.ivf_threshold})",
    )
    parser.add_argument(
        "--nprobe", type=int, default=defaults.nprobe, help=f"IVF cells probed (default {defaults.nprobe})"
    )
    parser.add_argument("--no-exact", action="store_true", help="skip exact-duplicate removal")
    parser.add_argument("--no-semantic", action="store_true", help="skip embedding similarity (exact only)")
    parser.add_argument("--seed", type=int, default=0, help="seed for IVF training sample (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    from datagen.cli_common import read_input, write_result

    config = DedupConfig(
        threshold=args.threshold,
        embed_field=args.field,
        model=args.model,
        batch_size=args.batch_size,
        k=args.k,
        ivf_threshold=args.ivf_threshold,
        nprobe=args.nprobe,
        exact=not args.no_exact,
        semantic=not args.no_semantic,
    )
    ctx = StageContext(seed=args.seed, progress=not args.no_progress)
    records = read_input(args.input)
    result = run(records, ctx, config)
    write_result(result, args)
    return 0
