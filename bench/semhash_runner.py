"""Run semhash's self-deduplication for `bench/dedup.py`, inside semhash's own venv.

semhash pins its own numpy / model2vec / usearch, so it is not installed in datagen's venv;
`bench/dedup.py` writes the texts to a file, runs this script with that venv's python and
reads back the removed rows. It loads the same static model folder datagen uses and keeps the
first record of each duplicate group (semhash's rule). Timed: index build + self-dedup;
the embedding is timed separately so the two can be compared with ours stage by stage.

    /tmp/semhash-venv/bin/python bench/semhash_runner.py TEXTS.jsonl MODEL_DIR THRESHOLD OUT.json
"""

from __future__ import annotations

import json
import sys
import time


def main(argv: list[str]) -> int:
    texts_path, model_dir, threshold, out_path = argv[1], argv[2], float(argv[3]), argv[4]
    import numpy as np
    from model2vec import StaticModel
    from semhash import SemHash

    texts = [json.loads(line) for line in open(texts_path, encoding="utf-8")]
    records = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
    started = time.perf_counter()
    model = StaticModel.from_pretrained(model_dir, force_download=False)
    loaded = time.perf_counter()
    vectors = model.encode(texts)
    embedded = time.perf_counter()
    semhash = SemHash.from_embeddings(np.asarray(vectors), records, model=model, columns=["text"])
    indexed = time.perf_counter()
    result = semhash.self_deduplicate(threshold=threshold)
    done = time.perf_counter()
    removed = sorted(int(d.record["id"]) for d in result.filtered)
    from importlib.metadata import version

    json.dump(
        {
            "semhash_version": version("semhash"),
            "load_seconds": round(loaded - started, 3),
            "embed_seconds": round(embedded - loaded, 3),
            "index_seconds": round(indexed - embedded, 3),
            "dedup_seconds": round(done - indexed, 3),
            "removed": removed,
        },
        open(out_path, "w", encoding="utf-8"),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
