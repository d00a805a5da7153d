"""Multi-process fine-tuning: `accelerate launch` runs the same training on every process.

The parent (`train()` with `launcher: accelerate`) prepares the examples exactly as a
single-process run does, writes them next to the output, and launches its machine's share
(`num_processes / num_machines`) of the workers of this module. Across machines the same
command runs on each and every machine prepares the examples from its own copy of the data
(checked equal before training). Each worker builds the same trainer (same split, masking,
packing); the Trainer sees the launcher's environment and wraps the model in DDP (LoRA: the
adapter is small, replicate it) or FSDP (full fine-tuning: shard weights, gradients,
optimizer state). Each process accumulates 1/N of the optimizer batch (see `build_sft_config`), so the
loss curve is the single-process one. Only global rank 0 (on machine 0) writes files; the
parent there publishes them, the parents on the other machines return their part's summary.
On CPU the processes talk over gloo, which is how the tests check all this without GPUs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from finetune.config import MULTI_MACHINE_PORT, FinetuneConfig
from finetune.data import DataStats
from finetune.train_loop import is_main_process, train_into
from finetune.trainer_setup import on_cpu

LAUNCH_DIR = "_launch"


def strategy(config: FinetuneConfig) -> str:
    if config.distributed != "auto":
        return config.distributed
    return "ddp" if config.method == "lora" else "fsdp"


def launch_args(config: FinetuneConfig, port: int) -> list[str]:
    """`accelerate launch` options for this config (pure; tested directly)."""
    args = ["--num_processes", str(config.num_processes), "--num_machines", str(config.num_machines),
            "--machine_rank", str(config.machine_rank), "--main_process_port", str(port),
            "--mixed_precision", "no", "--dynamo_backend", "no"]
    if config.main_process_ip:
        args += ["--main_process_ip", config.main_process_ip]
    if strategy(config) == "fsdp":
        args += ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
                 "--fsdp_state_dict_type", "FULL_STATE_DICT", "--fsdp_reshard_after_forward", "true"]
    else:
        # `--multi_gpu` is accelerate's name for "torchrun N processes"; on a machine without
        # GPUs the Trainer (use_cpu) runs them on the CPU over gloo.
        args += ["--multi_gpu"]
    return args


def rendezvous_port(config: FinetuneConfig) -> int:
    """The port on machine 0 where the processes meet: every machine must name the same one."""
    if config.main_process_port:
        return config.main_process_port
    return MULTI_MACHINE_PORT if config.num_machines > 1 else _free_port()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(folder: Path, train_ex: list[Any], eval_ex: list[Any], stats: DataStats, config: FinetuneConfig,
           progress: bool) -> dict[str, Any]:
    """Run this machine's workers on `folder`; return rank 0's metrics (machine 0) or this machine's part."""
    spec = folder / LAUNCH_DIR
    spec.mkdir(parents=True, exist_ok=True)
    payload = {"train": train_ex, "eval": eval_ex, "stats": stats.as_dict(), "config": config.model_dump(mode="json"),
               "progress": progress}
    (spec / "job.json").write_text(json.dumps(payload, ensure_ascii=False), encoding="utf-8")
    port = rendezvous_port(config)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    if on_cpu(config):
        env["CUDA_VISIBLE_DEVICES"] = ""
    if config.num_threads:
        env["OMP_NUM_THREADS"] = str(config.num_threads)
    command = [sys.executable, "-m", "accelerate.commands.launch", *launch_args(config, port),
               "-m", "finetune.distributed", str(folder)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        ours = next((line for line in lines if line.startswith("finetune: ")), None)
        if ours:  # a worker refused with its own one-line reason (see check_same_job)
            raise ValueError(ours)
        tail = "\n".join(lines[-15:])
        where = (f" on machine {config.machine_rank} of {config.num_machines} (rendezvous "
                 f"{config.main_process_ip}:{port})" if config.num_machines > 1 else "")
        raise RuntimeError(f"finetune: accelerate launch of {config.num_processes} processes{where} failed:\n{tail}")
    if config.machine_rank > 0:  # rank 0, on machine 0, wrote the model and metrics there
        metrics = {"machine_rank": config.machine_rank, **_launch_summary(config), "saved": False}
    else:
        metrics = json.loads((spec / "metrics.json").read_text(encoding="utf-8"))
    import shutil

    shutil.rmtree(spec, ignore_errors=True)
    return metrics


def _launch_summary(config: FinetuneConfig) -> dict[str, Any]:
    return {"num_processes": config.num_processes, "num_machines": config.num_machines, "distributed": strategy(config)}


# Options each machine may set for itself; every other option, and the data, must agree.
PER_MACHINE = ("machine_rank", "num_threads")


def job_fingerprint(job: dict[str, Any]) -> str:
    shared = {key: value for key, value in job["config"].items() if key not in PER_MACHINE}
    text = json.dumps({"train": job["train"], "eval": job["eval"], "config": shared}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_same_job(fingerprint: str, config: FinetuneConfig) -> None:
    """Refuse to train when the machines prepared different examples or options.

    Each machine reads its own copy of the data; a different file, seed or lr would not fail,
    it would train each shard of the batch differently and average the gradients: a wrong model
    with no error. Every worker posts its job's fingerprint to the launcher's rendezvous store
    (torchrun's TCPStore at MASTER_ADDR:MASTER_PORT, which the process group also uses) and reads
    everyone's, so all processes stop together with the same message.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world < 2:
        return
    from datetime import timedelta

    import torch.distributed as dist

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                          timeout=timedelta(minutes=10))
    prefix = f"datagen/job/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
    store.set(prefix + os.environ["RANK"], fingerprint)
    prints = [store.get(prefix + str(rank)).decode() for rank in range(world)]
    per_machine = world // config.num_machines
    differ = sorted({rank // per_machine for rank, other in enumerate(prints) if other != prints[0]})
    if differ:
        # Machine 0's launcher hosts the store: let everyone read before anyone leaves.
        store.set(prefix + "read/" + os.environ["RANK"], "1")
        store.wait([prefix + f"read/{rank}" for rank in range(world)])
        names = ", ".join(map(str, differ))
        where = (f"machine{'s' if len(differ) > 1 else ''} {names}" if config.num_machines > 1
                 else "the launched processes")
        raise SystemExit(f"finetune: {where} prepared other examples or options than machine 0: give every "
                         "machine the same --input file, base model and options (only --machine-rank and "
                         "--num-threads may differ)")


def main(folder: str) -> None:
    """One launched worker."""
    root = Path(folder)
    job = json.loads((root / LAUNCH_DIR / "job.json").read_text(encoding="utf-8"))
    config = FinetuneConfig.model_validate(job["config"])
    check_same_job(job_fingerprint(job), config)
    metrics = train_into(root, job["train"], job["eval"], DataStats(**job["stats"]), config,
                          job["progress"] and is_main_process())
    if is_main_process():
        metrics.update(_launch_summary(config))
        (root / LAUNCH_DIR / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
