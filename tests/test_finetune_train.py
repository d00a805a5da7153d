"""finetune.train with a tiny random Llama (real tokenizer and template): loss masking, packing
isolation, NEFTune and LoRA wiring, config validation, CLI mapping, atomic output."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from finetune_helpers import CONVERSATIONS, examples, smol_tokenizer, tiny_llama
from pydantic import ValidationError

from finetune.train import FinetuneConfig
from finetune.trainer_setup import build_peft_config, build_sft_config, make_trainer, prepare_tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared; these models are tiny anyway
    yield
    torch.set_num_threads(before)


def _trainer(tmp_path: Path, config: FinetuneConfig, exs=None, model=None):
    exs = exs or examples()
    tok = smol_tokenizer()
    prepare_tokenizer(tok, config, [e["messages"] for e in exs])
    model = model or tiny_llama(len(tok))
    return make_trainer(model, tok, exs, [], config, tmp_path / "trainer"), tok


def _unmasked_spans(input_ids: list[int], labels: list[int]) -> list[list[int]]:
    spans, current = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label != -100:
            assert label == token  # a trained position predicts its own token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return spans


def _expected_spans(messages: list[dict[str, str]]) -> list[str]:
    # What the template marks: each assistant turn's content plus its end-of-turn token.
    return [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]


# ----------------------------------------------------------------------------- loss masking


def test_labels_are_masked_on_exactly_the_non_assistant_tokens(tmp_path) -> None:
    config = FinetuneConfig(method="full", packing=False, max_length=1024, eval_fraction=0)
    trainer, tok = _trainer(tmp_path, config)
    rows = list(trainer.train_dataset)
    assert len(rows) == len(CONVERSATIONS)
    assert any(sum(m["role"] == "assistant" for m in c) > 1 for c in CONVERSATIONS)  # multi-turn covered
    for row, messages in zip(rows, CONVERSATIONS, strict=True):
        spans = _unmasked_spans(row["input_ids"], row["labels"])
        decoded = [tok.decode(span, skip_special_tokens=False) for span in spans]
        assert decoded == _expected_spans(messages)
        # and the masked rest is exactly the prompt side: system/user turns and the assistant headers
        masked = [t for t, lab in zip(row["input_ids"], row["labels"], strict=True) if lab == -100]
        assert tok.decode(masked, skip_special_tokens=False).count("<|im_start|>assistant\n") == len(spans)


def test_packed_rows_keep_the_same_masks_and_drop_the_boundary_label(tmp_path) -> None:
    config = FinetuneConfig(method="full", packing=True, max_length=256, eval_fraction=0)
    trainer, tok = _trainer(tmp_path, config)
    rows = list(trainer.train_dataset)
    assert len(rows) < len(CONVERSATIONS)  # several examples share a row
    decoded = []
    for row in rows:
        assert len(row["input_ids"]) <= 256 and sum(row["seq_lengths"]) == len(row["input_ids"])
        spans = _unmasked_spans(row["input_ids"], row["labels"])
        decoded += [tok.decode(span, skip_special_tokens=False) for span in spans]
    expected = [s for messages in CONVERSATIONS for s in _expected_spans(messages)]
    assert sorted(decoded) == sorted(expected)
    batch = trainer.data_collator([rows[0]])
    assert "attention_mask" not in batch  # padding-free: isolation comes from the position ids
    assert (batch["labels"][batch["position_ids"] == 0] == -100).all()


def test_without_assistant_only_loss_every_token_is_trained(tmp_path) -> None:
    config = FinetuneConfig(method="full", packing=False, assistant_only_loss=False, max_length=1024, eval_fraction=0)
    trainer, _ = _trainer(tmp_path, config)
    for row in trainer.train_dataset:
        assert row["labels"] == row["input_ids"]


# ----------------------------------------------------------------------------- packing isolation


def _token_losses(model, input_ids, labels, **kwargs) -> torch.Tensor:
    logits = model(input_ids=input_ids, **kwargs).logits[0]
    return F.cross_entropy(logits[:-1], labels[0, 1:], ignore_index=-100, reduction="sum")


def test_packed_loss_equals_per_example_loss(tmp_path) -> None:
    config = FinetuneConfig(method="full", packing=True, max_length=256, eval_fraction=0)
    trainer, _ = _trainer(tmp_path, config)
    model = trainer.model.eval()
    checked = 0
    with torch.no_grad():
        for row in trainer.train_dataset:
            batch = trainer.data_collator([row])
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            labels = batch["labels"]
            n_tokens = int((labels[0, 1:] != -100).sum())
            packed = _token_losses(model, labels=labels, **inputs) / n_tokens

            separate_sum, separate_n, start = torch.tensor(0.0), 0, 0
            for length in row["seq_lengths"]:
                ids = batch["input_ids"][:, start : start + length]
                lab = labels[:, start : start + length]
                separate_sum += _token_losses(model, ids, lab)
                separate_n += int((lab[0, 1:] != -100).sum())
                start += length
            assert separate_n == n_tokens
            assert abs(packed.item() - (separate_sum / separate_n).item()) < 1e-4

            if len(row["seq_lengths"]) > 1:
                # Negative control: the same row as one causal sequence (what "wrapped" packing does)
                # lets examples attend to each other, and the loss moves well beyond the tolerance.
                leaky = _token_losses(model, batch["input_ids"], labels) / n_tokens
                assert abs(leaky.item() - packed.item()) > 1e-3
                checked += 1
    assert checked >= 1


def test_config_never_uses_wrapped_packing() -> None:
    assert build_sft_config(FinetuneConfig(), "x", has_eval=False).packing_strategy == "bfd"
    with pytest.raises(ValidationError):
        FinetuneConfig(packing_strategy="wrapped")


# ----------------------------------------------------------------------------- NEFTune, LoRA, CPU settings


def test_neftune_alpha_passes_through_to_the_trainer(tmp_path) -> None:
    from transformers import TrainerCallback

    assert build_sft_config(FinetuneConfig(), "x", has_eval=False).neftune_noise_alpha is None
    config = FinetuneConfig(method="full", neftune_noise_alpha=7.5, max_steps=1, max_length=256, eval_fraction=0)
    assert build_sft_config(config, "x", has_eval=False).neftune_noise_alpha == 7.5
    trainer, _ = _trainer(tmp_path, config)
    seen = []

    class Spy(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            seen.append(getattr(trainer.model.get_input_embeddings(), "neftune_noise_alpha", None))

    trainer.add_callback(Spy())
    trainer.train()
    assert seen == [7.5]  # the noise hook is on the embeddings while training


def test_lora_defaults_and_wiring(tmp_path) -> None:
    config = FinetuneConfig()
    assert (config.method, config.learning_rate, config.epochs, config.warmup_ratio, config.lr_scheduler) == (
        "lora", 2e-4, 3.0, 0.03, "cosine")
    assert config.max_length == 2048 and config.packing and config.assistant_only_loss
    assert FinetuneConfig(method="full").learning_rate == 2e-5
    assert FinetuneConfig(method="full", lr=1e-3).learning_rate == 1e-3
    peft = build_peft_config(config)
    assert (peft.r, peft.lora_alpha, peft.lora_dropout, peft.target_modules) == (16, 32, 0.05, "all-linear")
    assert build_peft_config(FinetuneConfig(method="full")) is None

    trainer, _ = _trainer(tmp_path, FinetuneConfig(max_length=256, eval_fraction=0))
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    adapted = {name.split(".")[-1] for name, module in trainer.model.named_modules() if hasattr(module, "lora_A")}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_sft_config_is_cpu_friendly_and_maps_the_schedule() -> None:
    args = build_sft_config(FinetuneConfig(cpu=True, epochs=2, warmup_ratio=0.1, max_steps=5), "x", has_eval=True)
    assert args.use_cpu and not args.bf16 and not args.gradient_checkpointing
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.1 and args.max_steps == 5
    assert args.assistant_only_loss and args.packing and args.max_length == 2048
    assert args.eval_strategy == "no"  # with max_steps there are no epochs to evaluate at
    epochs = build_sft_config(FinetuneConfig(cpu=True), "x", has_eval=True)
    assert epochs.eval_strategy == "epoch" and epochs.max_steps == -1 and epochs.num_train_epochs == 3
    # packed rows get one forward pass each on CPU; the optimizer batch stays batch_size * grad_accum rows
    packed = build_sft_config(FinetuneConfig(cpu=True, batch_size=4, grad_accum=2), "x", has_eval=False)
    assert (packed.per_device_train_batch_size, packed.gradient_accumulation_steps) == (1, 8)
    padded = build_sft_config(FinetuneConfig(cpu=True, batch_size=4, grad_accum=2, packing=False), "x", has_eval=False)
    assert (padded.per_device_train_batch_size, padded.gradient_accumulation_steps) == (4, 2)


def test_gpu_speed_knobs_map_to_the_trainer_and_keep_the_optimizer_batch() -> None:
    # rows_per_pass splits the same optimizer batch into more, shorter passes (packing only)
    split = build_sft_config(FinetuneConfig(cpu=True, batch_size=8, grad_accum=2, rows_per_pass=4), "x", has_eval=False)
    assert (split.per_device_train_batch_size, split.gradient_accumulation_steps) == (4, 4)
    padded = FinetuneConfig(cpu=True, batch_size=8, packing=False, rows_per_pass=4)
    assert build_sft_config(padded, "x", has_eval=False).per_device_train_batch_size == 8
    with pytest.raises(ValidationError, match="rows_per_pass 3 must divide batch_size 8"):
        FinetuneConfig(batch_size=8, rows_per_pass=3)
    assert build_sft_config(FinetuneConfig(cpu=True), "x", has_eval=False).optim == "adamw_torch_fused"


def test_unset_speed_knobs_leave_the_config_dump_and_so_finished_runs_alone() -> None:
    dumped = FinetuneConfig().model_dump(mode="json")
    assert "attn_implementation" not in dumped and "rows_per_pass" not in dumped
    assert FinetuneConfig(rows_per_pass=2).model_dump(mode="json")["rows_per_pass"] == 2


def test_attn_implementation_reaches_the_model_and_keeps_the_packed_loss(tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    from finetune.trainer_setup import model_load_kwargs

    reference = tiny_llama(len(smol_tokenizer()))
    losses = {}
    for kernel in ("eager", "sdpa"):
        config = FinetuneConfig(method="full", max_length=256, eval_fraction=0, attn_implementation=kernel)
        model = AutoModelForCausalLM.from_config(reference.config, **model_load_kwargs(config))
        model.load_state_dict(reference.state_dict())
        assert model.config._attn_implementation == kernel and model.dtype == torch.float32
        trainer, _ = _trainer(tmp_path / kernel, config, model=model)
        batch = trainer.data_collator([trainer.train_dataset[0]])
        with torch.no_grad():
            losses[kernel] = trainer.model.eval()(**batch).loss.item()
    assert abs(losses["eager"] - losses["sdpa"]) < 1e-4


# ----------------------------------------------------------------------------- validation, CLI, output


@pytest.mark.parametrize(
    "bad",
    [
        {"method": "qlora"},
        {"lr": 0},
        {"epochs": -1},
        {"eval_fraction": 1.0},
        {"warmup_ratio": 1.0},
        {"lora_target_modules": ["q_proj", "lm_head"]},
        {"lora_target_modules": []},
        {"lr_scheduler": "bogus"},
        {"max_length": 4},
        {"unknown_option": 1},
    ],
)
def test_config_validation_rejects(bad: dict) -> None:
    with pytest.raises(ValidationError):
        FinetuneConfig(**bad)


def test_cli_maps_only_the_options_given() -> None:
    from finetune.cli import config_from_args, register_cli

    parser = argparse.ArgumentParser()
    register_cli(parser.add_subparsers())
    args = parser.parse_args(["finetune", "--data", "d.jsonl", "--out", "o"])
    assert config_from_args(args) == FinetuneConfig()
    args = parser.parse_args([
        "finetune", "--data", "d.jsonl", "--out", "o", "--method", "full", "--lr", "1e-5", "--max-steps", "7",
        "--no-packing", "--neftune-alpha", "5", "--lora-r", "8", "--lora-targets", "q_proj,v_proj", "--no-merge",
        "--threads", "1", "--samples", "0",
    ])
    config = config_from_args(args)
    assert (config.method, config.lr, config.max_steps, config.packing, config.neftune_noise_alpha) == (
        "full", 1e-5, 7, False, 5.0)
    assert (config.lora_r, config.lora_target_modules, config.save_merged, config.num_threads) == (
        8, ["q_proj", "v_proj"], False, 1)
    bad = parser.parse_args(["finetune", "--data", "d", "--out", "o", "--eval-fraction", "2"])
    with pytest.raises(ValueError, match="invalid finetune options"):
        config_from_args(bad)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--launcher", "accelerate", "--num-processes", "2", "--num-machines", "2"],
         "num_machines 2 needs main_process_ip: the address of machine 0 that every machine can reach"),
        (["--num-processes", "2"], "num_processes 2 / num_machines 1 need launcher: accelerate"),
        (["--launcher", "accelerate", "--num-processes", "3", "--num-machines", "2", "--main-process-ip", "10.0.0.1"],
         "num_processes 3 is the total over all machines and must split evenly over num_machines 2"),
        (["--launcher", "accelerate", "--num-processes", "2", "--num-machines", "2", "--main-process-ip", "10.0.0.1",
          "--machine-rank", "2"], "machine_rank 2 must be below num_machines 2"),
    ],
)
def test_a_launch_plan_accelerate_cannot_run_is_one_line(tmp_path, capsys, flags: list[str], message: str) -> None:
    """Caught before anything starts: accelerate would assert with a traceback, wait for a machine
    that never comes, or (launcher none) quietly train in one process."""
    from datagen.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    assert main(["finetune", "--input", str(data), "--out", str(tmp_path / "o"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("datagen: error: invalid finetune options: ") and "\n" not in err
    assert message in err
    assert not (tmp_path / "o").exists()


def test_every_machine_meets_at_the_same_port() -> None:
    """A free port picked on each machine would differ between them: across machines the port is
    the one given, else torchrun's 29500 on all (on one machine a free port is picked)."""
    from finetune.distributed import launch_args, rendezvous_port

    two = FinetuneConfig(launcher="accelerate", num_processes=4, num_machines=2, machine_rank=1,
                         main_process_ip="10.0.0.1")
    assert rendezvous_port(two) == 29500
    assert rendezvous_port(two.model_copy(update={"main_process_port": 6000})) == 6000
    args = launch_args(two, rendezvous_port(two))
    assert [args[args.index(f"--{name}") + 1] for name in
            ("num_processes", "num_machines", "machine_rank", "main_process_ip", "main_process_port")] == [
        "4", "2", "1", "10.0.0.1", "29500"]


