"""The meta contract between stages (issues 10 and 11).

Stages hand data to later stages through `Record.meta`. A writer and a reader that spell a
key differently once disabled the truncation filter for every pipeline run, silently. Two
checks make that impossible to repeat:
- statically, every `meta.<key>` a stage reads or writes is a declared `RecordMeta` field;
- dynamically, every stage runs in pipeline order on a scripted backend, and each declared
  key a stage reads must have been written by an earlier stage (or be lineage every record
  has), and the truncation signal really flows from distill into quality.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from datagen.records import Record, RecordMeta

STAGES_DIR = Path(__file__).resolve().parent.parent / "datagen" / "stages"
ALLOWED_UNDECLARED = {"model_extra", "model_dump", "model_copy", "model_fields"}


def meta_keys_used(source: str) -> set[str]:
    """Every `<something>.meta.<key>` attribute and every `RecordMeta(key=...)` in a module's source."""
    keys = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "meta":
            keys.add(node.attr)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "RecordMeta":
            keys |= {kw.arg for kw in node.keywords if kw.arg}
    return keys


def undeclared_meta_keys(source: str) -> set[str]:
    return meta_keys_used(source) - set(RecordMeta.model_fields) - ALLOWED_UNDECLARED


WRITERS = sorted([*(f"stages/{p.name}" for p in STAGES_DIR.glob("*.py")), "io.py", "rows.py"])


@pytest.mark.parametrize("module", WRITERS)
def test_every_meta_key_a_stage_uses_is_declared(module: str) -> None:
    assert undeclared_meta_keys((STAGES_DIR.parent / module).read_text()) == set()


def test_the_check_catches_a_mismatched_key() -> None:
    """The bug this contract exists for: a reader asking for `finish_reason`."""
    source = "def check(record):\n    return record.meta.finish_reason == 'length'\n"
    assert undeclared_meta_keys(source) == {"finish_reason"}
    assert undeclared_meta_keys("m = RecordMeta(source='x', finish_reasn='stop')\n") == {"finish_reasn"}


def test_truncation_flows_from_distill_into_quality() -> None:
    """What distill writes is what quality reads: a cut-off winner is dropped as truncated."""
    from datagen.stages.quality import QualityConfig
    from datagen.stages.quality_checks import first_verdict

    record = Record(id="r1", instruction="Explain the water cycle in detail.",
                    output="Water evaporates from the oceans, rises and cools, and then it forms clouds which",
                    meta=RecordMeta(answer_finish_reason="length"))
    verdict = first_verdict(record, QualityConfig(judge=False))
    assert verdict is not None and verdict[0] == "truncated_output"
    assert verdict[1]["signal"] == "finish_reason_length"


