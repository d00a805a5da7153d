"""`datagen eval --pairs`: held-out pair accuracy (implicit reward) of local models against a
reference, on a tiny model the tests train with DPO; bad pair files are `path:line` errors."""

from __future__ import annotations

import json

import pytest
from test_finetune_dpo import pair_record

from datagen.cli import main
from datagen.eval import EvalConfig, plan_pair_accuracy
from finetune.config import FinetuneConfig
from finetune.dpo import implicit_reward_accuracy, load_pairs
from finetune.train import train


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, tiny_model_dir):
    """A full-DPO model trained from the tiny base on 12 planted pairs, 3 held out (one eval batch,
    so TRL's batch-averaged held-out figures are exact shares)."""
    folder = tmp_path_factory.mktemp("dpo")
    records = [pair_record(k) for k in range(12)]
    config = FinetuneConfig(base_model=str(tiny_model_dir), objective="dpo", method="full", max_steps=6,
                            batch_size=4, lr=5e-3, eval_fraction=0.25, max_length=64, cpu=True, num_threads=1)
    metrics = train(records, config, folder / "model_dpo", progress=False)
    pairs = folder / "all_pairs.jsonl"
    with pairs.open("w") as fh:
        for record in records:
            fh.write(json.dumps({"prompt": record.instruction, "chosen": record.meta.chosen,
                                 "rejected": record.meta.rejected}) + "\n")
    return folder, metrics, pairs


def test_eval_repeats_the_dpo_steps_held_out_pair_accuracy(dpo_run, tiny_model_dir, capsys):
    folder, metrics, _ = dpo_run
    held_out = folder / "model_dpo" / "held_out_pairs.jsonl"
    assert len(load_pairs(held_out)) == metrics["eval_pairs"] == 3
    out = folder / "eval"
    assert main(["eval", "--models", f"local:{tiny_model_dir}", f"local:{folder / 'model_dpo'}",
                 "--pairs", str(held_out), "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "eval.json").read_text())
    assert report["data"] is None and report["pairs"] == []  # nothing answered or judged
    measured = report["preference"][f"local:{folder / 'model_dpo'}"]["implicit_reward"]
    assert measured["reference"] == f"local:{tiny_model_dir}" and measured["pairs"] == 3
    # Same pairs, same model, same reference (full DPO: the base): the step's own figures.
    assert measured["pair_accuracy"] == pytest.approx(metrics["held_out_pair_accuracy"])
    assert measured["reward_margin"] == pytest.approx(metrics["held_out_reward_margin"], rel=1e-3, abs=1e-4)
    printed = capsys.readouterr().out
    assert "pair accuracy" in printed and "(reference)" in printed


def test_dpo_model_prefers_its_training_pairs_and_the_base_does_not(dpo_run, tiny_model_dir):
    folder, _, pairs = dpo_run
    trained = implicit_reward_accuracy(folder / "model_dpo" / "model", tiny_model_dir, pairs, beta=0.1,
                                       max_length=64, cpu=True)
    assert trained["pairs"] == 12 and trained["pair_accuracy"] >= 0.75 and trained["reward_margin"] > 0
    itself = implicit_reward_accuracy(tiny_model_dir, tiny_model_dir, pairs, max_length=64, cpu=True)
    assert itself["pair_accuracy"] == 0.0 and itself["reward_margin"] == pytest.approx(0.0, abs=1e-6)
    # beta scales the margin only.
    doubled = implicit_reward_accuracy(folder / "model_dpo" / "model", tiny_model_dir, pairs, beta=0.2,
                                       max_length=64, cpu=True)
    assert doubled["pair_accuracy"] == trained["pair_accuracy"]
    assert doubled["reward_margin"] == pytest.approx(2 * trained["reward_margin"], rel=1e-3)


def test_reference_option_and_models_that_cannot_be_measured(dpo_run, tiny_model_dir, tmp_path):
    folder, _, pairs = dpo_run
    dpo = f"local:{folder / 'model_dpo'}"
    plan = plan_pair_accuracy(EvalConfig(models=[f"local:{tiny_model_dir}", dpo, "openai:gpt-4o"], pairs=str(pairs),
                                         reference=dpo))
    assert plan.reference[0] == dpo and [spec for spec, _ in plan.models] == [f"local:{tiny_model_dir}"]
    with pytest.raises(ValueError, match="needs a local reference model"):
        plan_pair_accuracy(EvalConfig(models=["openai:a", "openai:b"], pairs=str(pairs)))
    with pytest.raises(ValueError, match="a local model besides the reference"):
        plan_pair_accuracy(EvalConfig(models=[dpo], pairs=str(pairs)))
    with pytest.raises(FileNotFoundError, match="no such pairs file"):
        plan_pair_accuracy(EvalConfig(models=[dpo], pairs=str(tmp_path / "none.jsonl")))


def test_bad_pairs_files_are_path_line_errors(tmp_path, tiny_model_dir, capsys):
    good = {"prompt": "Q?", "chosen": "yes, because", "rejected": "no"}
    cases = {
        "identical.jsonl": [good, {**good, "rejected": good["chosen"]}],
        "missing.jsonl": [good, good, {"prompt": "Q?", "chosen": "a"}],
        "empty_prompt.jsonl": [{**good, "prompt": "  "}],
    }
    expected = {"identical.jsonl": ":2: chosen and rejected are identical", "missing.jsonl": ":3: rejected is missing",
                "empty_prompt.jsonl": ":1: prompt is empty"}
    # A preference records file: the bad record's line.
    records = [pair_record(k).model_dump(mode="json") for k in range(3)]
    records[1]["meta"]["rejected"] = records[1]["meta"]["chosen"]
    cases["records.jsonl"] = records
    expected["records.jsonl"] = ":2: record p1: chosen and rejected are identical"
    for name, rows in cases.items():
        path = tmp_path / name
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        code = main(["eval", "--models", f"local:{tiny_model_dir}", f"local:{tiny_model_dir}", "--pairs", str(path),
                     "--out", str(tmp_path / "out"), "--no-progress"])
        err = capsys.readouterr().err
        assert code != 0 and f"{path}{expected[name]}" in err, err
        assert not (tmp_path / "out" / "eval.json").exists()
    assert main(["eval", "--models", "local", "--out", str(tmp_path / "out")]) != 0
    assert "--data (held-out prompts), --pairs" in capsys.readouterr().err


def test_pipeline_eval_needs_prompts_unless_a_dpo_step_holds_pairs_out(tmp_path):
    from datagen.config_errors import ConfigError
    from datagen.pipeline_config import validate_config

    base = {"name": "p", "llm": "local", "input": {"path": "seeds.jsonl"}, "stages": [], "eval": {}}
    with pytest.raises(ConfigError, match="eval.data: give held-out prompts"):
        validate_config({**base, "finetune": {"method": "lora"}}, "p.yaml")
    config = validate_config({**base, "finetune": [{"method": "lora"}, {"method": "dpo"}]}, "p.yaml")
    assert config.eval == {}
