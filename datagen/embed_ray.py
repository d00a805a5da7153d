"""Embeddings on a Ray cluster: an actor pool encodes, the vectors come back to the driver.

Each actor loads the embedding model once (a GPU each when the cluster has them) and calls
the very same `datagen.embed.embed_texts` a local run calls, so the vectors are the local
ones. FAISS search stays on the driver: it needs every vector in one index, and at dedup
sizes (millions of rows) searching is cheap next to encoding.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from datagen.ray_cluster import RayConfig, cluster_gpus, connect


class EmbedWorker:
    """One embedding actor. `options` are `embed_texts` keyword arguments (model, batch size...)."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = {**options, "progress": False}
        model = self.options.get("model")
        if model is None or isinstance(model, str):
            from datagen.embed import load_model

            self.options["model"] = load_model(model)  # once per actor, not per batch

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        from datagen.embed import embed_texts

        vectors = embed_texts([str(t) for t in batch["text"]], **self.options)
        return {"index": np.asarray(batch["index"], dtype=np.int64), "vector": list(vectors)}


def embed_texts_ray(texts: Sequence[str], config: RayConfig, **options: Any) -> np.ndarray:
    """Same contract as `datagen.embed.embed_texts`: (N, d) float32, L2-normalised, input order."""
    from datagen.embed import embed_texts

    options.pop("progress", None)
    if len(texts) == 0:
        return embed_texts([], **options, progress=False)
    ray = connect(config)
    gpus = config.gpus_per_embed_actor
    if gpus is None:
        gpus = 1.0 if cluster_gpus(ray) >= 1 else 0.0
    size = config.embed_batch_size
    rows = [{"index": i, "text": t} for i, t in enumerate(texts)]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, math.ceil(len(rows) / size))).map_batches(
        EmbedWorker,
        batch_size=size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=config.embed_actors),
        num_cpus=config.cpus_per_actor,
        num_gpus=gpus or None,
        fn_constructor_kwargs={"options": options},
    )
    out: np.ndarray | None = None
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        block = np.stack(list(batch["vector"])).astype(np.float32, copy=False)
        if out is None:
            out = np.zeros((len(texts), block.shape[1]), dtype=np.float32)
        out[np.asarray(batch["index"], dtype=np.int64)] = block
    assert out is not None
    return out  # rows came normalised from embed_texts on the actors
