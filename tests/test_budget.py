"""The spending cap over real sockets: `datagen run --budget` stops cleanly at the cap, and a
rerun with a higher cap resumes from the run's cache without paying for anything twice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from datagen.cli import main
from datagen.llm import ChatRequest, ResponseCache, generate_sync, make_llm
from datagen.llm.budget import EXIT_BUDGET, Budget, BudgetExceeded, Rate, spent_in_cache

ROOT = Path(__file__).resolve().parent.parent
# $1000 per 1M completion tokens = $0.001 a token; a 10-token reply costs $0.01 at most.
PRICES = {"openai:test": {"input_per_million": 100.0, "output_per_million": 1000.0}}


def _pipeline(tmp_path: Path, base_url: str) -> Path:
    config = {
        "name": "budget",
        "llm": "openai:test",
        "llm_options": {"openai": {"base_url": base_url, "max_concurrency": 3, "backoff_initial": 0.01}},
        "prices": PRICES,
        "input": {"path": str(ROOT / "seeds" / "seed_tasks.jsonl"), "limit": 20},
        "stages": [{"distill": {"n": 1, "ranker": "none", "max_tokens": 10}}],
        "export": {"formats": ["records"]},
    }
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_budget_stops_cleanly_then_a_higher_cap_resumes_paying_nothing_twice(openai_server, tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pipeline, run_dir = _pipeline(tmp_path, openai_server.base_url), tmp_path / "run"
    cap = 0.05
    code = main(["run", str(pipeline), "--run-dir", str(run_dir), "--no-progress", "--budget", str(cap)])
    assert code == EXIT_BUDGET
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("budget: stopped")]
    assert len(lines) == 1 and f"of ${cap:.4f}" in lines[0] and "left" in lines[0]
    assert not (run_dir / "distill" / "done.json").exists()  # not marked done
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "budget_exhausted"
    first_calls = openai_server.stats.requests
    assert 0 < first_calls < 20
    cache = ResponseCache(run_dir / "llm_cache.sqlite")
    spent = spent_in_cache(cache, PRICES)
    cache.close()
    assert 0 < spent <= cap  # never over the cap: worst cases were reserved before sending
    assert manifest["budget"]["spent_usd"] == pytest.approx(spent)

    code = main(["run", str(pipeline), "--run-dir", str(run_dir), "--no-progress", "--budget", "10"])
    assert code == 0
    stats = openai_server.stats
    assert stats.requests == 20  # 20 records in all: the first run's answers came from the cache
    assert set(stats.per_prompt.values()) == {1}  # no prompt was sent (paid) twice
    assert (run_dir / "distill" / "done.json").exists()


def test_budget_already_spent_counts_earlier_runs(openai_server, tmp_path, monkeypatch):
    """The cap is for the run directory: a rerun with the same cap sends nothing new."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pipeline, run_dir = _pipeline(tmp_path, openai_server.base_url), tmp_path / "run"
    assert main(["run", str(pipeline), "--run-dir", str(run_dir), "--no-progress", "--budget", "0.05"]) == EXIT_BUDGET
    sent = openai_server.stats.requests
    assert main(["run", str(pipeline), "--run-dir", str(run_dir), "--no-progress", "--budget", "0.05"]) == EXIT_BUDGET
    assert openai_server.stats.requests <= sent + 1  # at most what the leftover cents allow


def test_client_reserves_worst_case_and_settles_real_usage(openai_server):
    budget = Budget(1.0)
    rate = Rate(100.0, 1000.0)
    llm = make_llm("openai:test", base_url=openai_server.base_url, api_key="k", budget=budget, price=rate)
    [result] = generate_sync(llm, [ChatRequest.chat("short", max_tokens=500)])
    assert result.ok
    # Reserved 500 completion tokens ($0.5) up front; charged the real 3 (`echo: short #0`).
    assert budget.reserved == 0
    assert budget.spent == pytest.approx(rate.cost(result.prompt_tokens, result.completion_tokens))
    with pytest.raises(BudgetExceeded):  # 2000 tokens x $0.001 = $2 worst case > $1 left
        generate_sync(llm, [ChatRequest.chat("long", max_tokens=2000)])
    assert openai_server.stats.requests == 1  # refused before sending


