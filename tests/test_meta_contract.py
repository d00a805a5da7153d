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
def test_stages_in_pipeline_order_read_only_what_earlier_stages_wrote(openai_server, tmp_path) -> None:
    """Run every stage in order over the scripted loopback server, tracking which declared meta
    keys each stage reads (attribute access) and which it writes (values changed from default)."""
    from pipeline_responder import reply

    from datagen.io import default_seeds_path, read_records
    from datagen.llm import ResponseCache
    from datagen.stages.context import StageContext

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
    order = [
        ("self_instruct", "datagen.stages.self_instruct", "SelfInstructConfig",
         {"num_instructions": 4, "request_batch_size": 2, "new_per_request": 4}),
        ("evol_instruct", "datagen.stages.evol_instruct", "EvolConfig", {"rounds": 1}),
        ("distill", "datagen.stages.distill", "DistillConfig", {"n": 2}),
        ("dedup", "datagen.stages.dedup", "DedupConfig", {"threshold": 0.95}),
        ("quality", "datagen.stages.quality", "QualityConfig", {"min_judge_score": 1}),
    ]
    import importlib

    records = read_records(default_seeds_path())[:30]
    # What the reader wrote (e.g. a seed task's instances) plus lineage every record has.
    written: set[str] = {"source", "round", "model", "is_classification"} | _changed_keys(records)
    try:
        RecordMeta.__getattribute__ = tracking
        for label, module_name, config_name, options in order:
            module = importlib.import_module(module_name)
            config = getattr(module, config_name).model_validate(options)
            current["stage"] = label
            result = module.run(records, ctx, config)
            current["stage"] = ""
            assert result.kept, f"{label} kept nothing: the contract run needs records flowing"
            missing = (reads.get(label, set()) - written) - {"drop_reason", "drop_detail", "scores"}
            # A stage may read a key it writes itself, on records it made in this same call.
            missing -= _changed_keys(result.kept)
            assert not missing, f"{label} reads meta keys no earlier stage wrote: {sorted(missing)}"
            written |= _changed_keys(result.kept)
            records = result.kept
    finally:
        RecordMeta.__getattribute__ = original
        openai_server.responder = None
        ctx.close()
    assert "answer_finish_reason" in reads["quality"] and "answer_finish_reason" in written


def _changed_keys(records: list[Record]) -> set[str]:
    defaults = RecordMeta()
    changed = set()
    for record in records:
        for name in RecordMeta.model_fields:
            if getattr(record.meta, name) != getattr(defaults, name):
                changed.add(name)
    return changed
