"""End-to-end fine-tuning on the embedded SmolLM2-135M (slow: loads and trains the real model).

Kept tiny: 8 records, 3 optimizer steps, 256-token rows, one thread."""

from __future__ import annotations

import json

import pytest
import torch

from datagen.records import Message, Record
from finetune.template import has_generation_markers
from finetune.train import FinetuneConfig, train

pytestmark = pytest.mark.slow

QA = [
    ("What is the boiling point of water at sea level in Celsius?", "", "100 degrees Celsius."),
    ("Translate to French.", "Good night", "Bonne nuit."),
    ("Give a synonym for 'happy'.", "", "Joyful."),
    ("Sort these numbers in ascending order.", "5, 2, 9, 1", "1, 2, 5, 9"),
    ("Is this review positive or negative?", "The food was cold and bland.", "Negative."),
    ("Name the largest planet in the solar system.", "", "Jupiter."),
    ("Write a one-line slogan for a bakery.", "", "Fresh from our oven to your table, every morning."),
]


def _records() -> list[Record]:
    records = [Record(id=f"qa{i}", instruction=q, input=i_, output=a) for i, (q, i_, a) in enumerate(QA)]
    records.append(
        Record(
            id="multi",
            instruction="Hi",
            messages=[
                Message(role="user", content="Hi"),
                Message(role="assistant", content="Hello! How can I help?"),
                Message(role="user", content="What is 2 + 3?"),
                Message(role="assistant", content="2 + 3 = 5."),
            ],
        )
    )
    return records


@pytest.mark.parametrize("method", ["lora", "full"])
def test_train_end_to_end_saves_a_loadable_model(tmp_path, method: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from datagen.embedded import embedded_model_dir

    out = tmp_path / f"ft-{method}"
    config = FinetuneConfig(
        method=method, max_steps=3, max_length=256, batch_size=2, num_threads=1, eval_fraction=0.25,
        sample_prompts=2, sample_max_new_tokens=16, lr=1e-3 if method == "lora" else 1e-4,
    )
    metrics = train(_records(), config, out, progress=False)

    assert not list(tmp_path.glob(".*"))  # the temp folder was renamed, nothing left behind
    expected = {"metrics.json", "samples.jsonl", "samples.md", "model", "train_log.json", "finetune_config.json",
                "training_chat_template.jinja"} | ({"adapter"} if method == "lora" else set())
    assert expected <= {p.name for p in out.iterdir()}
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert metrics["steps"] == 3 and metrics["train_examples"] == 6 and metrics["eval_examples"] == 2
    assert metrics["train_tokens"] > 0 and metrics["tokens_per_second"] > 0
    for key in ("train_loss", "eval_loss_before", "eval_loss_after"):
        assert 0 < metrics[key] < 20
    assert metrics["chat_template_source"] == "chatml" and metrics["packing"] == "bfd"
    assert 0 < metrics["assistant_tokens"] < metrics["train_dataset_tokens"]
    if method == "lora":
        assert (out / "adapter" / "adapter_config.json").exists()
        assert (out / "adapter" / "adapter_model.safetensors").exists()
        assert metrics["trainable_params"] < metrics["total_params"] / 10
    else:
        assert metrics["trainable_params"] == metrics["total_params"]

    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all({"prompt", "reference", "base", "tuned"} <= set(s) for s in samples)
    assert "### Tuned model" in (out / "samples.md").read_text()

    tok = AutoTokenizer.from_pretrained(out / "model")
    assert not has_generation_markers(tok.chat_template)  # saved with the stock template
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(model.state_dict()[name], base.state_dict()[name])  # training changed the weights
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        generated = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] > enc["input_ids"].shape[1]


def test_packed_loss_matches_separate_loss_on_the_embedded_model(tmp_path) -> None:
    import torch.nn.functional as F
    from finetune_helpers import examples, smol_tokenizer
    from transformers import AutoModelForCausalLM

    from datagen.embedded import embedded_model_dir
    from finetune.trainer_setup import make_trainer, prepare_tokenizer

    torch.set_num_threads(1)
    config = FinetuneConfig(method="full", packing=True, max_length=256, eval_fraction=0)
    tok = smol_tokenizer()
    prepare_tokenizer(tok, config, [e["messages"] for e in examples()])
    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    trainer = make_trainer(model, tok, examples(), [], config, tmp_path / "t")
    row = max(trainer.train_dataset, key=lambda r: len(r["seq_lengths"]))
    assert len(row["seq_lengths"]) > 1
    batch = trainer.data_collator([row])
    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    model = trainer.model.eval()
    with torch.inference_mode():
        logits = model(**inputs).logits[0]
        packed = F.cross_entropy(logits[:-1], labels[0, 1:], ignore_index=-100, reduction="sum")
        total, start = 0.0, 0
        for length in row["seq_lengths"]:
            ids = batch["input_ids"][:, start : start + length]
            one = model(input_ids=ids).logits[0]
            total += F.cross_entropy(one[:-1], labels[0, start + 1 : start + length], ignore_index=-100, reduction="sum")
            start += length
    n = int((labels[0, 1:] != -100).sum())
    assert abs(packed.item() / n - float(total) / n) < 1e-4
