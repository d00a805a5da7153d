"""Magpie: the pre-query prompt from a chat template, the query filters (each a counted reason),
and `datagen magpie` over the loopback server's /v1/completions (and its one-line failure on
a chat-only endpoint)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from datagen.jsonl import read_jsonl
from datagen.stages.magpie import MagpieConfig, pre_query_from_template, query_problem, resolve_pre_query

ROOT = Path(__file__).resolve().parent.parent
CHATML = "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n"


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "datagen.cli", *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


def test_pre_query_is_the_template_cut_before_the_user_text():
    from finetune_helpers import smol_tokenizer

    pre = pre_query_from_template(smol_tokenizer())
    assert pre.prompt(None).endswith("<|im_start|>user\n")
    assert pre.prompt("You are a chef.") == "<|im_start|>system\nYou are a chef.<|im_end|>\n<|im_start|>user\n"
    assert "<|im_end|>" in pre.stops


def test_openai_needs_a_pre_query_or_a_template_source():
    with pytest.raises(ValueError, match="pre_query .* or template_from"):
        resolve_pre_query("openai:m", MagpieConfig())
    given = resolve_pre_query("openai:m", MagpieConfig(pre_query=CHATML, stop=["<|im_end|>"]))
    assert given.prompt("S") == CHATML.replace("{system}", "S") and given.stops == ("<|im_end|>",)


@pytest.mark.parametrize(("query", "finish", "reason"), [
    ("", "stop", "empty_query"),
    ("How do I bake bread at home without yeast", "length", "incomplete_query"),
    ("Hi there", "stop", "too_short_query"),
    (" ".join(["word"] * 10 + ["other"] * 200), "stop", "too_long_query"),
    ("tell me more tell me more tell me more tell me more tell me more", "stop", "repetitive_query"),
    ("请解释为什么天空是蓝色的？", "stop", "wrong_language"),
    ("空が青いのはなぜですか？説明してください。", "stop", "wrong_language"),
    ("How do I bake bread at home without yeast?", "stop", None),
])
def test_query_filters(query, finish, reason):
    assert query_problem(query, finish, MagpieConfig()) == reason


def test_language_filter_keeps_the_languages_asked_for():
    config = MagpieConfig(languages=["zh"])
    assert query_problem("请解释为什么天空是蓝色的？", "stop", config) is None
    assert query_problem("Why is the sky blue on a clear day?", "stop", config) == "wrong_language"
    assert query_problem("空が青いのはなぜですか？説明してください。", "stop", config) == "wrong_language"
    assert query_problem("Why is the sky blue on a clear day?", "stop", MagpieConfig(languages=[])) is None


def magpie(server, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return cli("magpie", "--llm", "openai:test", "--base-url", server.base_url, "--count", "12",
               "--pre-query", CHATML, "--stop", '["<|im_end|>"]',
               "--system-prompts", '{"You are a helpful assistant.": 3, "You answer in Chinese.": 1}',
               "--out", str(out), "--dropped", str(out.with_suffix(".dropped.jsonl")), "--no-progress",
               "--no-cache", *extra)


def test_magpie_command_over_the_completions_endpoint(scripted_server, tmp_path):
    result = magpie(scripted_server, tmp_path / "a.jsonl")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "a.jsonl")
    dropped = read_jsonl(tmp_path / "a.dropped.jsonl")
    assert len(rows) + len(dropped) == 12
    assert rows and all(r["meta"]["source"] == "magpie" and r["output"].startswith("Here is") for r in rows)
    assert {r["meta"]["system_prompt"] for r in rows} <= {"You are a helpful assistant.", "You answer in Chinese."}
    # The scripted model writes Chinese under the Chinese system prompt: the English run drops those.
    assert {d["meta"]["drop_reason"] for d in dropped} <= {"wrong_language"}
    assert len(dropped) == sum(1 for r in rows + dropped if r["meta"]["system_prompt"] == "You answer in Chinese.")
    raw = [e for e in scripted_server.stats.log if e.prompt.endswith("<|im_start|>user\n")]
    assert len(raw) == 12  # one raw-prompt request per query, then one chat request per kept query
    assert scripted_server.stats.requests == 12 + len(rows)
    # Same seed, same dataset.
    again = magpie(scripted_server, tmp_path / "b.jsonl")
    assert again.returncode == 0 and (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()


def test_an_answer_system_prompt_steers_the_answers_only(scripted_server, tmp_path):
    """`answer_system_prompt` reaches every answer request in place of the query's system prompt,
    never a query, and stays out of the records."""
    from pipeline_responder import reply

    systems: list[str] = []

    def watching(messages, choice, seed):  # noqa: ANN001
        systems.append(messages[0]["content"] if messages[0]["role"] == "system" else "")
        return reply(messages, choice, seed)

    scripted_server.responder = watching
    guide = "Answer in at most three sentences."
    result = magpie(scripted_server, tmp_path / "a.jsonl", "--answer-system-prompt", guide)
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "a.jsonl")
    # 12 raw query prompts (no system turn), then one answer per kept query, each under the guide
    assert rows and systems.count(guide) == len(rows) and systems.count("") == 12 and set(systems) == {guide, ""}
    assert not any(guide in e.prompt for e in scripted_server.stats.log if e.prompt.endswith("<|im_start|>user\n"))
    assert guide not in (tmp_path / "a.jsonl").read_text()


def test_magpie_command_fails_in_one_line_on_a_chat_only_endpoint(scripted_server, tmp_path):
    scripted_server.configure(completions=False)
    result = magpie(scripted_server, tmp_path / "a.jsonl")
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "chat-only" in lines[0] and "/completions answered 404" in lines[0]
    assert not (tmp_path / "a.jsonl").exists()


def test_magpie_command_without_a_template_for_openai_is_a_config_error(scripted_server, tmp_path):
    result = cli("magpie", "--llm", "openai:test", "--base-url", scripted_server.base_url, "--count", "2",
                 "--out", str(tmp_path / "a.jsonl"), "--no-progress")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "pre_query" in result.stderr
    assert scripted_server.stats.requests == 0


def test_magpie_stage_on_a_local_model_counts_and_caches(tiny_model_dir, tmp_path):
    from datagen.context import StageContext
    from datagen.llm import ResponseCache
    from datagen.stages.magpie import run

    config = MagpieConfig(count=4, query_max_tokens=6, answer_max_tokens=6, min_words=0, languages=[],
                          max_repeated_ratio=1.0, system_prompts={"You are a chef.": 1})
    spec = f"local:{tiny_model_dir}"
    ctx = StageContext(llm_spec=spec, cache=ResponseCache(tmp_path / "c.sqlite"), progress=False)
    first = run([], ctx, config)
    assert len(first.kept) + len(first.dropped) == 4
    assert all(r.meta.source == "magpie" and r.meta.system_prompt == "You are a chef." for r in first.kept + first.dropped)
    usage = ctx.usage()[spec]
    assert usage["calls"] == 4 + len(first.kept) and usage["completion_tokens"] > 0
    again = StageContext(llm_spec=spec, cache=ResponseCache(tmp_path / "c.sqlite"), progress=False)
    second = run([], again, config)
    assert again.usage()[spec]["calls"] == 0
    assert [r.model_dump() for r in second.kept] == [r.model_dump() for r in first.kept]


@pytest.mark.slow  # dedup loads the embedding model
def test_magpie_beside_self_instruct_in_a_pipeline(scripted_server, tmp_path):
    import yaml

    config = {
        "name": "mp", "llm": "openai:test", "seed": 3,
        "llm_options": {"openai": {"base_url": scripted_server.base_url, "backoff_initial": 0.01}},
        "input": {"path": str(ROOT / "seeds" / "seed_tasks.jsonl"), "limit": 30},
        "stages": [
            {"self_instruct": {"num_instructions": 3, "request_batch_size": 1, "new_per_request": 4}},
            {"magpie": {"keep_input": True, "count": 10, "pre_query": CHATML.replace("{system}", "Be brief."),
                        "stop": ["<|im_end|>"]}},
            {"dedup": {"threshold": 0.95}},
            {"quality": {"min_judge_score": 2}},
        ],
        "export": {"formats": ["records"]},
    }
    path = tmp_path / "mp.yaml"
    path.write_text(yaml.safe_dump(config))
    result = cli("run", str(path), "--run-dir", str(tmp_path / "run"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("finished: ")
    exported = read_jsonl(tmp_path / "run" / "export" / "records.jsonl")
    sources = {r["meta"]["source"] for r in exported}
    assert {"magpie", "self_instruct"} <= sources
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    magpie_stage = next(s for s in manifest["stages"] if s["label"] == "magpie")
    answered = [r for r in read_jsonl(tmp_path / "run" / "magpie" / "kept.jsonl") if r["meta"]["source"] == "magpie"]
    assert magpie_stage["llm_usage"]["openai:test"]["calls"] == 10 + len(answered)
    report = (tmp_path / "run" / "report.html").read_text()
    assert "Languages (final records" in report and "Tokens per exported record" in report
