"""Pipeline config validation, overrides, run directory, skip-on-rerun and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from datagen.config_errors import ConfigError
from datagen.pipeline import Pipeline
from datagen.pipeline_config import apply_overrides, validate_config

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"


@pytest.mark.parametrize("path", sorted(PIPELINES.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_pipeline_validates_and_dry_runs(path: Path) -> None:
    """Each bundled pipeline (study.yaml through its study loader) loads, and its dry run plans
    every stage with the records it would pass on."""
    import io

    from datagen.dryrun import print_plan
    from datagen.study import load_study

    pipeline = load_study(path)[0] if "study:" in path.read_text() else Pipeline.from_yaml(path)
    out = io.StringIO()
    plans = print_plan(pipeline, out=out)
    assert [plan.label for plan in plans] == [spec.label for spec in pipeline.config.stage_specs()]
    assert plans and all(plan.records_out > 0 for plan in plans)
    llm_stages = [plan for plan in plans if plan.label.split("_")[0] in {"self", "evol", "distill"}]
    assert all(sum(call.requests for call in plan.calls) > 0 for plan in llm_stages)
    assert out.getvalue().splitlines()[-1].startswith("total: <= $")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nmae": "x"}, "nmae: unknown key (did you mean 'name'?)"),
        ({"stages": [{"self_instruct": {"num_instrutions": 3}}]},
         "stages[0].self_instruct.num_instrutions: unknown key (did you mean 'num_instructions'?)"),
        ({"stages": [{"dedupe": {}}]}, "stages[0]: unknown stage 'dedupe' (did you mean 'dedup'?)"),
        ({"stages": [{"distill": {"n": "many"}}]}, "stages[0].distill.n: Input should be a valid integer"),
        ({"stages": [{"dedup": {}, "quality": {}}]}, "stages[0]: each stage is one"),
        ({"input": {"pth": "x"}}, "input.pth: unknown key (did you mean 'path'?)"),
        ({"finetune": {"methd": "lora"}}, "finetune.methd: unknown key (did you mean 'method'?)"),
        ({"export": {"formats": ["alpca"]}}, "unknown format 'alpca' (did you mean 'alpaca'?)"),
        ({"llm_options": {"openai": {"api_key": "sk-1"}}}, "keys never go in a config file"),
    ],
)
def test_config_errors_name_the_key(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(data, source="p.yaml")
    assert str(info.value).startswith("p.yaml: ")
    assert message in str(info.value)


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages:\n  - dedup: {threshold: 0.9\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+: invalid YAML"):
        Pipeline.from_yaml(path)


def test_overrides_address_stages_by_name() -> None:
    data = {"stages": [{"self_instruct": {"num_instructions": 5}}, {"distill": None}]}
    apply_overrides(data, ["stages.self_instruct.num_instructions=9", "stages.distill.n=3", "llm=openai:m",
                           "llm_options.openai.base_url=http://h/v1"])
    assert data["stages"][0]["self_instruct"]["num_instructions"] == 9
    assert data["stages"][1]["distill"] == {"n": 3}
    assert data["llm"] == "openai:m" and data["llm_options"]["openai"]["base_url"] == "http://h/v1"
    with pytest.raises(ConfigError, match="no stage named 'quality'"):
        apply_overrides(data, ["stages.quality.min_judge_score=3"])
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides(data, ["llm"])


def _light_config(base_url: str, records: Path) -> dict:
    """Stages that need no local model: distill + exact dedup + quality judge over the test server."""
    return {
        "name": "t",
        "llm": "openai:test",
        "llm_options": {"openai": {"base_url": base_url, "max_concurrency": 4, "backoff_initial": 0.01,
                                   "backoff_max": 0.05}},
        "prices": {"openai:test": {"input_per_million": 1.0, "output_per_million": 2.0}},
        "input": {"path": str(records)},
        "stages": [{"distill": {"n": 2}}, {"dedup": {"semantic": False}}, {"quality": {"min_judge_score": 4.0}}],
        "export": {"formats": ["alpaca", "sharegpt", "messages", "records", "hf"]},
    }


@pytest.fixture
def responding_server(openai_server):
    from pipeline_responder import reply

    openai_server.responder = reply
    yield openai_server
    openai_server.responder = None


def _records_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    rows = [{"instruction": f"Explain topic number {i} in detail.", "input": "", "output": ""} for i in range(6)]
    rows.append(dict(rows[0]))  # an exact duplicate instruction to be dropped...
    rows[-1]["instruction"] = "explain topic number 0 in detail"  # ...after normalisation
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_run_directory_resume_and_report(tmp_path: Path, responding_server) -> None:
    config = validate_config(_light_config(responding_server.base_url, _records_file(tmp_path)), "t.yaml")
    run_dir = tmp_path / "run"
    first = Pipeline(config).run(run_dir=run_dir, progress=False)
    calls = responding_server.stats.requests
    assert calls > 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    labels = [s["label"] for s in manifest["stages"]]
    assert labels == ["distill", "dedup", "quality"]
    dedup = manifest["stages"][1]
    assert dedup["in"] == 7 and dedup["out"] == 6 and dedup["drop_reasons"] == {"exact_duplicate": 1}
    assert manifest["stages"][0]["llm_usage"]["openai:test"]["calls"] > 0
    assert manifest["cost_usd_total"] > 0
    for stage in labels:
        assert (run_dir / stage / "kept.jsonl").exists() and (run_dir / stage / "done.json").exists()
    for name in ("alpaca.json", "sharegpt.jsonl", "messages.jsonl", "records.jsonl"):
        assert (run_dir / "export" / name).exists()
    assert (run_dir / "export" / "hf_dataset" / "dataset_info.json").exists()
    report = (run_dir / "report.html").read_text()
    assert "Funnel" in report and "exact_duplicate" in report and "<svg" in report
    export_before = (run_dir / "export" / "alpaca.json").read_bytes()

    # identical rerun: every stage skipped, not one request
    second = Pipeline(config).run(run_dir=run_dir, progress=False)
    assert responding_server.stats.requests == calls
    assert [s.skipped for s in second.stages] == [True, True, True]
    assert (run_dir / "export" / "alpaca.json").read_bytes() == export_before
    assert [r.id for r in second.records] == [r.id for r in first.records]

    # changing one stage's config reruns it and what follows, from the cache where possible
    changed = _light_config(responding_server.base_url, _records_file(tmp_path))
    changed["stages"][2]["quality"]["min_judge_score"] = 4.5
    third = Pipeline(validate_config(changed, "t.yaml")).run(run_dir=run_dir, progress=False)
    assert [s.skipped for s in third.stages] == [True, True, False]
    assert responding_server.stats.requests == calls  # judge replies came from the cache


def test_report_cli_rebuilds(tmp_path: Path, responding_server) -> None:
    from datagen.cli import main

    config = validate_config(_light_config(responding_server.base_url, _records_file(tmp_path)), "t.yaml")
    run_dir = tmp_path / "run"
    Pipeline(config).run(run_dir=run_dir, progress=False)
    (run_dir / "report.html").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").exists()


def test_resolved_config_written_without_secrets(tmp_path: Path, responding_server, monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-do-not-leak-4242")
    config = validate_config(_light_config(responding_server.base_url, _records_file(tmp_path)), "t.yaml")
    run_dir = tmp_path / "run"
    Pipeline(config).run(run_dir=run_dir, progress=False)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["llm"] == "openai:test"
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert b"sk-do-not-leak-4242" not in path.read_bytes(), path


def test_bundled_pipelines_resolve_from_any_folder(tmp_path, monkeypatch, capsys) -> None:
    """`datagen run quickstart` works outside the checkout; `init` copies one out to edit."""
    from datagen.bundled import bundled_pipelines, resolve_pipeline
    from datagen.cli import main

    monkeypatch.chdir(tmp_path)
    assert {"quickstart", "alpaca", "evol", "full"} <= set(bundled_pipelines())
    for spelling in ("quickstart", "quickstart.yaml", "pipelines/quickstart.yaml"):
        assert resolve_pipeline(spelling) == bundled_pipelines()["quickstart"]
    assert Pipeline.from_yaml("quickstart").config.name == "quickstart"
    with pytest.raises(FileNotFoundError, match="bundled: "):
        resolve_pipeline("quikstart")
    assert main(["pipelines"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert main(["init", "quickstart"]) == 0
    copied = tmp_path / "quickstart.yaml"
    assert copied.read_text() == bundled_pipelines()["quickstart"].read_text()
    assert main(["init", "quickstart"]) == 2  # exists: refuses without --force
    assert "exists" in capsys.readouterr().err
    # The copy is what runs now (a local file wins over the bundled name).
    assert resolve_pipeline("quickstart.yaml") == Path("quickstart.yaml")
