"""What personas buy: the same user-turn prompt with and without a persona, side by side.

For the first N seed tasks (with their answers), the conversation stage's user-model prompt
(`prompts/conversation_user.txt`) asks for the next user message twice: once without a
persona and once as a persona from the bundled set (seeded choice per record, as the stage
makes it). Both arms go to the same backend in one batch each, with the same sampling, and
`datagen.profile.persona_diversity` compares the follow-ups: distinct leading verbs,
distinct-2, mean pairwise cosine (lower = more spread) and leader clusters.

    python bench/personas.py --n 24 --llm local      # writes bench/results/personas.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from datagen.context import StageContext  # noqa: E402
from datagen.io import default_seeds_path, read_records  # noqa: E402
from datagen.llm import ChatRequest, generate_sync  # noqa: E402
from datagen.personas import load_personas, pick_persona  # noqa: E402
from datagen.profile import persona_diversity  # noqa: E402
from datagen.prompts import render  # noqa: E402
from datagen.records import Record, RecordMeta  # noqa: E402
from datagen.stages.conversation import clean_user_turn, start_messages  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=24)
    parser.add_argument("--llm", default="local")
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    ctx = StageContext(llm_spec=args.llm, seed=args.seed, progress=False,
                       llm_options={"openai": {"base_url": args.base_url}} if args.base_url else {})
    seeds = [r for r in read_records(default_seeds_path()) if r.output.strip()][: args.n]
    personas = load_personas("bundled")
    arms: dict[str, list[Record]] = {}
    for arm in ("without", "with"):
        chosen = [pick_persona(personas, args.seed, r.id) if arm == "with" else None for r in seeds]
        requests = [
            ChatRequest.chat(
                [{"role": "user", "content": render("conversation_user", persona=p, stop_marker="[END]",
                                                    turns=start_messages(r))}],
                temperature=0.9, top_p=0.95, max_tokens=args.max_tokens,
                seed=ctx.rng(f"bench:{r.id}").randrange(2**31),
            )
            for r, p in zip(seeds, chosen, strict=True)
        ]
        replies = generate_sync(ctx.llm(), requests)
        arms[arm] = [Record(id=f"{arm}{i}", instruction=clean_user_turn(c.text), meta=RecordMeta(persona=p))
                     for i, (c, p) in enumerate(zip(replies, chosen, strict=True)) if c.ok and c.text.strip()]
    figures = persona_diversity(arms["with"] + arms["without"])
    print(json.dumps(figures, indent=2))
    for name in ("distinct_leading_verbs", "distinct_2_instruction", "clusters"):
        print(f"{name}: with {figures['with_personas'][name]} / without {figures['without_personas'][name]}")
    w, wo = figures["with_personas"]["mean_pairwise_cosine"], figures["without_personas"]["mean_pairwise_cosine"]
    print(f"mean pairwise cosine (lower = more spread): with {w} / without {wo}")
    ratio = figures["with_personas"]["distinct_leading_verbs"] / max(figures["without_personas"]["distinct_leading_verbs"], 1)
    out = ROOT / "bench" / "results" / "personas.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "figures": figures, "ratio_distinct_leading_verbs": round(ratio, 3),
                               "load_average": list(os.getloadavg()), "when": time.strftime("%Y-%m-%dT%H:%M:%S")},
                              indent=2) + "\n")
    print(f"ratio distinct leading verbs with/without personas: {ratio:.2f}")


if __name__ == "__main__":
    main()
