"""Novelty filter benchmark: our ROUGE-L index vs the Stanford-Alpaca-style filter.

Workload: N synthetic but realistic instructions (templates x vocabulary, seeded, with planted
near-duplicates: reworded copies of earlier instructions), filtered greedily the way
Self-Instruct / Alpaca do: keep an instruction when its ROUGE-L F1 with every instruction kept
before it is <= 0.7.

Baseline (what Alpaca's generate_instruction.py does, in one process): tokenize the candidate
once with rouge_score's tokenizer and call `RougeScorer._score_lcs` against every kept
instruction's pre-tokenized form, then take the max. Ours: `datagen.novelty.NoveltyIndex`.
Both must keep exactly the same set (asserted).

The baseline is quadratic with a Python DP per pair, so by default it runs on the first
`--baseline-n` instructions and ours runs on the same prefix (the headline ratio) and on all N.
The "baseline (extrapolated)" row, printed only when the baseline did not run on all N, is
pairs(N) x measured seconds per pair: an estimate, labelled as such.

    python bench/novelty.py                      # 10k instructions, baseline on the first 2000
    python bench/novelty.py --baseline-n 10000   # baseline on everything (slow: ~15-30 min here)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datagen.novelty import NoveltyIndex  # noqa: E402

# fmt: off
VERBS = [
    "Write", "Explain", "Summarize", "List", "Describe", "Compare", "Suggest", "Create", "Give", "Draft",
    "Outline", "Propose", "Evaluate", "Rewrite", "Translate", "Classify", "Identify", "Generate", "Design",
    "Plan", "Analyze", "Recommend", "Compose", "Provide",
]
ADJS = [
    "short", "detailed", "funny", "formal", "persuasive", "simple", "concise", "creative", "practical",
    "step-by-step", "friendly", "technical", "balanced", "critical", "beginner-friendly", "vivid",
]
NOUNS = [
    "poem", "story", "email", "essay", "summary", "list of tips", "plan", "recipe", "dialogue",
    "product description", "cover letter", "tweet", "haiku", "lesson plan", "speech", "review", "checklist",
    "comparison", "explanation", "riddle", "limerick", "FAQ", "press release",
]
TOPICS = [
    "climate change", "the French revolution", "machine learning", "healthy breakfasts", "remote work",
    "black holes", "the stock market", "gardening in small spaces", "electric cars", "sleep hygiene",
    "ancient Rome", "photosynthesis", "public speaking", "budget travel", "recycling plastics",
    "quantum computing", "the water cycle", "time management", "learning a new language", "volcanoes",
    "the history of jazz", "cryptocurrency", "first aid for burns", "the human immune system",
    "urban beekeeping", "job interviews", "saving for retirement", "chess openings", "ocean currents",
    "vegan baking", "cybersecurity basics", "the Olympic games", "renewable energy", "mindfulness",
    "smartphone addiction", "coffee brewing", "marathon training", "the printing press", "coral reefs",
]
AUDIENCES = [
    "children", "a ten-year-old", "college students", "senior citizens", "a busy parent", "engineers",
    "a small business owner", "new employees", "a skeptical friend", "tourists", "teachers", "nurses",
]
NAMES = [
    "Alice", "Bob", "Maria", "Chen", "Priya", "Omar", "Lena", "Kwame", "Sofia", "Hiro",
]
NUMS = [
    "3", "5", "7", "10", "two", "four", "six",
]
TEMPLATES = [
    "{verb} a {adj} {noun} about {topic} for {audience}.", "{verb} {num} {adj} ideas related to {topic}.",
    "Can you {lverb} a {noun} that explains {topic} to {audience}?",
    "{verb} the main differences between {topic} and {topic2} in a {adj} way.",
    "Imagine you are {name}, an expert in {topic}. {verb} a {adj} {noun} for {audience}.",
    "What are {num} common misconceptions about {topic}, and how would you correct them for {audience}?",
    "{verb} a {noun} in which {name} and {name2} discuss {topic}.",
    "Given a paragraph about {topic}, {lverb} its key points as a {adj} {noun}.",
    "How can {audience} get started with {topic}? {verb} a {adj} answer.",
    "{verb} why {topic} matters to {audience}, using at most {num} sentences.",
    "Classify the following statement about {topic} as fact or opinion.",
    "Turn this {adj} note about {topic} into a {noun} suitable for {audience}.",
    "{verb} a {adj} {noun} comparing {topic}, {topic2} and {topic3}, with pros and cons for {audience}.",
    "You are helping {name} prepare for a meeting about {topic}; {lverb} {num} questions they should ask.",
    "Tell me a {adj} fact about {topic}.",
    "{verb} {topic} to {audience} without using technical jargon, then {lverb2} a {noun} that tests it.",
    "Write a Python function that {task} and explain its time complexity.",
    "Fix the bug in this {lang} snippet that is supposed to {task}.",
    "Extract every {entity} mentioned in the text below and return them as a {fmt}.",
    "Convert the following {fmt} into {fmt2}.", "Solve for x: {a}x + {b} = {c}. Show each step.",
    "If {name} buys {a} {item} at ${b} each and pays with ${c}, how much change does {name} get?",
    "Is the sentence about {topic} grammatically correct? Answer yes or no.",
    "Rate the {noun} below from 1 to {num} for clarity and justify the score.",
    "Suggest a name for a startup focused on {topic}.",
    "Which is heavier, a kilogram of {item} or a kilogram of {item2}? Explain the trick.",
    "Make a {num}-day itinerary for {audience} visiting {city} on a budget.",
    "Describe the smell, taste and texture of {food} to someone who has never tried it.",
    "Find the odd one out: {item}, {item2}, {item3}, {topic}.",
    "Write a SQL query that returns the {a} {entity} with the highest {metric} per {group}.",
    "Paraphrase this sentence so that {audience} can understand it: '{topic} is more complex than it looks.'",
    "Respond to a customer who complains that their {item} arrived broken.",
    "What would happen if {topic} suddenly disappeared tomorrow?",
    "Give feedback on {name}'s {noun} about {topic}, pointing out {num} strengths and one weakness.",
    "Sort these {entity} by {metric}: {item}, {item2}, {item3}.",
    "Write a regular expression that matches {pattern}.", "{verb} how {city} influenced {topic}.",
    "Create a multiple-choice quiz question about {topic} with {num} options.",
    "Summarize the argument for and against {topic} in one paragraph each.",
    "Translate the phrase '{food} with {item}' into {language} and explain any idioms.",
]
CONTEXTS = [
    "I am preparing a workshop next week.", "My manager asked me for this by Friday.",
    "This is for a school project.", "We run a small bakery in a rural town.",
    "I keep forgetting the details of this.", "My grandmother asked me about it.",
    "Our team is debating this at lunch.", "I have an exam on Monday.",
    "I am writing a newsletter for our club.", "A friend of mine is new to the topic.",
    "I only have ten minutes.", "We are redesigning our website.",
    "I am learning on my own in the evenings.", "Our nonprofit needs volunteers.",
    "I moved to a new country recently.",
]
CONSTRAINTS = [
    "Keep it under 100 words.", "Use a markdown table.", "Answer in the voice of a pirate.",
    "Avoid passive voice.", "End with a question for the reader.", "Include one surprising statistic.",
    "Use exactly three bullet points.", "Do not mention any brand names.", "Make it rhyme.",
    "Add a one-line summary at the top.", "Cite at least two sources.", "Write it as a dialogue.",
    "Keep the tone optimistic.", "Use British spelling.", "Explain any acronym you use.",
    "Number every step.", "Finish with a call to action.", "Assume the reader is in a hurry.",
    "Use an analogy from cooking.", "Mention a common mistake to avoid.",
]
TASKS = [
    "reverses a linked list", "checks whether a string is a palindrome", "merges two sorted lists",
    "counts word frequencies in a file", "finds the longest common prefix", "validates an email address",
    "computes the nth Fibonacci number", "removes duplicates while keeping order", "flattens a nested list",
    "parses a CSV line with quoted fields", "rotates a matrix by 90 degrees", "finds prime numbers below n",
]
LANGS = [
    "Python", "JavaScript", "Rust", "Go", "Java", "C++", "SQL", "Bash",
]
ENTITIES = [
    "person", "date", "city", "company", "product", "price", "email address", "phone number", "country",
]
FMTS = [
    "JSON list", "CSV table", "bullet list", "markdown table", "YAML document", "plain sentence",
]
ITEMS = [
    "feathers", "bricks", "apples", "laptops", "bicycles", "umbrellas", "notebooks", "teapots", "sneakers",
]
CITIES = [
    "Lisbon", "Kyoto", "Nairobi", "Montreal", "Istanbul", "Hanoi", "Lima", "Oslo", "Marrakesh",
]
FOODS = [
    "durian", "kimchi", "blue cheese", "mole sauce", "natto", "sourdough bread", "mango sticky rice",
]
METRICS = [
    "revenue", "salary", "rating", "population", "price", "age", "score",
]
GROUPS = [
    "department", "region", "year", "category", "team",
]
PATTERNS = [
    "a US phone number", "an ISO date", "a hex color code", "an IPv4 address", "a hashtag",
]
LANGUAGES = [
    "Spanish", "German", "Japanese", "Swahili", "French", "Portuguese",
]
# fmt: on


def make_instructions(n: int, seed: int = 0, dup_rate: float = 0.15) -> list[str]:
    """n instructions; ~dup_rate of them are light rewrites of an earlier one (planted near-dups)."""
    rng = random.Random(seed)
    out: list[str] = []
    for _ in range(n):
        if out and rng.random() < dup_rate:
            words = rng.choice(out).split()
            for _ in range(rng.randint(1, 3)):
                op = rng.random()
                pos = rng.randrange(len(words))
                if op < 0.4:
                    words[pos] = rng.choice(ADJS + NOUNS + ["really", "please", "briefly"])
                elif op < 0.7 and len(words) > 4:
                    del words[pos]
                else:
                    words.insert(pos, rng.choice(["please", "also", "quickly", "carefully", "the"]))
            out.append(" ".join(words))
            continue
        template = rng.choice(TEMPLATES)
        verb, verb2 = rng.sample(VERBS, 2)
        t1, t2, t3 = rng.sample(TOPICS, 3)
        n1, n2 = rng.sample(NAMES, 2)
        fmts = rng.sample(FMTS, 2)
        items = rng.sample(ITEMS, 3)
        parts = []
        if rng.random() < 0.5:
            parts.append(rng.choice(CONTEXTS))
        parts.append(
            template.format(
                verb=verb,
                lverb=verb.lower(),
                lverb2=verb2.lower(),
                adj=rng.choice(ADJS),
                noun=rng.choice(NOUNS),
                topic=t1,
                topic2=t2,
                topic3=t3,
                audience=rng.choice(AUDIENCES),
                name=n1,
                name2=n2,
                num=rng.choice(NUMS),
                task=rng.choice(TASKS),
                lang=rng.choice(LANGS),
                entity=rng.choice(ENTITIES),
                fmt=fmts[0],
                fmt2=fmts[1],
                a=rng.randint(2, 20),
                b=rng.randint(1, 50),
                c=rng.randint(51, 200),
                item=items[0],
                item2=items[1],
                item3=items[2],
                city=rng.choice(CITIES),
                food=rng.choice(FOODS),
                metric=rng.choice(METRICS),
                group=rng.choice(GROUPS),
                pattern=rng.choice(PATTERNS),
                language=rng.choice(LANGUAGES),
            )
        )
        if rng.random() < 0.6:
            parts.extend(rng.sample(CONSTRAINTS, rng.choice([1, 1, 2])))
        out.append(" ".join(parts))
    return out


def run_ours(texts: list[str], threshold: float) -> tuple[list[bool], float, dict]:
    start = time.perf_counter()
    index = NoveltyIndex(threshold=threshold)
    kept = [index.add_if_novel(t)[0] for t in texts]
    return kept, time.perf_counter() - start, index.stats.as_dict()


def run_alpaca_style(texts: list[str], threshold: float) -> tuple[list[bool], float, int]:
    """Alpaca's loop: pre-tokenized pool, `_score_lcs` with every entry, max, > threshold drops."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    start = time.perf_counter()
    pool_tokens: list[list[str]] = []
    kept: list[bool] = []
    pairs = 0
    for text in texts:
        new_tokens = scorer._tokenizer.tokenize(text)
        scores = [rouge_scorer._score_lcs(new_tokens, tokens).fmeasure for tokens in pool_tokens]
        pairs += len(scores)
        if scores and max(scores) > threshold:
            kept.append(False)
            continue
        pool_tokens.append(new_tokens)
        kept.append(True)
    return kept, time.perf_counter() - start, pairs


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000, help="instructions (default 10000)")
    parser.add_argument(
        "--baseline-n", type=int, default=2000, help="baseline runs on this prefix (default 2000)"
    )
    parser.add_argument("--threshold", type=float, default=0.7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "novelty.json"))
    args = parser.parse_args()

    texts = make_instructions(args.n, seed=args.seed)
    base_n = min(args.baseline_n, args.n)

    kept_ours_prefix, t_ours_prefix, _ = run_ours(texts[:base_n], args.threshold)
    kept_base, t_base, base_pairs = run_alpaca_style(texts[:base_n], args.threshold)
    assert kept_base == kept_ours_prefix, "kept sets differ on the baseline prefix"
    kept_ours, t_ours, ours_stats = run_ours(texts, args.threshold)
    assert kept_ours[:base_n] == kept_base, "greedy prefix decisions differ"

    per_pair = t_base / max(base_pairs, 1)
    rows = [
        ("alpaca-style rouge_score (1 process)", base_n, sum(kept_base), base_pairs, t_base, "measured"),
        ("datagen NoveltyIndex", base_n, sum(kept_ours_prefix), base_pairs, t_ours_prefix, "measured"),
        ("datagen NoveltyIndex", args.n, sum(kept_ours), ours_stats["pairs_total"], t_ours, "measured"),
    ]
    extrapolated = None
    if base_n < args.n:
        extrapolated = per_pair * ours_stats["pairs_total"]
        rows.append(
            (
                "alpaca-style rouge_score (1 process)",
                args.n,
                sum(kept_ours),
                ours_stats["pairs_total"],
                extrapolated,
                "EXTRAPOLATED: pairs x measured s/pair",
            )
        )
    ratio_prefix = t_base / t_ours_prefix
    ratio_full_est = (extrapolated / t_ours) if extrapolated else ratio_prefix

    print(f"{'filter':38} {'N':>6} {'kept':>6} {'pairs':>11} {'seconds':>9}  note")
    for name, n, k, pairs, secs, note in rows:
        print(f"{name:38} {n:>6} {k:>6} {pairs:>11} {secs:>9.2f}  {note}")
    lcs, total = ours_stats["lcs_computed"], ours_stats["pairs_total"]
    print(f"exact LCS computed by ours on N={args.n}: {lcs} of {total} pairs (the rest skipped by the bound)")
    print(f"same kept set on the first {base_n}: yes (asserted)")
    if extrapolated:
        print(f"estimated speed ratio on N={args.n} (extrapolated baseline): {ratio_full_est:.0f}x")
    print(f"speed ratio (measured, same {base_n} instructions): {ratio_prefix:.0f}x")

    result = {
        "n": args.n,
        "baseline_n": base_n,
        "threshold": args.threshold,
        "seed": args.seed,
        "kept_ours": sum(kept_ours),
        "kept_baseline_prefix": sum(kept_base),
        "baseline_seconds": t_base,
        "baseline_pairs": base_pairs,
        "baseline_seconds_per_pair": per_pair,
        "ours_seconds_prefix": t_ours_prefix,
        "ours_seconds_full": t_ours,
        "ours_stats": ours_stats,
        "baseline_seconds_full_extrapolated": extrapolated,
        "speed_ratio_measured": ratio_prefix,
        "speed_ratio_full_estimated": ratio_full_est,
        "same_kept_set": True,
        "note": (
            "baseline = Alpaca generate_instruction.py loop (rouge_score _score_lcs vs every kept instruction), "
            "one process, measured on the first baseline_n instructions; baseline_seconds_full_extrapolated = "
            "pairs on all n x measured seconds per pair (an estimate, not a measurement)"
        ),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "load_average": list(os.getloadavg()),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