def test_a_pipeline_refuses_several_machines(tmp_path, capsys) -> None:
    from datagen.cli import main

    config = tmp_path / "p.yaml"
    config.write_text("name: x\nstages: [distill]\nfinetune: {launcher: accelerate, num_processes: 2, "
                      "num_machines: 2, main_process_ip: 10.0.0.1}\n")
    assert main(["run", str(config)]) == 2
    assert "finetune.num_machines: a pipeline fine-tunes on one machine" in capsys.readouterr().err
    config.write_text("name: x\nstages: [distill]\nfinetune: {num_machines: 2, launcher: accelerate}\n")
    assert main(["run", str(config)]) == 2
    assert "finetune: num_machines 2 needs main_process_ip" in capsys.readouterr().err


def test_datagen_cli_lists_finetune() -> None:
    """`datagen finetune` is there, reached through the plugin entry point (no import cycle)."""
    from datagen.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices
    assert "finetune" in commands


def test_failed_training_leaves_no_output_folder(tmp_path, monkeypatch) -> None:
    import finetune.train as train_module
    from datagen.records import Record

    def boom(folder, *args, **kwargs):
        (folder / "model").mkdir()
        (folder / "model" / "half-written.bin").write_bytes(b"x")
        raise RuntimeError("crash mid-training")

    monkeypatch.setattr(train_module, "train_into", boom)
    records = [Record(id=f"r{i}", instruction=f"q{i}", output=f"a{i}") for i in range(5)]
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        train_module.train(records, FinetuneConfig(), out, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither `run` nor its hidden temp folder


def test_refuses_to_overwrite_a_folder_that_is_not_a_result(tmp_path) -> None:
    from datagen.records import Record
    from finetune.train import train

    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a finished fine-tuning result"):
        train([Record(id="r", instruction="q", output="a")], FinetuneConfig(), tmp_path, progress=False)
    assert (tmp_path / "precious.txt").read_text() == "keep me"
