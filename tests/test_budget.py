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
