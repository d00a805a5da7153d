"""`datagen eval`: both-order judging and its tie logic over the loopback server, the statistics
(bootstrap interval, length-controlled win-rate) on known distributions, the teacher-forced loss
against a hand computation, and the decontamination check."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scripted_llm import ScriptedLLM, last_user, make_ctx

from datagen.eval import EvalConfig, check_contamination, held_out_fingerprint, run_eval
from datagen.eval_stats import bootstrap_interval, length_controlled_win_rate
from datagen.judge import combine_orders, parse_winner
from datagen.llm import ResponseCache


@pytest.mark.parametrize(
    "forward, backward, expected",
    [
        ("A", "B", (1.0, True)),  # first shown as A wins, first shown as B wins
        ("B", "A", (0.0, True)),
        ("tie", "tie", (0.5, True)),
        ("A", "A", (0.5, False)),  # always the first position: a flip is a tie
        ("B", "B", (0.5, False)),
        ("A", "tie", (0.5, False)),
        ("tie", "A", (0.5, False)),
        (None, "A", (None, False)),
        ("B", None, (None, False)),
    ],
)
def test_combine_orders(forward, backward, expected):
    assert combine_orders(forward, backward) == expected


@pytest.mark.parametrize(
    "reply, winner",
    [
        ('{"reason": "more precise", "winner": "B"}', "B"),
        ('```json\n{"reason": "x", "winner": "tie"}\n```', "tie"),
        ("My verdict: [[A]]", "A"),
        ("Winner: B, because it is correct.", "B"),
        ("The better answer is A.", "A"),
        ("The better answer is a matter of taste.", None),  # the article, not answer A
        ("A", "A"),
        ("tie.", "tie"),
        ("Both answers have merits.", None),
        ('{"reason": "x", "winner": "C++"}', None),
        ("", None),
    ],
)
def test_parse_winner(reply, winner):
    assert parse_winner(reply) == winner


# ------------------------------------------------------------------ end to end over the server

PAIR = re.compile(r"<answer_a>\n(.*?)\n</answer_a>\n\n<answer_b>\n(.*?)\n</answer_b>", re.S)


def judge_responder(messages, choice, seed):
    """A judge with the failure modes the both-order logic must handle."""
    a, b = PAIR.search(messages[-1]["content"]).groups()
    if "POSITIONAL" in a and "POSITIONAL" in b:
        return '{"reason": "the first one", "winner": "A"}'  # always the first position
    if "EVEN" in a and "EVEN" in b:
        return '{"reason": "same", "winner": "tie"}'
    if "GARBLED" in a:
        return "I cannot decide."  # unreadable in one of the two orders
    score_a, score_b = ("GOOD" in a) - ("BAD" in a), ("GOOD" in b) - ("BAD" in b)
    winner = "A" if score_a > score_b else "B" if score_b > score_a else "tie"
    return json.dumps({"reason": "content", "winner": winner})


BASE = {"p0": "BAD zero", "p1": "GOOD one", "p2": "POSITIONAL two", "p3": "EVEN three", "p4": "GARBLED four"}
TUNED = {"p0": "GOOD zero", "p1": "BAD one", "p2": "POSITIONAL deux", "p3": "EVEN trois", "p4": "fine four"}


def _answers(table):
    return lambda req: table[last_user(req).split()[0]]


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "heldout.jsonl"
    rows = [{"instruction": f"p{i} question", "input": "", "output": f"GOOD reference {i}"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _ctx(tmp_path: Path, server):
    ctx = make_ctx(ScriptedLLM(_answers(BASE), name="base"), ScriptedLLM(_answers(TUNED), name="tuned"))
    ctx.cache = ResponseCache(tmp_path / "cache.sqlite")
    ctx.llm_options = {"openai": {"base_url": server.base_url}}
    return ctx


def test_eval_both_orders_ties_and_cache(tmp_path: Path, openai_server):
    openai_server.responder = judge_responder
    try:
        config = EvalConfig(data=str(_data(tmp_path)), models=["base", "tuned"], judge="openai:judge", loss=False,
                            bootstrap_samples=200)
        ctx = _ctx(tmp_path, openai_server)
        report = run_eval(config, tmp_path / "out", ctx)
        ctx.close()
        requests = openai_server.stats.requests
        # three pairs (tuned vs base, base vs reference, tuned vs reference), 5 prompts, 2 orders each
        assert requests == 3 * 5 * 2
        tuned_vs_base = report["pairs"][0]
        assert (tuned_vs_base["first"], tuned_vs_base["second"]) == ("tuned", "base")
        # p0 tuned wins, p1 tuned loses, p2 position-biased -> tie, p3 tie, p4 unreadable once -> unjudged
        assert [report["items"][i]["verdicts"]["tuned vs base"] for i in range(5)] == [1.0, 0.0, 0.5, 0.5, None]
        assert (tuned_vs_base["wins"], tuned_vs_base["ties"], tuned_vs_base["losses"]) == (1, 2, 1)
        assert tuned_vs_base["order_inconsistent"] == 1 and tuned_vs_base["unjudged"] == 1
        assert tuned_vs_base["win_rate"] == 0.5
        low, high = tuned_vs_base["ci95"]
        assert 0.0 <= low < 0.5 < high <= 1.0
        # every judged pair was asked with the answers swapped
        prompts = [entry.prompt for entry in openai_server.stats.log]
        swapped = [PAIR.search(p).groups() for p in prompts]
        assert all((b, a) in swapped for a, b in swapped)
        vs_ref = {(p["first"], p["second"]): p for p in report["pairs"][1:]}
        assert vs_ref[("base", "reference")]["losses"] >= 1 and vs_ref[("tuned", "reference")]["n"] == 5
        assert report["answer_words"]["tuned"] == 2.0
        saved = json.loads((tmp_path / "out" / "eval.json").read_text())
        assert saved["pairs"] == report["pairs"] and saved["contamination"]["status"] == "unknown"

        # a rerun is answered from the cache: the judge server sees no new request
        ctx = _ctx(tmp_path, openai_server)
        again = run_eval(config, tmp_path / "out2", ctx)
        ctx.close()
        assert openai_server.stats.requests == requests
        assert again["pairs"] == report["pairs"]
    finally:
        openai_server.responder = None


def test_eval_cli_prints_table_and_writes_json(tmp_path: Path, openai_server, capsys):
    from datagen.cli import main

    openai_server.responder = judge_responder
    try:
        data = _data(tmp_path)
        # The loopback server's echo answers: both models give the same text, so every pair ties.
        openai_server.responder = lambda m, c, s: (judge_responder(m, c, s) if "<answer_a>" in m[-1]["content"]
                                                  else f"EVEN answer to {m[-1]['content']}")
        code = main(["eval", "--models", "openai:m1", "openai:m2", "--data", str(data), "--judge", "openai:judge",
                     "--base-url", openai_server.base_url, "--out", str(tmp_path / "ev"), "--no-progress"])
        assert code == 0
        out = capsys.readouterr().out
        assert "openai:m2" in out and "0.500" in out and "eval.json" in out
        report = json.loads((tmp_path / "ev" / "eval.json").read_text())
        assert report["pairs"][0]["win_rate"] == 0.5 and report["pairs"][0]["ties"] == 5
    finally:
        openai_server.responder = None


# ------------------------------------------------------------------ statistics


def test_bootstrap_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(1)
    values = (rng.random(2000) < 0.3).astype(float)
    low, high = bootstrap_interval(values, samples=4000, seed=0)
    mean = values.mean()
    half = 1.96 * math.sqrt(mean * (1 - mean) / len(values))
    assert low == pytest.approx(mean - half, abs=0.004)
    assert high == pytest.approx(mean + half, abs=0.004)


def test_bootstrap_interval_of_a_constant_is_a_point():
    assert bootstrap_interval(np.ones(50)) == (1.0, 1.0)


def test_length_controlled_win_rate_recovers_the_intercept():
    """Preferences drawn from a known logistic model: the rate at zero length difference is
    sigmoid(intercept), while the raw win-rate is inflated because the first answer is longer."""
    rng = np.random.default_rng(0)
    diff = rng.normal(60, 50, size=6000)  # the first answer is usually longer
    z = 0.4 + 1.5 * diff / diff.std()
    prefs = (rng.random(len(diff)) < 1 / (1 + np.exp(-z))).astype(float)
    lc = length_controlled_win_rate(prefs, diff, penalty=0.0)
    assert lc == pytest.approx(1 / (1 + math.exp(-0.4)), abs=0.03)
    assert prefs.mean() > lc + 0.1


def test_length_controlled_win_rate_with_ties_and_no_length_effect():
    prefs = np.array([1, 0.5, 0.5, 0, 1, 1, 0.5, 0.5])
    assert length_controlled_win_rate(prefs, np.zeros(8)) == pytest.approx(prefs.mean())
    # longer answers always win, lengths symmetric: no real preference once length is controlled
    diff = np.array([10, -10, 20, -20, 5, -5])
    assert length_controlled_win_rate((diff > 0).astype(float), diff) == pytest.approx(0.5, abs=1e-6)


# ------------------------------------------------------------------ contamination check


def _run_with_manifest(tmp_path: Path, held_out: list[str]) -> Path:
    run = tmp_path / "run"
    (run / "model" / "model").mkdir(parents=True)
    stats = {"held_out_sets": [{"path": p, "sha256": held_out_fingerprint(p)} for p in held_out]}
    (run / "manifest.json").write_text(json.dumps({"stages": [{"stage": "decontaminate", "stats": stats}]}))
    return run


def test_contamination_check_finds_the_run_of_a_local_model(tmp_path: Path):
    data = _data(tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text('{"instruction": "x", "output": "y"}\n')
    run = _run_with_manifest(tmp_path, [str(data)])
    ok = check_contamination(data, [f"local:{run / 'model' / 'model'}"])
    assert ok["status"] == "decontaminated"
    bad = check_contamination(other, [f"local:{run / 'model' / 'model'}"])
    assert bad["status"] == "not_decontaminated"
    assert check_contamination(data, ["openai:x"])["status"] == "unknown"


def test_eval_refuses_an_undecontaminated_set_when_required(tmp_path: Path):
    data = _data(tmp_path)
    run = _run_with_manifest(tmp_path, [])
    (run / "model" / "model" / "config.json").write_text("{}")
    config = EvalConfig(data=str(data), models=["local", f"local:{run / 'model'}"], require_decontaminated=True)
    with pytest.raises(ValueError, match="NOT decontaminated"):
        run_eval(config, tmp_path / "out", make_ctx(ScriptedLLM(lambda r: "x")))


# ------------------------------------------------------------------ teacher-forced loss


def test_teacher_forced_loss_equals_a_hand_computation():
    import torch
    from finetune_helpers import CONVERSATIONS, examples, smol_tokenizer, tiny_llama

    from finetune.loss import teacher_forced_loss
    from finetune.template import resolve_training_template

    tokenizer = smol_tokenizer()
    model = tiny_llama(len(tokenizer))
    exs = examples(CONVERSATIONS[:4])
    result = teacher_forced_loss("unused", exs, model=model, tokenizer=tokenizer)

    # By hand: render the text, find each assistant answer + "<|im_end|>" by string position,
    # and score exactly those tokens with log-softmax of the previous position's logits.
    template = resolve_training_template(tokenizer).template
    total, count = 0.0, 0
    for ex in exs:
        text = tokenizer.apply_chat_template(ex["messages"], chat_template=template, tokenize=False)
        spans, start = [], 0
        for m in ex["messages"]:
            if m["role"] == "assistant":
                begin = text.index("<|im_start|>assistant\n" + m["content"], start) + len("<|im_start|>assistant\n")
                end = begin + len(m["content"] + "<|im_end|>")
                spans.append((begin, end))
                start = end
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = enc["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
        for t in range(1, len(ids)):
            lo, hi = enc["offset_mapping"][t]
            if any(b <= lo and hi <= e for b, e in spans):
                total -= float(logp[t - 1, ids[t]])
                count += 1
    assert result["tokens"] == count
    assert result["loss"] == pytest.approx(total / count, abs=1e-4)
    assert result["chat_template_source"] == "chatml"