@pytest.mark.slow  # dedup loads the bundled embedding model
def test_stages_in_pipeline_order_read_and_write_what_they_declare(openai_server, tmp_path) -> None:
    """Run every registered stage in pipeline order over the scripted loopback server, tracking which
    meta keys each reads (attribute access) and writes (values changed from default): each stage's
    registry declaration must be true, and what it needs must have been written before it."""
    from pipeline_responder import reply

    from datagen.context import StageContext
    from datagen.io import default_seeds_path, read_records
    from datagen.llm import ResponseCache
    from datagen.pipeline_config import READER_WRITES
    from datagen.registry import stages

    openai_server.responder = reply
    reads: dict[str, set[str]] = {}
    current = {"stage": ""}
    original = RecordMeta.__getattribute__
    fields = set(RecordMeta.model_fields)

    def tracking(self, name):  # noqa: ANN001
        if name in fields and current["stage"]:
            reads.setdefault(current["stage"], set()).add(name)
        return original(self, name)

    ctx = StageContext(llm_spec="openai:test", cache=ResponseCache(tmp_path / "c.sqlite"), progress=False,
                       llm_options={"openai": {"base_url": openai_server.base_url}})
    held_out = tmp_path / "held.jsonl"
    held_out.write_text('{"instruction": "Name the largest desert on the planet Mars.", "output": "none"}\n')
    options = {  # small runs that keep records flowing through every stage
        "self_instruct": {"num_instructions": 4, "request_batch_size": 2, "new_per_request": 4},
        "evol_instruct": {"rounds": 1},
        "distill": {"n": 2},
        "dedup": {"threshold": 0.95},
        "quality": {"min_judge_score": 1},
        "decontaminate": {"held_out": [str(held_out)], "semantic": False},
    }
    registered = stages()
    assert set(options) <= set(registered), "a built-in stage left the registry"
    records = read_records(default_seeds_path())[:30]
    # What the reader wrote (e.g. a seed task's instances) plus lineage every record has.
    written: set[str] = set(READER_WRITES) | _changed_keys(records)
    try:
        RecordMeta.__getattribute__ = tracking
        for name, stage in registered.items():
            if name not in options:
                continue  # a plugin's stage: its own tests cover it
            config = stage.config.model_validate(options[name])
            assert stage.reads_for(config) <= written, f"{name} needs meta keys nothing before it wrote"
            current["stage"] = name
            result = stage.run(records, ctx, config)
            current["stage"] = ""
            assert result.kept, f"{name} kept nothing: the contract run needs records flowing"
            wrote = _written_keys(records, result.kept)
            declared = stage.reads_for(config) | stage.uses | stage.writes | {"drop_reason", "drop_detail"}
            undeclared_reads = reads.get(name, set()) - declared
            assert not undeclared_reads, f"{name} reads meta keys its registry entry does not declare: {sorted(undeclared_reads)}"
            undeclared_writes = wrote - stage.writes
            assert not undeclared_writes, f"{name} writes meta keys it does not declare: {sorted(undeclared_writes)}"
            written |= _changed_keys(result.kept)
            records = result.kept
    finally:
        RecordMeta.__getattribute__ = original
        openai_server.responder = None
        ctx.close()
    assert "answer_finish_reason" in reads["quality"] and "answer_finish_reason" in written


def test_a_missing_producer_is_a_config_error_before_any_call(tmp_path) -> None:
    """A stage that needs a key no earlier stage writes stops the pipeline at load, naming both."""
    from datagen.config_errors import ConfigError
    from datagen.pipeline_config import check_meta_flow, validate_config
    from datagen.registry import NO_LLM_CALLS, Command, Stage, register, unregister
    from datagen.stages.dedup import DedupConfig

    def needs_candidates(records, ctx, config):  # noqa: ANN001
        raise AssertionError("never runs: the check comes first")

    register(Stage(name="pick_pairs", config=DedupConfig, run=needs_candidates, plan=NO_LLM_CALLS,
                   help="toy", command=Command(verb="pick-pairs", description="toy"),
                   reads=frozenset({"candidates"})))
    try:
        alone = validate_config({"stages": [{"pick_pairs": {}}]}, "p.yaml")
        with pytest.raises(ConfigError, match=r"p.yaml: stages\[0\].pick_pairs: reads meta.candidates.*\(distill\)"):
            check_meta_flow(alone, {"source"}, "p.yaml")
        after_distill = validate_config({"stages": [{"distill": {"n": 2}}, {"pick_pairs": {}}]}, "p.yaml")
        check_meta_flow(after_distill, {"source"}, "p.yaml")  # distill writes candidates: fine
        check_meta_flow(alone, {"source", "candidates"}, "p.yaml")  # an input file that carries them: fine
    finally:
        unregister("pick_pairs")


def _written_keys(before: list[Record], after: list[Record]) -> set[str]:
    """Keys a stage set: changed on a record it passed through, or non-default on one it made."""
    earlier = {r.id: r.meta for r in before}
    defaults = RecordMeta()
    written = set()
    for record in after:
        was = earlier.get(record.id, defaults)
        written |= {name for name in RecordMeta.model_fields if getattr(record.meta, name) != getattr(was, name)}
    return written


def _changed_keys(records: list[Record]) -> set[str]:
    defaults = RecordMeta()
    changed = set()
    for record in records:
        for name in RecordMeta.model_fields:
            if getattr(record.meta, name) != getattr(defaults, name):
                changed.add(name)
    return changed
