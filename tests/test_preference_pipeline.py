"""seeds → distill (n=3, judged) → preference → SFT → DPO → eval in one pipeline, over the loopback
server with a tiny model: the dpo exports, two model folders, held-out pair accuracy in the
manifest, eval.json and the report, and a rerun that trains nothing."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from pipeline_responder import reply

from datagen.pipeline import Pipeline
from datagen.pipeline_config import validate_config
from datagen.preference_io import read_pairs

pytestmark = pytest.mark.slow

QUESTIONS = [f"Explain fact number {k} about the {w} in two sentences." for k, w in
             enumerate(["ocean", "desert", "forest", "glacier", "volcano", "river", "meadow", "canyon", "island",
                        "tundra", "reef", "marsh"])]
ANSWER = re.compile(r"<answer>\n(.*?)\n</answer>", re.S)
PAIR = re.compile(r"<answer_a>\n(.*?)\n</answer_a>\n\n<answer_b>\n(.*?)\n</answer_b>", re.S)


def responder(messages, choice, seed):
    """Teacher answers from the scripted model; the judge scores each answer by a hash of it (so
    candidates differ), the pairwise eval judge prefers the longer answer."""
    prompt = messages[-1]["content"]
    if "Grade on a scale" in prompt:
        answer = ANSWER.search(prompt).group(1)
        return json.dumps({"reason": "hashed", "score": 2 + hashlib.sha256(answer.encode()).digest()[0] % 8})
    if "<answer_a>" in prompt:
        a, b = PAIR.search(prompt).groups()
        return json.dumps({"reason": "longer", "winner": "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"})
    return reply(messages, choice, seed)


def test_sft_then_dpo_in_one_resumable_run(tmp_path: Path, tiny_model_dir: Path, openai_server):
    data = tmp_path / "seeds.jsonl"
    data.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in QUESTIONS))
    held = tmp_path / "held.jsonl"
    held.write_text(json.dumps({"instruction": "Name a river.", "output": "The Nile."}) + "\n")
    tiny = {"base_model": str(tiny_model_dir), "max_steps": 2, "max_length": 128, "batch_size": 2,
            "num_threads": 1, "sample_prompts": 0, "lr": 1e-3}
    config = validate_config({
        "name": "preftest",
        "llm": "openai:teacher",
        "llm_options": {"openai": {"base_url": openai_server.base_url}},
        "input": {"path": str(data)},
        "stages": [{"distill": {"n": 3, "max_tokens": 64}}, {"preference": {"min_margin": 1}}],
        "export": {"formats": ["records", "alpaca", "dpo", "dpo_text", "hf_dpo"]},
        "finetune": [{**tiny, "method": "full"},
                     {**{k: v for k, v in tiny.items() if k != "base_model"}, "method": "dpo",
                      "lora_target_modules": ["q_proj", "v_proj"], "eval_fraction": 0.25}],
        "eval": {"data": str(held), "max_tokens": 4, "bootstrap_samples": 100, "loss": False},
    }, "t.yaml")
    openai_server.responder = responder
    try:
        result = Pipeline(config).run(run_dir=tmp_path / "run", progress=False)
        run = tmp_path / "run"
        pairs = read_pairs(run / "export" / "dpo.jsonl")
        assert len(pairs) == len(result.records) >= 6
        assert all(p.chosen != p.rejected for p in pairs)
        assert len(read_pairs(run / "export" / "dpo_text.jsonl")) == len(pairs)
        assert (run / "export" / "hf_dpo_dataset").is_dir() and (run / "export" / "alpaca.json").exists()
        assert (run / "model" / "model" / "config.json").exists()
        assert (run / "model_dpo" / "model" / "config.json").exists()
        manifest = json.loads((run / "manifest.json").read_text())
        sft, dpo = manifest["finetune_steps"]
        assert (sft["objective"], dpo["objective"], dpo["folder"]) == ("sft", "dpo", "model_dpo")
        assert dpo["base_model"] == str(run / "model" / "model")  # DPO starts from (and against) the SFT model
        accuracy = dpo["held_out_pair_accuracy"]
        assert accuracy is not None and dpo["eval_pairs"] >= 1
        report = json.loads((run / "eval" / "eval.json").read_text())
        assert len(report["models"]) == 3 and len(report["pairs"]) >= 3  # base vs SFT vs SFT+DPO
        dpo_entry = report["preference"][f"local:{run / 'model_dpo'}"]
        assert dpo_entry["held_out_pair_accuracy"] == accuracy
        # By default eval also measures SFT and SFT+DPO against the base on the DPO step's held-out pairs.
        for folder in ("model", "model_dpo"):
            measured = report["preference"][f"local:{run / folder}"]["implicit_reward"]
            assert measured["pairs"] == dpo["eval_pairs"] and measured["reference"] == f"local:{tiny_model_dir}"
            assert 0.0 <= measured["pair_accuracy"] <= 1.0
        assert "Held-out pair accuracy" in (run / "report.html").read_text()
        assert "held-out pair accuracy" in (run / "report.html").read_text()
        # A rerun trains nothing: both steps are finished.
        before = {p: (run / p / "done.json").stat().st_mtime_ns for p in ("model", "model_dpo")}
        Pipeline(config).run(run_dir=run, progress=False)
        assert before == {p: (run / p / "done.json").stat().st_mtime_ns for p in ("model", "model_dpo")}
    finally:
        openai_server.responder = None
