"""Best-of-n distillation: ranking, ties, min score, messy judges, multi-turn, reward model."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError
from scripted_llm import ScriptedLLM, last_user, make_ctx

from datagen.llm import ChatRequest, Completion
from datagen.records import Message, Record, RecordMeta
from datagen.stages.distill import DistillConfig, best_candidate, record_context, reward_scores, run


def rec(text: str, rid: str | None = None, **kw) -> Record:
    return Record(id=rid or f"id_{text[:24]}", instruction=text, meta=RecordMeta(source="test"), **kw)


def cand(text: str, score: float | None, finish: str = "stop") -> dict:
    return {"text": text, "score": score, "finish_reason": finish}


# ------------------------------------------------------------------------------- best_candidate


def test_highest_score_wins():
    assert best_candidate([cand("a", 3), cand("b", 9), cand("c", 5)], use_scores=True) == 1


def test_tie_goes_to_the_earliest_candidate():
    assert best_candidate([cand("a", 3), cand("b", 8), cand("c", 8)], use_scores=True) == 1


def test_tie_prefers_complete_over_truncated_even_if_earlier():
    cands = [cand("a", 8, "length"), cand("b", 8), cand("c", 8)]
    assert best_candidate(cands, use_scores=True, prefer_complete=True) == 1
    assert best_candidate(cands, use_scores=True, prefer_complete=False) == 1


def test_truncated_is_deprioritised():
    cands = [cand("cut off but brilliant", 10, "length"), cand("complete", 6)]
    assert best_candidate(cands, use_scores=True, prefer_complete=True) == 1
    assert best_candidate(cands, use_scores=True, prefer_complete=False) == 0
    # Only truncated candidates: still choose among them.
    assert best_candidate([cand("a", 2, "length"), cand("b", 5, "length")], use_scores=True) == 1


def test_blank_and_unscored_never_win():
    cands = [cand("  ", 10), cand("x", None), cand("y", 1)]
    assert best_candidate(cands, use_scores=True) == 2
    assert best_candidate([cand("", 5), cand("z", None)], use_scores=True) is None
    assert best_candidate([cand("", None)], use_scores=False) is None


def test_without_scores_first_complete_wins():
    cands = [cand("", None), cand("a", None, "length"), cand("b", None), cand("c", None)]
    assert best_candidate(cands, use_scores=False) == 2


# ------------------------------------------------------------------------------------ the stage

JUDGE_REPLIES = {
    # Messy formats on purpose: JSON in a fence, "x/10", prose, a lone number.
    "alpha": '```json\n{"reason": "thin", "score": 3}\n```',
    "beta": "Rating: 9/10 - thorough",
    "gamma": "I would give it a 9, nice",
    "delta": "5",
    "junk": "I refuse to grade.",
}


def teacher_script(answers: dict[str, object]):
    def reply(req: ChatRequest):
        prompt = last_user(req)
        for key, out in answers.items():
            if key in prompt:
                return out
        return ["default answer"] * req.n

    return reply


def judge_script(req: ChatRequest):
    prompt = last_user(req)
    if "did not contain a grade" in prompt:
        return "still no grade"
    answer = prompt.split("<answer>\n", 1)[1]
    for key, reply in JUDGE_REPLIES.items():
        if answer.startswith(key):
            return reply
    return "Score: 1"


def distill(records, teacher_answers, judge=judge_script, **cfg):
    teacher = ScriptedLLM(teacher_script(teacher_answers), name="teacher")
    judge_llm = ScriptedLLM(judge, name="judge")
    ctx = make_ctx(teacher, judge_llm)
    config = DistillConfig(judge="judge", **cfg)
    return run(records, ctx, config), teacher, judge_llm


def test_judge_ranking_keeps_all_candidates():
    result, teacher, judge = distill(
        [rec("Explain tides")], {"tides": ["alpha one", "beta two", "gamma three", "delta four"]}
    )
    (out,) = result.kept
    assert out.output == "beta two"  # 9 ties with gamma's 9: the earlier wins
    assert out.meta.best_candidate == 1
    assert out.meta.scores == {"judge": 9.0}
    assert [c["score"] for c in out.meta.candidates] == [3.0, 9.0, 9.0, 5.0]
    assert [c["text"] for c in out.meta.candidates] == ["alpha one", "beta two", "gamma three", "delta four"]
    assert all(c["finish_reason"] == "stop" for c in out.meta.candidates)
    assert out.meta.candidates[0]["reason"] == "thin"
    assert out.meta.model == "teacher" and out.id == "id_Explain tides"
    # One teacher request with native n, one judge request per candidate.
    assert len(teacher.requests) == 1 and teacher.requests[0].n == 4
    assert len(judge.requests) == 4
    assert result.stats["judge_scored"] == 4


def test_truncated_winner_is_avoided():
    trunc = Completion(texts=["beta cut", "delta full"], finish_reasons=["length", "stop"])
    result, _, _ = distill([rec("Explain tides")], {"tides": trunc}, n=2)
    assert result.kept[0].output == "delta full"
    assert result.stats["truncated_candidates"] == 1 and result.stats["winner_truncated"] == 0


def test_min_score_drops_with_reason():
    result, _, _ = distill(
        [rec("Explain tides"), rec("Explain rain")],
        {"tides": ["alpha", "delta"], "rain": ["alpha", "beta"]},
        n=2,
        min_score=6,
    )
    assert [r.output for r in result.kept] == ["beta"]
    (bad,) = result.dropped
    assert bad.meta.drop_reason == "below_min_score"
    assert bad.meta.drop_detail == {"score": 5.0, "min_score": 6}
    assert bad.output == "delta" and len(bad.meta.candidates) == 2


def test_no_valid_candidate_llm_error_and_unscored():
    records = [rec("Explain blanks"), rec("Explain errors"), rec("Explain junk"), rec("")]
    result, _, judge = distill(
        records,
        {
            "blanks": ["", "  "],
            "errors": Completion(error="http_500: teacher down"),
            "junk": ["junk a", "junk b"],
        },
        n=2,
    )
    assert result.kept == []
    reasons = {r.instruction: r.meta.drop_reason for r in result.dropped}
    assert reasons == {
        "Explain blanks": "no_valid_candidate",
        "Explain errors": "llm_error",
        "Explain junk": "unscored",
        "": "empty_instruction",
    }
    assert result.stats["judge_retried"] == 2 and result.stats["judge_unparsed"] == 2
    assert len(judge.requests) == 4  # two candidates, each retried once; blanks never judged


def test_unscored_can_be_kept_unranked():
    result, _, _ = distill([rec("Explain junk")], {"junk": ["junk a", "junk b"]}, n=2, on_unscored="keep",
                           min_score=8)
    (kept,) = result.kept
    assert kept.output == "junk a" and kept.meta.unscored is True
    assert kept.meta.scores == {}  # no invented score, and min_score cannot apply to it


def test_ranker_none_takes_first_complete():
    trunc = Completion(texts=["cut", "whole", "other"], finish_reasons=["length", "stop", "stop"])
    result, _, judge = distill([rec("Explain tides")], {"tides": trunc}, n=3, ranker="none")
    assert result.kept[0].output == "whole" and result.kept[0].meta.scores == {}
    assert judge.requests == []


def test_multi_turn_context_and_system_prompt():
    messages = [
        Message(role="user", content="Name a planet"),
        Message(role="assistant", content="Mars"),
        Message(role="user", content="Tell me about its tides"),
        Message(role="assistant", content="old answer"),
    ]
    record = Record(id="conv", instruction="Name a planet", output="Mars", messages=messages)
    assert [m["content"] for m in record_context(record)] == [
        "Name a planet",
        "Mars",
        "Tell me about its tides",
    ]
    result, teacher, judge = distill(
        [record], {"tides": ["beta new", "alpha new"]}, n=2, system_prompt="Be a tutor."
    )
    sent = teacher.requests[0].messages
    assert sent[0] == ("system", "Be a tutor.") and sent[-1] == ("user", "Tell me about its tides")
    assert len(sent) == 4  # system + three context turns; the old answer is not shown
    (out,) = result.kept
    # The last answer was replaced; `output` stays the first turn's view.
    assert out.output == "Mars" and out.meta.previous_output == "old answer"
    assert [m.content for m in out.messages] == [
        "Name a planet",
        "Mars",
        "Tell me about its tides",
        "beta new",
    ]
    judge_prompt = last_user(judge.requests[0])
    assert "User: Name a planet" in judge_prompt and "Assistant: Mars" in judge_prompt
    assert "Be a tutor" not in judge_prompt


def test_include_existing_lets_the_old_output_compete():
    record = rec("Explain tides", output="gamma from evolve")
    result, _, _ = distill([record], {"tides": ["alpha", "delta"]}, n=2, include_existing=True)
    (out,) = result.kept
    assert out.output == "gamma from evolve" and out.meta.best_candidate == 2
    assert out.meta.candidates[2]["finish_reason"] == "existing"


def test_deterministic_seeds_per_record():
    records = [rec("Explain tides"), rec("Explain rain")]
    _, t1, _ = distill(records, {}, n=2)
    _, t2, _ = distill(list(reversed(records)), {}, n=2)
    seeds1 = {last_user(r): r.seed for r in t1.requests}
    seeds2 = {last_user(r): r.seed for r in t2.requests}
    assert seeds1 == seeds2 and len(set(seeds1.values())) == 2


def test_config_validation():
    with pytest.raises(ValidationError):
        DistillConfig(ranker="reward_model")
    with pytest.raises(ValidationError):
        DistillConfig(ranker="none", min_score=3)
    with pytest.raises(ValidationError):
        DistillConfig(n=0)


def test_ranker_reward_is_the_reward_model_spelling(tmp_path):
    """`ranker: reward` (the issue's spelling) is the same stage as `ranker: reward_model`: same
    config, same stage hash, so run dirs made with either spelling resume each other."""
    import argparse
    from types import SimpleNamespace

    from datagen.cli_config import add_stage_command
    from datagen.pipeline import stage_hash
    from datagen.pipeline_config import StageSpec
    from datagen.stages import distill as distill_module

    path = str(tmp_path / "rm")
    configs = [DistillConfig(ranker=r, reward_model=path) for r in ("reward", "reward_model")]
    configs.append(DistillConfig(reward_model=path))  # the ranker implied by reward_model alone
    assert {c.ranker for c in configs} == {"reward_model"}
    state = SimpleNamespace(global_hash="g")
    hashes = {stage_hash(state, StageSpec(name="distill", label="distill", config=c)) for c in configs}
    assert len(hashes) == 1
    assert configs[0].model_dump(mode="json", by_alias=True)["ranker"] == "reward_model"
    with pytest.raises(ValidationError, match="ranker 'reward' needs reward_model"):
        DistillConfig(ranker="reward")
    with pytest.raises(ValidationError):
        DistillConfig(ranker="rewards", reward_model=path)
    parser = argparse.ArgumentParser()
    add_stage_command(parser.add_subparsers(), distill_module.STAGE)
    args = parser.parse_args(["distill", "--input", "x.jsonl", "--out", "y.jsonl", "--ranker", "reward", "--reward-model", path])
    assert (args.ranker, args.reward_model) == ("reward", path)
    assert DistillConfig(ranker=args.ranker, reward_model=args.reward_model) == configs[1]


# -------------------------------------------------------------------------------- reward model


def build_reward_model(path, texts, chat_template: bool):
    """A tiny random Llama reward model (num_labels=1) with a word-level tokenizer, saved to `path`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]"
    )
    if chat_template:
        fast.chat_template = "{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
    config = LlamaConfig(
        vocab_size=fast.vocab_size + 8,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        num_labels=1,
        pad_token_id=fast.pad_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def expected_scores(path, pairs, chat_template: bool) -> list[float]:
    """One example at a time, no padding: what batched scoring must reproduce."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    for context, answer in pairs:
        if chat_template:
            text = tok.apply_chat_template(
                [*context, {"role": "assistant", "content": answer}], tokenize=False
            )
            enc = tok(text, add_special_tokens=False, return_tensors="pt")
        else:
            enc = tok(context[-1]["content"], answer, return_tensors="pt")
        with torch.inference_mode():
            out.append(float(model(**enc).logits[0, 0]))
    return out


ANSWERS = ["the moon pulls water", "water moves", "tides rise and fall twice each day near coasts", "moon"]


@pytest.mark.parametrize("chat_template", [True, False])
def test_reward_model_scores_match_unbatched(tmp_path, chat_template):
    texts = ["explain tides user assistant :"] + ANSWERS
    path = build_reward_model(tmp_path / "rm", texts, chat_template)
    pairs = [([{"role": "user", "content": "explain tides"}], a) for a in ANSWERS]
    got = reward_scores(str(path), pairs, batch_size=3)
    want = expected_scores(path, pairs, chat_template)
    assert got == pytest.approx(want, abs=1e-4)
    assert len(set(round(s, 6) for s in got)) == len(got)  # a real signal, not a constant


def test_reward_model_ranker_end_to_end(tmp_path):
    texts = ["explain tides user assistant :"] + ANSWERS
    path = build_reward_model(tmp_path / "rm", texts, chat_template=True)
    result, _, judge = distill(
        [rec("explain tides")],
        {"tides": ANSWERS},
        n=4,
        ranker="reward",
        reward_model=str(path),
        reward_batch_size=2,
    )
    want = expected_scores(path, [([{"role": "user", "content": "explain tides"}], a) for a in ANSWERS], True)
    (out,) = result.kept
    best = max(range(4), key=lambda i: (want[i], -i))
    assert out.output == ANSWERS[best]
    assert out.meta.scores["reward"] == pytest.approx(want[best], abs=1e-4)
    assert [c["score"] for c in out.meta.candidates] == pytest.approx(want, abs=1e-4)
    assert judge.requests == []
    # min_score above the best drops the record.
    result, _, _ = distill(
        [rec("explain tides")],
        {"tides": ANSWERS},
        n=4,
        ranker="reward_model",
        reward_model=str(path),
        min_score=max(want) + 1,
    )
    assert [r.meta.drop_reason for r in result.dropped] == ["below_min_score"]


def test_cli_distill(tmp_path, monkeypatch):
    import argparse

    from datagen.cli_config import add_stage_command
    from datagen.context import StageContext
    from datagen.stages import distill as distill_module

    parser = argparse.ArgumentParser()
    add_stage_command(parser.add_subparsers(), distill_module.STAGE)
    src = tmp_path / "in.jsonl"
    src.write_text(
        "\n".join(
            json.dumps({"instruction": t, "input": "", "output": ""})
            for t in ["Explain tides", "Explain rain"]
        )
        + "\n"
    )
    teacher = ScriptedLLM(
        teacher_script({"tides": ["alpha", "beta"], "rain": ["alpha", "delta"]}), name="teacher"
    )
    judge = ScriptedLLM(judge_script, name="judge")
    monkeypatch.setattr(StageContext, "from_args", staticmethod(lambda args: make_ctx(teacher, judge)))
    out, bad = tmp_path / "out.jsonl", tmp_path / "bad.jsonl"
    args = parser.parse_args(
        [
            "distill",
            "--input",
            str(src),
            "--n",
            "2",
            "--judge",
            "judge",
            "--min-score",
            "6",
            "--out",
            str(out),
            "--dropped",
            str(bad),
        ]
    )
    assert args.func(args) == 0
    kept = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["output"] for r in kept] == ["beta"]
    assert [json.loads(line)["meta"]["drop_reason"] for line in bad.read_text().splitlines()] == [
        "below_min_score"
    ]
    assert len(teacher.requests) == 2 and all(r.n == 2 for r in teacher.requests)
