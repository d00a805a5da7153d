"""One distill stage over a slow teacher, local executor vs `executor: ray` on 1 and 2 nodes.

The teacher is the loopback test server (tests/openai_test_server.py) with the scripted
pipeline replies and 1 s latency per request: I/O bound, as a remote teacher is. Each row
runs the same distill stage (n=2 candidates + a judge call per record) on the same records
through a fresh cache, so every row pays every call:

- local: our client in this process, `max_concurrency` in flight;
- ray, 1 node / 2 nodes: a real cluster started here (`ray start --head` + `ray start
  --address`, one CPU each), the concurrency split across the actors (same global bound);
- ray, 2 nodes, bound per node: each actor keeps the full bound, as when every node has
  its own teacher replica (the case the design is for: N GPU nodes each serving vLLM).

Driver overhead per record is the driver process's CPU time over the records. Embedding
throughput: `embed_texts` in this process vs 2 Ray actors (one per node).

    python bench/ray_scale.py            # ~6 min on 2 busy cores; writes bench/results/ray_scale.json

The last line is the headline: ray on 2 nodes at the same global bound over local.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from datagen.records import Record  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "ray_scale.json"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def make_records(count: int) -> list[Record]:
    import pipeline_responder

    words = pipeline_responder.VOCAB
    return [Record(id=f"b{i}", instruction=f"Explain how the {words[i % len(words)]} relates to "
                   f"the {words[(i * 7) % len(words)]} in case {i}.") for i in range(count)]


def run_distill(records: list[Record], base_url: str, concurrency: int, executor: str, ray_config=None) -> dict:
    from datagen.context import StageContext
    from datagen.llm import ResponseCache
    from datagen.stages import distill

    with tempfile.TemporaryDirectory() as folder:
        ctx = StageContext(llm_spec="openai:teacher", cache=ResponseCache(Path(folder) / "c.sqlite"), progress=False,
                           llm_options={"openai": {"base_url": base_url, "max_concurrency": concurrency}},
                           executor=executor, ray_config=ray_config)
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = distill.run(records, ctx, distill.DistillConfig(n=2, max_tokens=64, judge_max_tokens=32))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        calls = sum(u["calls"] for u in ctx.usage().values())
        ctx.close()
    return {"records": len(records), "kept": len(result.kept), "calls": calls, "seconds": round(wall, 2),
            "records_per_s": round(len(records) / wall, 2), "driver_cpu_ms_per_record": round(1000 * cpu / len(records), 3),
            "load": loadavg()}


def run_embed(texts: list[str], executor: str, ray_config=None) -> dict:
    started = time.perf_counter()
    if executor == "ray":
        from datagen.embed_ray import embed_texts_ray

        vectors = embed_texts_ray(texts, ray_config)
    else:
        from datagen.embed import embed_texts

        vectors = embed_texts(texts, progress=False)
    seconds = time.perf_counter() - started
    return {"texts": len(texts), "seconds": round(seconds, 2), "texts_per_s": round(len(texts) / seconds, 1),
            "dim": int(vectors.shape[1]), "load": loadavg(), "vectors": vectors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per request at the server")
    parser.add_argument("--concurrency", type=int, default=64, help="global requests in flight")
    parser.add_argument("--embed-texts", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    import numpy as np
    import pipeline_responder
    from openai_test_server import OpenAITestServer
    from ray_cluster_helpers import LocalRayCluster

    from datagen.ray_cluster import RayConfig, disconnect

    server = OpenAITestServer(latency=args.latency).start()
    server.responder = pipeline_responder.reply
    records = make_records(args.records)
    texts = [r.instruction for r in records[: args.embed_texts]]
    rows: dict[str, dict] = {}
    try:
        rows["local"] = run_distill(records, server.base_url, args.concurrency, "local")
        rows["embed local"] = run_embed(texts, "local")
        for nodes in (1, 2):
            cluster = LocalRayCluster().start(nodes=nodes)
            try:
                config = RayConfig(address=cluster.address, actors=nodes, batch_size=64)
                rows[f"ray {nodes} node" + ("s" if nodes > 1 else "")] = run_distill(records, server.base_url, args.concurrency, "ray", config)
                if nodes == 2:
                    per_node = config.model_copy(update={"max_concurrency": args.concurrency})
                    rows["ray 2 nodes, bound per node"] = run_distill(records, server.base_url, args.concurrency,
                                                                      "ray", per_node)
                    embed_config = config.model_copy(update={"embed_actors": 2, "embed_batch_size": 256})
                    rows["embed ray 2 actors"] = run_embed(texts, "ray", embed_config)
            finally:
                disconnect()
                cluster.stop()
    finally:
        server.stop()

    same = np.abs(rows["embed local"].pop("vectors") - rows["embed ray 2 actors"].pop("vectors")).max()
    bound = args.concurrency / args.latency
    print(f"distill n=2 + judge, {args.records} records, {args.latency:.1f} s/request, {args.concurrency} in flight "
          f"(bound {bound:.0f} req/s); {os.cpu_count()} CPUs")
    print(f"{'run':<30} {'s':>8} {'rec/s':>8} {'calls':>7} {'driver ms/rec':>14} {'load':>6}")
    for name in ("local", "ray 1 node", "ray 2 nodes", "ray 2 nodes, bound per node"):
        row = rows[name]
        print(f"{name:<30} {row['seconds']:>8.1f} {row['records_per_s']:>8.1f} {row['calls']:>7} "
              f"{row['driver_cpu_ms_per_record']:>14.3f} {row['load']:>6}")
    print(f"{'embedding':<30} {'s':>8} {'texts/s':>8}")
    for name in ("embed local", "embed ray 2 actors"):
        row = rows[name]
        print(f"{name:<30} {row['seconds']:>8.1f} {row['texts_per_s']:>8.1f} {'':>7} {'':>14} {row['load']:>6}")
    print(f"max |local - ray| embedding difference: {same:.2e}")
    ratio = rows["ray 2 nodes"]["records_per_s"] / rows["local"]["records_per_s"]
    scaled = rows["ray 2 nodes, bound per node"]["records_per_s"] / rows["local"]["records_per_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
                                    "embedding_max_abs_diff": float(same), "ratio_same_bound": ratio,
                                    "ratio_bound_per_node": scaled, "python": platform.python_version()},
                                   indent=2) + "\n")
    print(f"ray 2 nodes, bound per node: {scaled:.2f}x local records/s")
    print(f"headline: ray 2 nodes at the same global bound = {ratio:.2f}x local records/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
