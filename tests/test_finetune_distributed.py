"""`launcher: accelerate`: 2 CPU processes (DDP over gloo) train like 1 process.

A tiny random Llama with the real tokenizer is saved to a folder so that `accelerate launch`
workers (separate processes) load the same weights. Each process accumulates half the
optimizer batch; the gathered gradient is the single-process one, so the loss curves agree
up to float summation order.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from finetune_helpers import CONVERSATIONS, smol_tokenizer, tiny_llama

from datagen.records import Record
from finetune.distributed import launch_args, strategy
from finetune.train import FinetuneConfig, build_sft_config, train

pytestmark = pytest.mark.slow  # two launched training processes, ~1 min on 2 busy cores


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = smol_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _records() -> list[Record]:
    out = []
    for k in range(4):
        for i, conv in enumerate(CONVERSATIONS):
            out.append(Record(id=f"r{k}-{i}", instruction=f"{k}: {conv[-2]['content']}", output=conv[-1]["content"]))
    return out


def _config(model_dir: Path, **changes) -> FinetuneConfig:
    return FinetuneConfig(base_model=str(model_dir), method="lora", max_steps=6, batch_size=4, max_length=256,
                          eval_fraction=0.0, sample_prompts=0, lora_dropout=0.0, save_merged=False,
                          num_threads=1, warmup_ratio=0.0, lr=1e-3, cpu=True, **changes)


def _losses(out: Path) -> list[float]:
    return [h["loss"] for h in json.loads((out / "train_log.json").read_text()) if "loss" in h]


@pytest.mark.parametrize("method,expected", [("lora", "ddp"), ("full", "fsdp")])
def test_two_processes_give_the_single_process_loss_curve(tmp_path: Path, tiny_model_dir: Path, method: str,
                                                          expected: str) -> None:
    single = train(_records(), _config(tiny_model_dir).model_copy(update={"method": method}), tmp_path / "one",
                   progress=False)
    two_processes = _config(tiny_model_dir, launcher="accelerate", num_processes=2).model_copy(update={"method": method})
    double = train(_records(), two_processes, tmp_path / "two", progress=False)
    assert double["num_processes"] == 2 and double["distributed"] == expected
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(one) == len(two) == 6
    assert one[0] != one[-1]  # it really trained
    assert two == pytest.approx(one, rel=2e-3, abs=1e-4)
    assert single["steps"] == double["steps"] == 6
    assert not (tmp_path / "two" / "_launch").exists()
    if method == "lora":
        assert (tmp_path / "two" / "adapter" / "adapter_config.json").exists()
    else:  # FSDP gathered the shards into one full checkpoint: the same weights as 1 process
        from safetensors.torch import load_file

        a = load_file(tmp_path / "one" / "model" / "model.safetensors")
        b = load_file(tmp_path / "two" / "model" / "model.safetensors")
        assert a.keys() == b.keys()
        assert all((a[k].float() - b[k].float()).abs().max() < 1e-3 for k in a)


def test_launch_options_and_batch_split(tiny_model_dir: Path) -> None:
    lora = _config(tiny_model_dir, launcher="accelerate", num_processes=2)
    assert strategy(lora) == "ddp" and "--multi_gpu" in launch_args(lora, 29500)
    full = lora.model_copy(update={"method": "full"})
    assert strategy(full) == "fsdp"
    args = launch_args(full, 29500)
    assert args[args.index("--fsdp_state_dict_type") + 1] == "FULL_STATE_DICT" and "--multi_gpu" not in args
    # The optimizer batch (4 packed rows on CPU) is split: 2 passes per process.
    assert build_sft_config(lora, "/tmp/x", has_eval=False).gradient_accumulation_steps == 2
    assert build_sft_config(_config(tiny_model_dir), "/tmp/x", has_eval=False).gradient_accumulation_steps == 4
    with pytest.raises(ValueError, match="num_processes 3 must divide the optimizer batch of 4"):
        build_sft_config(lora.model_copy(update={"num_processes": 3}), "/tmp/x", has_eval=False)
