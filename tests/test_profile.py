"""Dataset profile numbers on inputs whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.profile import distinct_n, embedding_spread, leading_verb, profile_records, rouge_to_seeds
from datagen.records import Record, RecordMeta


def test_distinct_n():
    assert distinct_n(["a b a b"], 1) == 0.5  # 2 unique of 4
    assert distinct_n(["a b a b"], 2) == 0.6667  # (a b), (b a), (a b)
    assert distinct_n(["A, b!", "a b"], 2) == 0.5  # case and punctuation ignored
    assert distinct_n([""], 2) == 0.0


def test_leading_verb_skips_politeness():
    assert leading_verb("Please write a poem.") == "write"
    assert leading_verb("Can you explain gravity?") == "explain"
    assert leading_verb("What is love?") == "what"
    assert leading_verb("") == ""


def test_rouge_to_nearest_seed():
    seeds = ["write a poem about the sea", "explain how rain forms"]
    scores = rouge_to_seeds(["write a poem about the sea", "explain how snow forms", "bake bread"], seeds)
    assert scores[0] == 1.0 and scores[1] == 0.75 and scores[2] == 0.0  # 3 of 4 words in order
    assert rouge_to_seeds(["x"], []) == []


def test_embedding_spread():
    orthogonal = np.eye(4, dtype=np.float32)
    assert embedding_spread(orthogonal) == {"mean_pairwise_cosine": 0.0, "clusters": 4, "cluster_threshold": 0.6}
    same = np.tile(np.array([[0.6, 0.8]], dtype=np.float32), (5, 1))
    spread = embedding_spread(same)
    assert spread["mean_pairwise_cosine"] == pytest.approx(1.0) and spread["clusters"] == 1
    two_groups = np.array([[1, 0], [0.99, 0.141], [0, 1], [0.141, 0.99]], dtype=np.float32)
    assert embedding_spread(two_groups / np.linalg.norm(two_groups, axis=1, keepdims=True))["clusters"] == 2


def test_profile_records_without_embeddings():
    records = [Record(id=f"r{i}", instruction=t, output=o, meta=RecordMeta(scores={"judge": s, "max_sim": 0.1}))
               for i, (t, o, s) in enumerate([("Write a poem.", "Roses are red.", 8), ("Please write a song.", "La la.", 6),
                                              ("Explain tides.", "The moon pulls the sea.", 9)])]
    profile = profile_records(records, seeds=["Write a poem."], embed=False)
    assert profile["records"] == 3 and profile["leading_verbs"] == {"write": 2, "explain": 1}
    assert profile["rouge_l_to_seed"][0] == 1.0
    assert profile["scores"] == {"judge": [8.0, 6.0, 9.0]}  # similarity scores are not quality scores
    assert profile["answer_words"] == [3, 2, 5] and profile["clusters"] is None


def test_dialogues_and_personas_in_the_profile():
    from datagen.profile import persona_diversity
    from datagen.records import Message

    def chat(i: int, persona: str | None, verbs: tuple[str, str]) -> Record:
        msgs = [Message(role="user", content=f"{verbs[0]} topic {i}"), Message(role="assistant", content="a"),
                Message(role="user", content=f"{verbs[1]} more on {i}"), Message(role="assistant", content="b")]
        return Record(id=f"c{i}", instruction=f"{verbs[0]} topic {i}", output="a", messages=msgs,
                      meta=RecordMeta(persona=persona))

    varied = [("Explain", "Compare"), ("Draft", "Shorten"), ("List", "Rank"), ("Plan", "Budget")]
    records = [chat(i, f"p{i}", varied[i]) for i in range(4)] + [chat(10 + i, None, ("Explain", "Explain"))
                                                               for i in range(6)]
    profile = profile_records(records, embed=False)
    assert profile["turns_per_dialogue"] == {"2": 10} and profile["personas"] == 4
    split = persona_diversity(records, embed=False)
    assert split["with_personas"]["records"] == split["without_personas"]["records"] == 4  # same size
    assert split["with_personas"]["distinct_leading_verbs"] == 8
    assert split["without_personas"]["distinct_leading_verbs"] == 1
    assert persona_diversity(records[:4], embed=False) == {}


def test_report_line_for_dialogues():
    from datagen.report import _dialogue_line

    profile = {"turns_per_dialogue": {"2": 3, "3": 5}, "personas": 7,
               "persona_diversity": {"with_personas": {"distinct_leading_verbs": 9, "mean_pairwise_cosine": 0.21},
                                     "without_personas": {"distinct_leading_verbs": 4, "mean_pairwise_cosine": 0.35}}}
    line = _dialogue_line("conversation", profile)
    assert line == ("<p>conversation: 2 turns: 3, 3 turns: 5; 7 distinct personas; with personas: 9 leading verbs, "
                    "mean cosine 0.210; without personas: 4 leading verbs, mean cosine 0.350</p>")
