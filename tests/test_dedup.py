"""Dedup: exact normalisation, greedy keep order, threshold edges, k-NN cut-off, IVF, real model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from datagen.context import StageContext
from datagen.near_dup import greedy_select, search_neighbours
from datagen.records import Record, RecordMeta
from datagen.stages.dedup import DedupConfig, normalize_text, priority_order, run, semantic_dedup


def rec(i: int, instruction: str, output: str = "answer", score: float | None = None) -> Record:
    meta = RecordMeta(scores={"quality_judge": score} if score is not None else {})
    return Record(id=f"r{i}", instruction=instruction, output=output, meta=meta)


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return (a / np.linalg.norm(a)).astype(np.float32)


def reference_greedy(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """The definition, O(N^2): walk in order, keep unless an already-kept vector is >= threshold."""
    sims = vectors @ vectors.T
    keep = np.zeros(len(vectors), dtype=bool)
    for i in range(len(vectors)):
        keep[i] = not np.any(sims[i, keep] >= threshold - 1e-6)
    return keep


def clustered(n: int, dim: int = 32, dups: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random clustered vectors with `dups` planted near copies; returns (vectors, pairs)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((8, dim))
    base = centers[rng.integers(0, 8, n - dups)] + rng.standard_normal((n - dups, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    src = rng.choice(n - dups, dups, replace=False)
    copies = base[src] + 0.05 * rng.standard_normal((dups, dim))
    copies /= np.linalg.norm(copies, axis=1, keepdims=True)
    vectors = np.vstack([base, copies]).astype(np.float32)
    pairs = np.stack([src, np.arange(n - dups, n)], axis=1)
    return vectors, pairs


# --------------------------------------------------------------------------------- exact


def test_normalize_text_ignores_case_spacing_and_punctuation():
    assert normalize_text("Hello,  World!") == normalize_text("hello world")
    assert normalize_text("  What’s\tthe\n\ntime?? ") == "what's the time"
    assert normalize_text("STRASSE") == normalize_text("straße")
    assert normalize_text("ﬁle") == "file"  # NFKC ligature
    assert normalize_text("hello world") != normalize_text("hello, word")


@pytest.mark.parametrize(
    "a, b",
    [
        ("Compute 3.5 times 2.", "Compute 35 times 2."),
        ("Add -5 to the total.", "Add 5 to the total."),
        ("Round .5 up", "Round 5 up"),
        ("Increase it by 50%.", "Increase it by 50."),
        ("Write it in C#", "Write it in C"),
        ("Sort 1,000 rows", "Sort 1000 rows"),
        ("Is e-mail allowed?", "Is email allowed?"),
    ],
)
def test_normalize_text_keeps_numbers_and_word_internal_marks(a, b):
    # Stripping every punctuation mark made these collide, and exact dedup dropped one as an
    # identical task although they ask different things.
    assert normalize_text(a) != normalize_text(b)


def test_normalize_text_drops_sentence_punctuation_around_words():
    assert normalize_text("“What is 3.5 — squared?”") == normalize_text("what is 3.5 squared")
    assert normalize_text("Costs 5.") == normalize_text("costs 5")
    assert normalize_text("(Hello) WORLD...") == normalize_text("hello world")


def test_exact_dedup_keeps_records_that_differ_in_a_number():
    records = [rec(0, "Convert 3.5 km to miles."), rec(1, "Convert 35 km to miles."), rec(2, "convert 35 KM to miles")]
    result = run(records, StageContext(progress=False), DedupConfig(semantic=False))
    assert [r.id for r in result.kept] == ["r0", "r1"]
    assert result.dropped[0].meta.drop_detail["kept_id"] == "r1"


def test_exact_dedup_keeps_best_and_names_it():
    records = [
        rec(0, "Name three colours.", output="red"),
        rec(1, "name three colours", output="red, green and blue"),  # longest answer wins
        rec(2, "NAME   three colours!!", output="red green"),
        rec(3, "Name three animals.", output="cat"),
    ]
    result = run(records, StageContext(progress=False), DedupConfig(semantic=False))
    assert [r.id for r in result.kept] == ["r1", "r3"]  # input order preserved
    assert sorted(r.id for r in result.dropped) == ["r0", "r2"]
    for r in result.dropped:
        assert r.meta.drop_reason == "exact_duplicate"
        assert r.meta.drop_detail == {"kept_id": "r1", "similarity": 1.0}
    assert result.stats["exact_duplicates"] == 2


def test_priority_judge_score_then_length_then_order():
    records = [
        rec(0, "a", output="short"),
        rec(1, "b", output="a much longer answer"),
        rec(2, "c", output="x", score=4.0),
        rec(3, "d", output="y", score=5.0),
        rec(4, "e", output="a much longer answer"),
    ]
    assert priority_order(records) == [3, 2, 1, 4, 0]
    # Exact duplicates: the judged record wins over a longer unjudged one.
    dup = [rec(0, "Same task", output="long long long answer"), rec(1, "same task.", output="ok", score=4.5)]
    result = run(dup, StageContext(progress=False), DedupConfig(semantic=False))
    assert [r.id for r in result.kept] == ["r1"]
    assert result.dropped[0].meta.drop_detail["kept_id"] == "r1"


# --------------------------------------------------------------------------------- semantic core


def test_threshold_is_inclusive_at_the_edge():
    # cos(a, b) = 0.75 exactly in binary; cos(a, c) just under.
    a, b = unit([1.0, 0.0]), unit([0.75, math.sqrt(1 - 0.75**2)])
    c = unit([0.7499, math.sqrt(1 - 0.7499**2)])
    at_edge = semantic_dedup(np.stack([a, b]), threshold=0.75)
    assert at_edge.keep.tolist() == [True, False]
    assert at_edge.kept_by[1] == 0
    assert at_edge.by_sim[1] == pytest.approx(0.75, abs=1e-6)
    below = semantic_dedup(np.stack([a, c]), threshold=0.75)
    assert below.keep.tolist() == [True, True]


def test_never_both_of_a_pair_and_only_kept_neighbours_drop():
    # A~B and B~C are duplicates, A~C is not. Priority A, B, C: B goes (for A), and C stays
    # because its only duplicate, B, was not kept.
    a = unit([1.0, 0.0, 0.0])
    b = unit([0.95, math.sqrt(1 - 0.95**2), 0.0])
    ang = 2 * math.acos(0.95)
    c = unit([math.cos(ang), math.sin(ang), 0.0])
    assert float(a @ c) < 0.9
    result = semantic_dedup(np.stack([a, b, c]), threshold=0.9)
    assert result.keep.tolist() == [True, False, True]
    # Reverse the priority: B first, so A and C both go for B.
    result = semantic_dedup(np.stack([a, b, c]), rank=np.array([1, 0, 2]), threshold=0.9)
    assert result.keep.tolist() == [False, True, False]
    assert result.kept_by.tolist() == [1, -1, 1]


def test_rank_decides_which_of_a_pair_survives():
    a, b = unit([1.0, 0.0]), unit([0.99, math.sqrt(1 - 0.99**2)])
    assert semantic_dedup(np.stack([a, b]), rank=np.array([1, 0])).keep.tolist() == [False, True]
    assert semantic_dedup(np.stack([a, b]), rank=np.array([0, 1])).keep.tolist() == [True, False]


def test_matches_brute_force_greedy_on_random_data():
    vectors, pairs = clustered(400, dups=60)
    for threshold in (0.6, 0.8, 0.95):
        ours = semantic_dedup(vectors, threshold=threshold, k=8)
        ref = reference_greedy(vectors, threshold)
        assert ours.keep.tolist() == ref.tolist()
        gone = np.flatnonzero(~ours.keep)
        assert ours.keep[ours.kept_by[gone]].all()  # every drop names a kept record
        sims = (vectors[gone] * vectors[ours.kept_by[gone]]).sum(1)
        assert np.all(sims >= threshold - 1e-5)
        assert np.allclose(sims, ours.by_sim[gone], atol=1e-5)
    planted_sims = (vectors[pairs[:, 0]] * vectors[pairs[:, 1]]).sum(1)
    assert planted_sims.min() > 0.9
    high = semantic_dedup(vectors, threshold=0.9)
    assert all(not (high.keep[i] and high.keep[j]) for i, j in pairs)  # every planted pair caught


def test_more_duplicates_than_k_are_requeried():
    # One record, then 30 near-identical copies of each other that are a bit further from it:
    # with k=4 a copy's 4 nearest are other copies, and the kept record is out of its list.
    rng = np.random.default_rng(1)
    anchor = unit([1.0] + [0.0] * 15)
    core = unit([0.93, 0.3676] + [0.0] * 14)
    copies = core + 0.002 * rng.standard_normal((30, 16)).astype(np.float32)
    vectors = np.vstack([anchor, copies]).astype(np.float32)
    assert 0.9 < float(vectors[1] @ anchor) < 0.95
    dist, ids, overrides, requeried = search_neighbours(*_flat(vectors), k=4, threshold=0.9)
    assert requeried > 0 and overrides
    result = semantic_dedup(vectors, threshold=0.9, k=4)
    assert result.keep.tolist() == [True] + [False] * 30
    assert set(result.kept_by[1:].tolist()) == {0}
    # Without the re-query the first copy would wrongly survive next to the anchor.
    naive = greedy_select(dist, ids, {}, np.arange(len(vectors)), 0.9)
    assert naive.keep[:2].tolist() == [True, True]


def _flat(vectors: np.ndarray):
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    return index, vectors


def test_ivf_path_above_ivf_threshold():
    vectors, pairs = clustered(600, dups=50, seed=3)
    ivf = semantic_dedup(vectors, threshold=0.9, ivf_threshold=100, nprobe=4)
    assert ivf.stats["index"] == "ivf"
    assert ivf.stats["nlist"] == round(math.sqrt(2 * 600))
    flat = semantic_dedup(vectors, threshold=0.9, ivf_threshold=10_000)
    assert flat.stats["index"] == "flat"
    caught = [not (ivf.keep[i] and ivf.keep[j]) for i, j in pairs]
    assert sum(caught) >= 0.95 * len(pairs)
    gone = np.flatnonzero(~ivf.keep)
    assert ivf.keep[ivf.kept_by[gone]].all()
    # IVF with every cell probed is exact.
    full = semantic_dedup(vectors, threshold=0.9, ivf_threshold=100, nlist=8, nprobe=8, probe_margin=2.0)
    assert full.keep.tolist() == flat.keep.tolist()


def test_cell_join_with_every_cell_probed_is_the_exact_greedy():
    """The join compares a vector with every member of its probed cells: probing all cells
    must give exactly the O(N^2) definition, for any priority order."""
    vectors, _ = clustered(500, dups=60, seed=11)
    rank = np.random.default_rng(2).permutation(500)
    ivf = semantic_dedup(vectors, rank=rank, threshold=0.9, ivf_threshold=10, nlist=6, nprobe=6, probe_margin=2.0)
    assert ivf.stats["index"] == "ivf" and ivf.stats["mean_probes"] == 6
    order = np.argsort(rank)
    expected = np.empty(500, dtype=bool)
    expected[order] = reference_greedy(vectors[order], 0.9)
    assert ivf.keep.tolist() == expected.tolist()
    sims = vectors @ vectors.T
    gone = np.flatnonzero(~ivf.keep)
    assert ivf.keep[ivf.kept_by[gone]].all()
    assert np.all(rank[ivf.kept_by[gone]] < rank[gone])
    assert np.allclose(ivf.by_sim[gone], sims[gone, ivf.kept_by[gone]], atol=1e-5)
    # A kept record's max_sim is its nearest neighbour's similarity when that one was kept,
    # NaN when it was not (its nearest kept neighbour is then unknown).
    np.fill_diagonal(sims, -np.inf)
    for i in np.flatnonzero(ivf.keep):
        nearest = int(np.argmax(sims[i]))
        if ivf.keep[nearest]:
            assert ivf.max_sim[i] == pytest.approx(sims[i, nearest], abs=1e-5)
        else:
            assert np.isnan(ivf.max_sim[i])


def test_probe_margin_skips_far_cells():
    vectors, pairs = clustered(800, dups=60, seed=4)
    tight = semantic_dedup(vectors, threshold=0.9, ivf_threshold=10, nlist=16, nprobe=8, probe_margin=0.0)
    loose = semantic_dedup(vectors, threshold=0.9, ivf_threshold=10, nlist=16, nprobe=8, probe_margin=2.0)
    assert tight.stats["mean_probes"] < 1.05 and loose.stats["mean_probes"] == 8
    exact = semantic_dedup(vectors, threshold=0.9, ivf_threshold=10_000)
    assert loose.keep.tolist() == exact.keep.tolist()  # 8 of 16 cells: every planted pair still found
    assert sum(not (tight.keep[i] and tight.keep[j]) for i, j in pairs) >= 0.9 * len(pairs)


def test_max_sim_recorded_for_kept_and_dropped():
    vectors, _ = clustered(200, dups=20, seed=5)
    result = semantic_dedup(vectors, threshold=0.9)
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1)
    kept = np.flatnonzero(result.keep)
    for i in kept[:50]:
        expected = sims[i, kept].max()
        assert result.max_sim[i] == pytest.approx(expected, abs=1e-5)
        assert result.max_sim[i] < 0.9
    assert np.all(result.max_sim[~result.keep] >= 0.9 - 1e-6)


# --------------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def planted() -> list[Record]:
    texts = [
        "Write a short poem about the ocean.",
        "Explain how photosynthesis works in plants.",
        "List three prime numbers greater than ten.",
        "Translate 'good morning' into Spanish.",
        "Summarize the causes of the French Revolution.",
        "Write a Python function that reverses a string.",
        "Write a short poem about the ocean!",  # near dup of 0 (punctuation: also an exact dup)
        "Write a brief poem about the ocean.",  # paraphrase of 0
        "List three prime numbers larger than ten.",  # paraphrase of 2
        "Write a Python function which reverses a string.",  # paraphrase of 5
        "Give me a recipe for pancakes.",
        "What is the capital city of Australia?",
        "Translate 'good night' into Spanish.",  # close to 3 (cosine ~0.84) but a different task
    ]
    records = [rec(i, t, output=f"answer {i}") for i, t in enumerate(texts)]
    records[7].meta.scores["quality_judge"] = 5.0  # the paraphrase is the best-rated: it must win
    return records


@pytest.mark.slow
@pytest.mark.parametrize(
    "embedder, false_drops",
    [
        ("minilm", set()),
        # The static model averages token vectors: "good morning" / "good night" differ in one
        # content word and score 0.93 (MiniLM: 0.84), so r3 goes for r12. The price of ~200x
        # speed, measured on real text in bench/dedup.py (precision 0.94 vs 0.98 at 0.9).
        ("static", {"r3"}),
    ],
)
def test_real_model_finds_planted_duplicates(planted, tmp_path, embedder, false_drops):
    config = DedupConfig(embedder=embedder)
    result = run(planted, StageContext(progress=False), config)
    kept_ids = {r.id for r in result.kept}
    gone = {r.id: r for r in result.dropped}
    # r0/r6 go for r7 (best judge score); r8 and r9 for the earlier r2 and r5 (equal priority).
    assert set(gone) == {"r0", "r6", "r8", "r9"} | false_drops
    assert gone["r8"].meta.drop_detail["kept_id"] == "r2" and gone["r9"].meta.drop_detail["kept_id"] == "r5"
    assert "r7" in kept_ids  # judge score wins over input order
    assert gone["r0"].meta.drop_detail["kept_id"] == "r7"
    assert gone["r6"].meta.drop_reason == "exact_duplicate" or gone["r6"].meta.drop_detail["kept_id"] == "r7"
    for r in result.dropped:
        assert r.meta.drop_detail["kept_id"] in kept_ids
        assert r.meta.drop_detail["similarity"] >= 0.9
        assert r.meta.scores["max_sim"] >= 0.9
    for r in result.kept:
        assert r.meta.scores["max_sim"] < 0.9
    # Different tasks all survive.
    assert {"r1", "r3", "r4", "r10", "r11", "r12"} - false_drops <= kept_ids

    # IVF with every cell probed gives the same answer on the same texts.
    every_cell = {"ivf_threshold": 4, "nlist": 2, "nprobe": 2, "probe_margin": 2.0}
    ivf = run(planted, StageContext(progress=False), config.model_copy(update=every_cell))
    assert ivf.stats["index"] == "ivf"
    assert [r.id for r in ivf.kept] == [r.id for r in result.kept]

    # The CLI end to end (the model is already loaded in this process).
    from datagen.cli import main
    from datagen.io import read_records, write_records

    src, out, drop = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "dropped.jsonl"
    write_records(planted, src)
    code = main(
        [
            "dedup",
            "--input",
            str(src),
            "--threshold",
            "0.9",
            "--embedder",
            embedder,
            "--out",
            str(out),
            "--dropped",
            str(drop),
            "--no-progress",
        ]
    )
    assert code == 0
    assert [r.id for r in read_records(out)] == [r.id for r in result.kept]
    rows = [json.loads(line) for line in drop.read_text().splitlines()]
    assert {row["meta"]["drop_reason"] for row in rows} <= {"exact_duplicate", "near_duplicate"}


@pytest.mark.slow
def test_embed_texts_normalised_float32():
    from datagen.embed import embed_texts, record_text

    vectors = embed_texts(["one", "two three", ""], model="minilm", progress=False)
    assert vectors.dtype == np.float32 and vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embed_texts([], model="minilm", progress=False).shape == (0, 384)
    r = Record(id="x", instruction="Do it", input="data", output="done")
    assert record_text(r, "instruction") == "Do it"
    assert record_text(r, "instruction_input") == "Do it\n\ndata"
    assert record_text(r, "all") == "Do it\n\ndata\n\ndone"


def test_dialogues_compare_by_first_user_turn_or_whole_dialogue():
    from datagen.records import Message

    def chat(i: int, follow_up: str) -> Record:
        msgs = [Message(role="user", content="Plan a trip to Kyoto."), Message(role="assistant", content="Day 1: temples."),
                Message(role="user", content=follow_up), Message(role="assistant", content=f"Sure: {follow_up}")]
        return Record(id=f"c{i}", instruction="Plan a trip to Kyoto.", output="Day 1: temples.", messages=msgs)

    records = [chat(0, "Make it cheaper."), chat(1, "Add a day in Nara."), chat(2, "make it cheaper")]
    opening = run(records, StageContext(progress=False), DedupConfig(semantic=False))
    assert [r.id for r in opening.kept] == ["c0"]  # same first user turn: one dialogue per opening
    whole = run(records, StageContext(progress=False), DedupConfig(semantic=False, embed_field="all"))
    assert [r.id for r in whole.kept] == ["c0", "c1"]  # every turn compared: only c2 repeats c0
    assert whole.dropped[0].meta.drop_detail["kept_id"] == "c0"
