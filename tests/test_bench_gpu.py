"""bench/gpu.py is run on a lent GPU machine, rarely: these keep it from rotting in between.
The slow test runs every row end to end on tiny shapes on the CPU (`--smoke`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import gpu  # noqa: E402


def test_shapes_are_the_published_models() -> None:
    """The configs written in the script have SmolLM2-1.7B's and Llama-3-8B's parameter counts."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    counts = {}
    for name, shape in gpu.SHAPES.items():
        spec = dict(shape)
        theta = spec.pop("rope_theta")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(LlamaConfig(**spec, rope_parameters={"rope_theta": theta,
                                                                                         "rope_type": "default"}))
        counts[name] = (sum(p.numel() for p in model.parameters()), gpu.matmul_params(model))
    assert counts["1.7b"] == (1_711_376_384, 1_711_376_384)  # tied: the table is the LM head
    assert counts["8b"] == (8_030_261_248, 8_030_261_248 - 128256 * 4096)  # the input table is a lookup
    # full training of the 8B shape cannot fit one 141 GB card in fp32 + AdamW: skipped, not OOM-ed
    assert gpu.estimated_gib("sft:8b:full:ours", gpu.SHAPES) > 0.92 * 139
    assert gpu.estimated_gib("sft:1.7b:full:ours", gpu.SHAPES) < 40


def test_peak_flops_table_tells_the_h100_variants_apart() -> None:
    def peak(name: str) -> float | None:
        return next((t for k, t in gpu.PEAK_BF16_TFLOPS if k in name), None)

    assert peak("NVIDIA H200") == peak("NVIDIA H100 80GB HBM3") == 989.0
    assert peak("NVIDIA H100 PCIe") == 756.0 and peak("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak("NVIDIA GeForce RTX 4090") is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_without_cuda_it_says_it_cannot_measure_and_writes_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "gpu.json"
    assert gpu.main(["--out", str(out)]) == 2
    assert "no CUDA device here, so the GPU rows cannot be measured" in capsys.readouterr().out
    assert not out.exists()


@pytest.mark.slow
def test_smoke_runs_every_row_end_to_end(tmp_path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu.py"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and list(report["rows"]) == list(gpu.ROWS)
    for row, result in report["rows"].items():
        if row in gpu.SMOKE_SKIPS:
            assert result["status"] == "skipped"
            continue
        assert result["status"] == "ok", (row, result)
        assert result["tokens_per_second"] > 0 and result["tokens"] > 0
    rows = report["rows"]
    ours, trl = rows["sft:1.7b:full:ours"], rows["sft:1.7b:full:trl"]
    assert ours["packing"] and not ours["gradient_checkpointing"] and ours["optim"] == "adamw_torch_fused"
    assert not trl["packing"] and trl["gradient_checkpointing"]  # TRL's own defaults, untouched
    assert rows["sft:1.7b:full:ours:rows1"]["per_device_batch"] == 1
    assert rows["decode:8b"]["generate_tokens_per_second"] > 0
    assert proc.stdout.strip().splitlines()[-1].startswith("ours / TRL SFTTrainer defaults, full SFT 1.7B-shape")


def test_a_failing_or_hanging_row_costs_only_that_row(tmp_path) -> None:
    """On the GPU each row has its own process: a crash is that row's `error` with its last
    line, a hang is that row's `timeout`; the parent carries on."""
    spec = {"smoke": True, "settings": gpu.settings(True), "tokenizer": str(tmp_path / "no-tokenizer"),
            "tmp": str(tmp_path), "threads": 1}
    failed = gpu.run_rows(["sft:1.7b:full:ours"], spec, timeout=600)["sft:1.7b:full:ours"]
    assert failed["status"] == "error" and "no-tokenizer" in failed["stderr_tail"] and failed["reason"]
    hung = gpu.run_rows(["decode:1.7b"], spec, timeout=0.5)["decode:1.7b"]
    assert hung == {"status": "timeout", "reason": "over 0.5 s", "wall_seconds": hung["wall_seconds"]}
