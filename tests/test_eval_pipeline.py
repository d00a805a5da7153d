"""A pipeline with decontaminate → finetune → eval on a tiny model, judged over the loopback server,
and the report that shows it. Also: eval's teacher-forced loss agrees with the trainer's eval loss."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from datagen.pipeline import Pipeline
from datagen.pipeline_config import validate_config
from datagen.records import Record

pytestmark = pytest.mark.slow

QA = [
    ("What is the boiling point of water at sea level in degrees Celsius?", "100 degrees Celsius."),
    ("Give a synonym for happy.", "Joyful."),
    ("Name the largest planet in the solar system.", "Jupiter is the largest planet."),
    ("Write a one-line slogan for a bakery.", "Fresh from our oven to your table, every morning."),
    ("Translate good night into French.", "Bonne nuit."),
    ("What colour is the sky on a clear day?", "Blue."),
    ("How many legs does a spider have?", "Eight."),
    ("Name a primary colour.", "Red."),
]
HELD_OUT = [
    # the first one is also in the training data: decontamination must drop it there
    {"instruction": QA[0][0], "output": QA[0][1]},
    {"instruction": "Name the capital city of Italy.", "output": "Rome."},
    {"instruction": "What do bees make?", "output": "Honey."},
]
PAIR = re.compile(r"<answer_a>\n(.*?)\n</answer_a>\n\n<answer_b>\n(.*?)\n</answer_b>", re.S)


def longer_wins(messages, choice, seed):
    a, b = PAIR.search(messages[-1]["content"]).groups()
    winner = "A" if len(a) > len(b) else "B" if len(b) > len(a) else "tie"
    return json.dumps({"reason": "longer", "winner": winner})


def _files(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in QA))
    held = tmp_path / "heldout.jsonl"
    held.write_text("".join(json.dumps(r) + "\n" for r in HELD_OUT))
    return data, held


def test_pipeline_eval_section_and_report(tmp_path: Path, tiny_model_dir: Path, openai_server):
    data, held = _files(tmp_path)
    config = validate_config({
        "name": "evaltest",
        "llm": "openai:judge",
        "llm_options": {"openai": {"base_url": openai_server.base_url}},
        "input": {"path": str(data)},
        "stages": [{"decontaminate": {"held_out": [str(held)], "semantic": False}}],
        "export": {"formats": ["records"]},
        "finetune": {"base_model": str(tiny_model_dir), "method": "full", "max_steps": 2, "max_length": 128,
                     "batch_size": 2, "num_threads": 1, "eval_fraction": 0.25, "sample_prompts": 1,
                     "sample_max_new_tokens": 4, "lr": 1e-3},
        "eval": {"data": str(held), "max_tokens": 6, "bootstrap_samples": 200, "require_decontaminated": True},
    }, "t.yaml")
    openai_server.responder = longer_wins
    try:
        result = Pipeline(config).run(run_dir=tmp_path / "run", progress=False)
    finally:
        openai_server.responder = None
    run_dir = tmp_path / "run"
    assert len(result.records) == len(QA) - 1  # the held-out question was dropped from training
    report = json.loads((run_dir / "eval" / "eval.json").read_text())
    base, tuned = f"local:{tiny_model_dir}", f"local:{run_dir / 'model' / 'model'}"
    assert report["models"] == [base, tuned]
    assert report["contamination"]["status"] == "decontaminated"
    assert [(p["first"], p["second"]) for p in report["pairs"]] == [(tuned, base), (base, "reference"),
                                                                    (tuned, "reference")]
    assert all(p["n"] == 3 for p in report["pairs"])
    assert set(report["loss"]) == {base, tuned} and all(v["loss"] > 0 for v in report["loss"].values())
    # judged over real sockets: two orders per pair and prompt, minus pairs with a blank answer
    assert 0 < openai_server.stats.requests <= 3 * 3 * 2
    assert result.manifest["eval"]["pairs"] == report["pairs"]

    html = (run_dir / "report.html").read_text()
    assert "<h2>Evaluation</h2>" in html and "win-rate of the first model" in html
    assert "<h2>Decontamination (decontaminate)</h2>" in html and QA[0][0] in html
    assert "Loss per optimizer step" in html and "<polyline" in html
    assert "base model</th><th>tuned model" in html
    assert "words per answer" in html  # labelled histogram axes
    assert "<h2>Dataset profile</h2>" in html and "ROUGE-L to the nearest input instruction" in html
    profile = json.loads((run_dir / "profile.json").read_text())
    assert set(profile) == {"input", "decontaminate"}
    assert profile["decontaminate"]["profile"]["rouge_l_to_seed"] == [1.0] * (len(QA) - 1)  # nothing new here
    assert profile["decontaminate"]["profile"]["clusters"] >= 1


def test_eval_refuses_a_set_the_run_did_not_screen(tmp_path: Path, tiny_model_dir: Path):
    from datagen.context import StageContext
    from datagen.eval import EvalConfig, run_eval

    data, held = _files(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "model").mkdir(parents=True)
    (run_dir / "manifest.json").write_text(json.dumps({"stages": []}))
    config = EvalConfig(data=str(held), models=[str(tiny_model_dir), str(run_dir / "model")],
                        require_decontaminated=True)
    (run_dir / "model" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="NOT decontaminated"):
        run_eval(config, tmp_path / "out", StageContext(progress=False))


def test_eval_loss_matches_the_trainers_eval_loss(tmp_path: Path, tiny_model_dir: Path):
    """The number `datagen eval` reports for a local model is the trainer's own eval loss on the
    same examples (same template, same assistant-only mask)."""
    from finetune.data import records_to_examples, split_examples
    from finetune.loss import teacher_forced_loss
    from finetune.train import FinetuneConfig, train

    records = [Record(id=f"q{i}", instruction=q, output=a) for i, (q, a) in enumerate(QA)]
    config = FinetuneConfig(base_model=str(tiny_model_dir), method="full", max_steps=2, max_length=128,
                            batch_size=2, num_threads=1, eval_fraction=0.25, sample_prompts=0, lr=1e-3,
                            merged_dtype="float32")
    metrics = train(records, config, tmp_path / "ft", progress=False)
    _, eval_ex = split_examples(records_to_examples(records)[0], config.eval_fraction, config.seed)
    ours = teacher_forced_loss(tmp_path / "ft" / "model", eval_ex)
    assert ours["loss"] == pytest.approx(metrics["eval_loss_after"], abs=1e-4)
    base = teacher_forced_loss(tiny_model_dir, eval_ex)
    assert base["loss"] == pytest.approx(metrics["eval_loss_before"], abs=1e-4)


def test_study_trains_both_arms_on_equal_tokens_and_evaluates(tmp_path: Path, tiny_model_dir: Path, openai_server):
    import yaml

    from datagen.study import load_study, match_token_budget, run_study

    data, held = _files(tmp_path)
    bad = [{"instruction": f"Explain topic {i} carefully.", "output": "I'm sorry, but I cannot help with that."}
           for i in range(4)]
    with data.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in bad)
    spec = {
        "name": "study", "llm": "openai:judge", "llm_options": {"openai": {"base_url": openai_server.base_url}},
        "input": {"path": str(data)},
        "stages": [{"decontaminate": {"held_out": [str(held)], "semantic": False}}, {"quality": {"judge": False, "min_output_words": 1}}],
        "export": {"formats": ["records"]},
        "study": {"raw_stage": "decontaminate", "held_out": str(held),
                  "finetune": {"base_model": str(tiny_model_dir), "method": "full", "max_steps": 1, "max_length": 128,
                               "num_threads": 1, "eval_fraction": 0, "sample_prompts": 0},
                  "eval": {"max_tokens": 4, "bootstrap_samples": 100}},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    pipeline, study = load_study(path)
    openai_server.responder = longer_wins
    try:
        result = run_study(pipeline, study, tmp_path / "run", progress=False)
    finally:
        openai_server.responder = None
    arms = result["arms"]
    assert arms["curated"]["records"] == len(QA) - 1  # the refusals were curated away
    assert result["raw_pool"] == len(QA) - 1 + len(bad)
    assert arms["raw"]["tokens"] >= result["curated_tokens"] == arms["curated"]["tokens"]
    assert [row["model"] for row in result["table"]] == ["base", "raw", "curated"]
    assert set(result["table"][2]) >= {"vs_base", "vs_raw", "vs_reference", "loss"}
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Study: curated vs raw" in html and "Smoke run" in html

    # equal budgets: the subset stops at the first record that reaches the budget
    pool = [Record(id=str(i), instruction="x", output="y") for i in range(10)]
    chosen = match_token_budget(pool, lambda r: 10, 35)
    assert len(chosen) == 4 and chosen == sorted(chosen, key=lambda r: int(r.id))


def test_study_config_errors(tmp_path: Path):
    import yaml

    from datagen.config_errors import ConfigError
    from datagen.study import load_study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"stages": [{"dedup": {}}], "study": {"raw_stage": "dedupe", "held_out": "h"}}))
    with pytest.raises(ConfigError, match="study.raw_stage: 'dedupe' is not a stage"):
        load_study(path)
    path.write_text(yaml.safe_dump({"stages": [{"dedup": {}}], "finetune": {}, "study": {"raw_stage": "dedup",
                                                                                          "held_out": "h"}}))
    with pytest.raises(ConfigError, match="put it under study.finetune"):
        load_study(path)


def test_shipped_study_pipeline_loads():
    from datagen.study import load_study

    pipeline, study = load_study(Path(__file__).resolve().parent.parent / "pipelines" / "study.yaml")
    assert study.raw_stage == "decontaminate" and pipeline.config.stage_specs()
