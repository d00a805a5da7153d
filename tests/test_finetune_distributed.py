"""`launcher: accelerate`: 2 CPU processes (DDP over gloo) train like 1 process.

A tiny random Llama with the real tokenizer is saved to a folder so that `accelerate launch`
workers (separate processes) load the same weights. Each process accumulates half the
optimizer batch; the gathered gradient is the single-process one, so the loss curves agree
up to float summation order.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from finetune_helpers import CONVERSATIONS

from datagen.io import write_records
from datagen.records import Record
from finetune.distributed import launch_args, strategy
from finetune.train import FinetuneConfig, train
from finetune.trainer_setup import build_sft_config

ROOT = Path(__file__).resolve().parent.parent
FAILURE_GRACE_S = 120  # a hang guard, not a speed check: a healthy machine exits within seconds
pytestmark = pytest.mark.slow  # two launched training processes, ~1 min on 2 busy cores


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


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_machines(commands: list[list[str]], folders: list[Path]) -> list[subprocess.CompletedProcess]:
    """Start every machine's command at once, as users do on real machines. When one fails the
    others get a grace period to fail on their own (with their own message), then are stopped:
    one waiting at the rendezvous would otherwise wait until torch's own timeout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd, folder in zip(commands, folders, strict=True)]
    outputs: list[tuple[str, str] | None] = [None] * len(procs)
    failed_at: float | None = None
    try:
        while any(out is None for out in outputs):
            for k, proc in enumerate(procs):
                if outputs[k] is None and proc.poll() is not None:
                    outputs[k] = proc.communicate()
                    if proc.returncode != 0 and failed_at is None:
                        failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > FAILURE_GRACE_S:
                for other in procs:
                    if other.poll() is None:
                        other.kill()
            time.sleep(0.5)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return [subprocess.CompletedProcess(cmd, p.returncode, *out)  # type: ignore[misc]
            for cmd, p, out in zip(commands, procs, outputs, strict=True)]


def _machine_options(model_dir: Path, port: int) -> list[str]:
    """`_config`'s options as a user types them, for 2 machines with one process each."""
    return ["--base-model", str(model_dir), "--method", "lora", "--max-steps", "6", "--batch-size", "4",
            "--max-length", "256", "--eval-fraction", "0", "--samples", "0", "--lora-dropout", "0",
            "--no-merge", "--threads", "1", "--warmup-ratio", "0", "--lr", "1e-3", "--cpu", "--no-progress",
            "--launcher", "accelerate", "--num-processes", "2", "--num-machines", "2",
            "--main-process-ip", "127.0.0.1", "--main-process-port", str(port)]


def test_two_machines_on_loopback_give_the_single_process_loss_curve(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`num_machines: 2` for real: two `datagen finetune` commands, as typed on two machines,
    machine 0 at 127.0.0.1, one CPU process each. Same loss curve as 1 process; only machine 0
    writes anything."""
    data = write_records(_records(), tmp_path / "data.jsonl")
    single = train(data, _config(tiny_model_dir), tmp_path / "one", progress=False)
    options = _machine_options(tiny_model_dir, _free_port())
    machines = [tmp_path / "machine0", tmp_path / "machine1"]  # each machine's own disk
    for folder in machines:
        folder.mkdir()
    done = _run_machines([[sys.executable, "-m", "datagen.cli", "finetune", "--input", str(data), "--out", "model",
                           *options, "--machine-rank", str(rank)] for rank in (0, 1)], machines)
    for rank, result in enumerate(done):
        assert result.returncode == 0, f"machine {rank}:\n{result.stderr[-3000:]}"
    first, second = (json.loads(result.stdout.strip().splitlines()[-1]) for result in done)
    assert first["num_machines"] == 2 and first["num_processes"] == 2 and first["distributed"] == "ddp"
    assert second == {"machine_rank": 1, "num_processes": 2, "num_machines": 2, "distributed": "ddp", "saved": False}
    assert "machine 1 of 2" in done[1].stderr
    one, two = _losses(tmp_path / "one"), _losses(machines[0] / "model")
    assert len(one) == len(two) == 6
    assert one[0] != one[-1]  # it really trained
    assert two == pytest.approx(one, rel=2e-3, abs=1e-4)
    assert single["steps"] == first["steps"] == 6
    assert json.loads((machines[0] / "model" / "metrics.json").read_text())["num_machines"] == 2
    assert (machines[0] / "model" / "adapter" / "adapter_config.json").exists()
    assert [p.name for p in machines[0].iterdir()] == ["model"]  # no temp folder left
    assert not (machines[0] / "model" / "_launch").exists()
    assert list(machines[1].iterdir()) == []  # machine 1 trained its share and wrote nothing


def test_machines_with_different_data_refuse_to_train(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Machine 1 given another data file: DDP would train on it without an error (each machine
    prepares its own examples) and average gradients of different batches; both refuse instead."""
    data = write_records(_records(), tmp_path / "data.jsonl")
    other = write_records(_records()[1:], tmp_path / "other.jsonl")
    machines = [tmp_path / "machine0", tmp_path / "machine1"]
    for folder in machines:
        folder.mkdir()
    options = _machine_options(tiny_model_dir, _free_port())
    done = _run_machines([[sys.executable, "-m", "datagen.cli", "finetune", "--input", str(path), "--out", "model",
                           *options, "--machine-rank", str(rank)] for rank, path in ((0, data), (1, other))], machines)
    for result in done:
        assert result.returncode == 2, result.stderr[-3000:]
        assert result.stderr.strip().splitlines()[-1] == (
            "datagen: error: finetune: machine 1 prepared other examples or options than machine 0: give every "
            "machine the same --input file, base model and options (only --machine-rank and --num-threads may differ)")
    assert [list(folder.iterdir()) for folder in machines] == [[], []]
