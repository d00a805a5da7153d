"""DPO through TRL's DPOTrainer on a tiny random model: the pair split, the config, a real run."""

from __future__ import annotations

import json

import pytest

from datagen.records import Record, RecordMeta
from finetune.config import FinetuneConfig
from finetune.dpo import build_dpo_config, load_pairs, pair_rows, split_pairs
from finetune.train import train


def pair_record(k: int, prompt: str | None = None) -> Record:
    good, bad = f"The answer is {k} and here is why it holds.", f"no idea {k}"
    return Record(id=f"p{k}", instruction=prompt or f"Question number {k}?", output=good,
                  meta=RecordMeta(chosen=good, rejected=bad, chosen_score=9, rejected_score=2))


def test_method_dpo_is_lora_dpo_with_dpo_learning_rates():
    config = FinetuneConfig(method="dpo", beta=0.2, loss_type=["sigmoid", "sft"])
    assert (config.objective, config.method, config.learning_rate) == ("dpo", "lora", 5e-5)
    assert FinetuneConfig(objective="dpo", method="full").learning_rate == 5e-7
    dpo = build_dpo_config(config, "/tmp/x", has_eval=True, progress=False)
    assert (dpo.beta, dpo.loss_type) == (0.2, ["sigmoid", "sft"])
    with pytest.raises(ValueError, match="unknown DPO loss_type 'nope'"):
        FinetuneConfig(method="dpo", loss_type="nope")
    with pytest.raises(ValueError, match="launcher: none"):
        FinetuneConfig(method="dpo", launcher="accelerate")


def test_every_pair_of_a_prompt_lands_on_one_side():
    records = [pair_record(k, prompt=f"shared {k % 5}") for k in range(20)]
    rows = pair_rows(load_pairs(records))
    train_rows, eval_rows = split_pairs(rows, 0.4, seed=0)
    train_prompts = {r["prompt"][0]["content"] for r in train_rows}
    eval_prompts = {r["prompt"][0]["content"] for r in eval_rows}
    assert len(eval_prompts) == 2 and not train_prompts & eval_prompts
    assert len(train_rows) + len(eval_rows) == 20


def test_records_without_a_real_pair_are_refused():
    bad = pair_record(1)
    bad.meta.rejected = bad.meta.chosen
    with pytest.raises(ValueError, match="record p1: chosen and rejected are identical"):
        load_pairs([bad])
    with pytest.raises(ValueError, match="record p2: no preference pair"):
        load_pairs([Record(id="p2", instruction="q", output="a")])


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_trains_and_reports_held_out_pair_accuracy(tmp_path, tiny_model_dir, method):
    records = [pair_record(k) for k in range(12)]
    config = FinetuneConfig(base_model=str(tiny_model_dir), objective="dpo", method=method, max_steps=4,
                            batch_size=4, lr=5e-3, eval_fraction=0.25, max_length=64, lora_r=4,
                            lora_target_modules=["q_proj", "v_proj"], cpu=True)
    metrics = train(records, config, tmp_path / "model_dpo", progress=False)
    out = tmp_path / "model_dpo"
    assert (out / "model" / "config.json").exists() and (out / "metrics.json").exists()
    assert (out / "adapter").exists() == (method == "lora")
    assert metrics["steps"] == 4 and metrics["eval_pairs"] == 3 and metrics["train_pairs"] == 9
    assert [s for s, _ in metrics["loss_curve"]] == [1, 2, 3, 4]
    # Identical start and reference: zero margin and no pair preferred before training.
    assert metrics["held_out_before"]["reward_margin"] == 0.0
    assert 0.0 <= metrics["held_out_pair_accuracy"] <= 1.0
    assert metrics["held_out_reward_margin"] != 0.0
    assert json.loads((out / "metrics.json").read_text())["objective"] == "dpo"
