"""Where instructions come from, priced: Self-Instruct vs Magpie on the embedded model.

Both stages run as a pipeline runs them (`datagen.stages.self_instruct.run`,
`datagen.stages.magpie.run` with `answer: false`), on the embedded SmolLM2-135M, each with a
fresh cache (every token is really generated), the model loaded before the clock starts. For
each source the table gives:

- instructions kept, generated tokens (completion tokens of every request the stage made),
  instructions per 1k generated tokens and per second of wall time;
- diversity of the kept instructions: distinct-1 / distinct-2 (unique word n-grams / all,
  `datagen.text_units` words: one per CJK character), embedding spread (mean pairwise cosine
  distance, MiniLM), leading words (distinct first words / instructions, and the top three).

The last line is the headline: Magpie / Self-Instruct instructions per 1k generated tokens.
Self-Instruct's instructions are its new tasks (distinct instructions of its records), Magpie's
its kept queries. Measure on a quiet machine; the per-token figures do not depend on load.

    python bench/sources.py                    # ~3-5 min on a quiet 2-core machine
    python bench/sources.py --magpie 96 --self-instruct 12
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datagen.context import StageContext  # noqa: E402
from datagen.io import default_seeds_path, read_records  # noqa: E402
from datagen.llm import ResponseCache  # noqa: E402
from datagen.stages import magpie, self_instruct  # noqa: E402
from datagen.text_units import word_units  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "sources.json"


def run_source(name: str, cache_dir: Path, seed: int, records: list[Any], stage: Any, config: Any) -> dict[str, Any]:
    ctx = StageContext(llm_spec="local", cache=ResponseCache(cache_dir / f"{name}.sqlite"), seed=seed, progress=False)
    ctx.llm().inner._load()  # the model loads before the clock starts, for both sources alike
    start = time.perf_counter()
    result = stage.run(records, ctx, config)
    seconds = time.perf_counter() - start
    usage = ctx.usage()["local"]
    ctx.close()
    instructions = list(dict.fromkeys(r.instruction.strip() for r in result.kept if r.instruction.strip()))
    tokens = int(usage["completion_tokens"])
    return {"source": name, "instructions": len(instructions), "generated_tokens": tokens,
            "requests": int(usage["calls"]), "seconds": round(seconds, 1),
            "per_1k_tokens": round(1000 * len(instructions) / max(1, tokens), 2),
            "per_second": round(len(instructions) / max(1e-9, seconds), 3),
            "drops": result.drop_counts(), **diversity(instructions), "examples": instructions[:5]}


def diversity(texts: list[str]) -> dict[str, Any]:
    """distinct-n over all texts, mean pairwise cosine distance, leading-word spread."""
    import numpy as np

    from datagen.embed import embed_texts

    units = [word_units(t) for t in texts]
    out: dict[str, Any] = {}
    for n in (1, 2):
        grams = [tuple(u[i:i + n]) for u in units for i in range(len(u) - n + 1)]
        out[f"distinct_{n}"] = round(len(set(grams)) / max(1, len(grams)), 3)
    if len(texts) >= 2:
        vectors = embed_texts(texts, model="minilm", progress=False)
        sims = vectors @ vectors.T
        count = len(texts)
        out["spread"] = round(float(1 - (sims.sum() - np.trace(sims)) / (count * (count - 1))), 3)
    else:
        out["spread"] = 0.0
    leads = Counter(u[0] for u in units if u)
    out["distinct_leads"] = round(len(leads) / max(1, len(texts)), 3)
    out["top_leads"] = [f"{word} {count}" for word, count in leads.most_common(3)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--self-instruct", type=int, default=8, help="Self-Instruct: new tasks to make")
    parser.add_argument("--magpie", type=int, default=48, help="Magpie: queries to sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    seeds = read_records(default_seeds_path())
    si_config = self_instruct.SelfInstructConfig(num_instructions=args.self_instruct, request_batch_size=8,
                                                 new_per_request=6, max_tokens=384, instance_max_tokens=256,
                                                 max_instances=1)
    mp_config = magpie.MagpieConfig(count=args.magpie, answer=False, query_max_tokens=96)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_source("self_instruct", Path(tmp), args.seed, seeds, self_instruct, si_config),
                run_source("magpie", Path(tmp), args.seed, [], magpie, mp_config)]
    header = (f"{'source':<14}{'instr':>6}{'gen tok':>9}{'instr/1k tok':>13}{'instr/s':>9}{'dist-1':>8}"
              f"{'dist-2':>8}{'spread':>8}{'leads':>7}  top leading words")
    print(header)
    for r in rows:
        print(f"{r['source']:<14}{r['instructions']:>6}{r['generated_tokens']:>9}{r['per_1k_tokens']:>13}"
              f"{r['per_second']:>9}{r['distinct_1']:>8}{r['distinct_2']:>8}{r['spread']:>8}"
              f"{r['distinct_leads']:>7}  {', '.join(r['top_leads'])}")
    si, mp = rows
    ratio = mp["per_1k_tokens"] / max(1e-9, si["per_1k_tokens"])
    speed = mp["per_second"] / max(1e-9, si["per_second"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "ratio_per_1k_tokens": round(ratio, 2),
                                   "ratio_per_second": round(speed, 2), "load_1min": load,
                                   "machine": platform.platform(), "cpus": os.cpu_count()}, indent=2,
                                  ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"magpie / self-instruct: {ratio:.1f}x instructions per 1k generated tokens, {speed:.1f}x per second "
          f"(load {load:.1f})")


if __name__ == "__main__":
    main()