def test_dry_run_prints_bounds_and_calls_no_llm(openai_server, tmp_path, capsys, monkeypatch):
    from datagen.dryrun import plan
    from datagen.pipeline import Pipeline

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    pipeline = _pipeline(tmp_path, openai_server.base_url)
    data = yaml.safe_load(pipeline.read_text())
    data["stages"] = [{"evol_instruct": {"rounds": 2, "max_tokens": 50, "answer_max_tokens": 40}},
                      {"distill": {"n": 3, "ranker": "judge", "max_tokens": 10, "judge_max_tokens": 20}},
                      {"quality": {"judge": False}}]
    pipeline.write_text(yaml.safe_dump(data))
    assert main(["run", str(pipeline), "--run-dir", str(tmp_path / "run"), "--dry-run", "--budget", "1"]) == 0
    out = capsys.readouterr().out
    assert "upper bound" in out and "evol_instruct (iter.)" in out and "against a budget of $1.00" in out
    assert openai_server.stats.requests == 0  # nothing reached the server
    assert not (tmp_path / "run").exists()
    evol, distill, quality = plan(Pipeline.from_yaml(pipeline))
    # 20 records x 2 rounds x (rewrite + equality check + answer); all may survive both rounds.
    assert sum(c.requests for c in evol.calls) == 20 * 2 * 3 and evol.records_out == 40
    assert sum(c.completion_tokens for c in evol.calls) == 20 * 2 * (50 + 16 + 40)
    # distill: one teacher request per record (n=3 answers of <= 10 tokens), and each of the
    # 3 candidates judged, plus an upper bound of one retry each.
    [calls] = distill.calls
    assert calls.requests == 40 + 40 * 3 * 2
    assert calls.completion_tokens == 40 * 3 * 10 + 40 * 3 * 2 * 20
    assert quality.calls == [] and quality.records_out == 40


def test_stage_command_budget_stops_with_exit_75_and_writes_nothing(openai_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    out = tmp_path / "out.jsonl"
    code = main(["distill", "--input", str(ROOT / "seeds" / "seed_tasks.jsonl"), "--out", str(out),
                 "--llm", "openai:test", "--base-url", openai_server.base_url, "--cache", str(tmp_path / "c.sqlite"),
                 "--n", "1", "--ranker", "none", "--max-tokens", "10", "--no-progress",
                 "--budget", "0.05", "--price", "100,1000"])
    assert code == EXIT_BUDGET
    assert "budget: stopped at the cap" in capsys.readouterr().err
    assert not out.exists()
    assert 0 < openai_server.stats.requests < 175


def test_permit_gate_forfeits_a_dead_workers_reservation():
    """Under `executor: ray` a worker killed mid-request never settles its permit: once its
    lease runs out the gate counts the worst case as spent (it may have been billed), so the
    cap still holds and the budget does not wait for it forever."""
    import asyncio

    from datagen.llm.ray_gate import PermitGate

    async def scenario() -> tuple[tuple[int, float, bool], tuple[int, float, bool]]:
        gate = PermitGate(cap_usd=1.0, already_spent=0.25)
        gate.add_backend("openai:test", None, None, 60.0, lease=30.0)
        lost = await gate.admit("openai:test", 0.5, 0, 0)  # its worker dies: never settled
        kept = await gate.admit("openai:test", 0.2, 0, 0)
        gate.release(kept[0], status=200)
        gate.charge(kept[0], Rate(0.0, 100_000.0), 0, 1)  # the reply cost $0.10
        assert (gate.budget.spent, gate.budget.reserved) == (pytest.approx(0.35), pytest.approx(0.5))
        assert gate.sweep(now=1e12) == 1
        assert (gate.budget.spent, gate.budget.reserved) == (pytest.approx(0.85), 0.0)
        return lost, await gate.admit("openai:test", 0.2, 0, 0)  # $0.15 left: stopped

    lost, refused = asyncio.run(scenario())
    assert lost[2] is False and refused[1:] == (pytest.approx(0.85), True)
