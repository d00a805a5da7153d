"""End to end with the real embedded model: evolve 2 records one round, then best-of-2 distill.

Tiny token limits keep it around a minute on CPU. SmolLM2-135M rarely follows formats, so the
assertions are mostly about bookkeeping (every attempt accounted for, lineage, candidates,
reasons), not about what the model wrote; but a working backend never fails a request
(`llm_error` is not an accepted reason) and distill keeps at least one answer.
"""

from __future__ import annotations

import pytest

from datagen.context import StageContext
from datagen.records import Record, RecordMeta
from datagen.stages.distill import DistillConfig
from datagen.stages.distill import run as distill
from datagen.stages.evol_instruct import EvolConfig
from datagen.stages.evol_instruct import run as evolve

EVOL_REASONS = {
    "empty_evolution",
    "truncated_evolution",
    "template_leak",
    "copied_parent",
    "no_information_gain",
    "refusal_response",
    "degenerate_response",
}
DISTILL_REASONS = {"no_valid_candidate", "unscored", "below_min_score"}


@pytest.mark.slow
def test_evolve_then_distill_with_local_model(tmp_path):
    from datagen.llm import ResponseCache

    ctx = StageContext(
        llm_spec="local",
        cache=ResponseCache(tmp_path / "cache.sqlite"),
        seed=0,
        progress=False,
        llm_options={"local": {"threads": 1}},
    )
    records = [
        Record(id="s1", instruction="Give three tips for staying healthy.", meta=RecordMeta(source="test")),
        Record(
            id="s2", instruction="Translate to French:", input="Good morning", meta=RecordMeta(source="test")
        ),
    ]
    try:
        evolved = evolve(
            records,
            ctx,
            EvolConfig(rounds=1, max_tokens=64, answer_max_tokens=24, equality_max_tokens=4),
        )
        new = evolved.kept[2:]
        assert evolved.kept[:2] == records
        assert len(new) + len(evolved.dropped) == 2  # every attempt is either kept or has a reason
        assert {d.meta.drop_reason for d in evolved.dropped} <= EVOL_REASONS
        for child in new:
            assert child.meta.parent_id in {"s1", "s2"} and child.meta.round == 1 and child.meta.evol_op
            assert child.instruction.strip() and child.output.strip()
        # Phase 2 (equality check + answer) ran for every rewrite that passed the text rules.
        checked = len(new) + sum(
            d.meta.drop_reason in {"no_information_gain", "refusal_response", "degenerate_response"}
            for d in evolved.dropped
        )
        assert evolved.stats["requests"] == 2 + 2 * checked

        inputs = evolved.kept[:3]
        result = distill(inputs, ctx, DistillConfig(n=2, max_tokens=24, judge_max_tokens=24))
        assert len(result.kept) + len(result.dropped) == len(inputs)
        assert {d.meta.drop_reason for d in result.dropped} <= DISTILL_REASONS
        for out in result.kept + result.dropped:  # the teacher answered every request
            texts = [c["text"] for c in out.meta.candidates]
            assert len(texts) == 2 and any(t.strip() for t in texts)
        for out in result.kept:
            texts = [c["text"] for c in out.meta.candidates]
            assert len(texts) == 2 and out.output == texts[out.meta.best_candidate]
            assert 1 <= out.meta.scores["judge"] <= 10
        # Same seed, same cache: a rerun is identical and makes no new calls.
        calls = ctx.llm().usage.calls
        again = distill(inputs, ctx, DistillConfig(n=2, max_tokens=24, judge_max_tokens=24))
        assert [r.model_dump() for r in again.kept] == [r.model_dump() for r in result.kept]
        assert [r.model_dump() for r in again.dropped] == [r.model_dump() for r in result.dropped]
        assert ctx.llm().usage.calls == calls
        # The tiny judge often returns no grade; allowed an unranked pick, every record gets an
        # answer from the same cached replies.
        lenient = distill(
            inputs, ctx, DistillConfig(n=2, max_tokens=24, judge_max_tokens=24, on_unscored="keep")
        )
        assert [r.id for r in lenient.kept] == [r.id for r in inputs]
        assert all(r.output.strip() for r in lenient.kept)
        assert ctx.llm().usage.calls == calls
    finally:
        ctx.close()
