"""Adding a stage is one file: a toy stage, installed as a real `datagen.plugins` entry point in
a throw-away folder, appears in `datagen --help`, runs as its own command, runs inside a YAML
pipeline (resumable like any stage) and is priced by `--dry-run` through its own planner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

TOY_STAGE = '''
"""A toy stage: the LLM answers each instruction once; the answer is kept in capitals."""

from pydantic import BaseModel, ConfigDict, Field

from datagen.llm import ChatRequest, generate_sync
from datagen.plan import Calls, StagePlan, finish
from datagen.records import StageResult
from datagen.registry import Command, Stage, register


class ShoutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(32, ge=1, description="answer length")
    llm: str | None = Field(None, description="backend spec")


def run(records, ctx, config):
    replies = generate_sync(ctx.llm(config.llm),
                            [ChatRequest.chat(r.instruction, max_tokens=config.max_tokens) for r in records])
    kept = []
    for record, reply in zip(records, replies):
        out = record.model_copy(deep=True)
        out.output = (reply.texts[0] if reply.texts else "").upper()
        out.meta.scores["shout"] = 1.0
        kept.append(out)
    return StageResult(kept=kept, dropped=[], stats={"shouted": len(kept)})


def plan(flow, config, default_llm, prompts_dir):
    calls = Calls(config.llm or default_llm)
    calls.add(flow.count, flow.instruction_tokens, config.max_tokens)
    return finish(StagePlan("", flow.count, flow.count, [calls]), flow)


register(Stage(name="shout", config=ShoutConfig, run=run, plan=plan, help="answer in capitals (a toy stage)",
               command=Command(verb="shout", description="Answer every instruction, in capitals."),
               writes=frozenset({"scores"})))
'''


@pytest.fixture
def toy_plugin(tmp_path: Path) -> dict[str, str]:
    """The toy stage as an installed plugin: its module plus a dist-info naming its entry point."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_shout.py").write_text(TOY_STAGE)
    info = site / "toy_shout-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-shout\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[datagen.plugins]\nshout = toy_shout\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT), env.get("PYTHONPATH", "")])
    return env


def datagen(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def test_a_plugin_stage_runs_as_command_pipeline_and_dry_run(toy_plugin, openai_server, tmp_path: Path) -> None:
    records = tmp_path / "in.jsonl"
    records.write_text("".join(json.dumps({"instruction": f"say hello number {i}", "output": ""}) + "\n"
                               for i in range(3)))

    listed = datagen(toy_plugin, "--help", cwd=tmp_path)
    assert listed.returncode == 0 and "answer in capitals (a toy stage)" in listed.stdout

    out = tmp_path / "out.jsonl"
    cli = datagen(toy_plugin, "shout", "--input", str(records), "--out", str(out), "--llm", "openai:test",
                  "--base-url", openai_server.base_url, "--max-tokens", "16", "--no-cache", cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(r["output"] and r["output"] == r["output"].upper() for r in rows)
    assert all(r["meta"]["scores"]["shout"] == 1.0 for r in rows)
    requests_after_cli = openai_server.stats.requests
    assert requests_after_cli == 3

    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(textwrap.dedent(f"""\
        name: toy
        llm: openai:test
        llm_options: {{openai: {{base_url: "{openai_server.base_url}"}}}}
        input: {{path: {records}}}
        stages:
          - dedup: {{semantic: false}}
          - shout: {{max_tokens: 16}}
        export: {{formats: [records]}}
        """))
    plan = datagen(toy_plugin, "run", str(pipeline), "--dry-run", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    shout_row = next(line for line in plan.stdout.splitlines() if line.startswith("shout"))
    assert "openai:test" in shout_row and "<= 3 " in shout_row  # one request per record, from its own planner
    assert openai_server.stats.requests == requests_after_cli  # a dry run calls nothing

    run_dir = tmp_path / "run"
    ran = datagen(toy_plugin, "run", str(pipeline), "--run-dir", str(run_dir), "--no-progress", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [s["label"] for s in manifest["stages"]] == ["dedup", "shout"]
    assert manifest["stages"][1]["stats"] == {"shouted": 3}
    exported = (run_dir / "export" / "records.jsonl").read_text().splitlines()
    assert len(exported) == 3 and all(json.loads(r)["output"].isupper() for r in exported)
    calls = openai_server.stats.requests
    again = datagen(toy_plugin, "run", str(pipeline), "--run-dir", str(run_dir), "--no-progress", cwd=tmp_path)
    assert again.returncode == 0 and openai_server.stats.requests == calls  # resumed: the stage is skipped


def test_without_the_plugin_the_stage_is_unknown(tmp_path: Path) -> None:
    """The control: the same pipeline is a one-line config error when no plugin provides `shout`."""
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("stages:\n  - shout: {}\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = datagen(env, "run", str(pipeline), "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert "stages[0]: unknown stage 'shout'" in result.stderr and len(result.stderr.strip().splitlines()) == 1
