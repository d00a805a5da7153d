"""Semantic dedup benchmark: ours (FAISS) vs brute-force numpy, at 100k and 1M vectors, plus
10k real instructions end to end (embed with the bundled model + dedup).

Vectors. Embedding 1M texts with MiniLM on this 2-core machine would take ~35 min (~500
sentences/s), so the 100k / 1M rows use SYNTHETIC 384-d unit vectors shaped like sentence
embeddings: topical clusters (typical within-cluster cosine ~0.4) plus 5% planted near
duplicates (a copy of another vector plus noise, cosine ~0.92-0.99 to its source). Recall =
share of planted pairs of which at least one member was dropped.

Both methods run the same greedy rule (keep in order; drop a vector only for an already-kept
one with cosine >= 0.9). They differ only in how neighbours are found:
- ours: `datagen.stages.dedup.semantic_dedup` (IVF above 50k vectors: IndexIVFFlat,
  nlist = 4 sqrt(N), nprobe 8, k = 32 with re-query of cut-off rows), the stage's defaults;
- baseline: exact all-pairs cosines by blocked numpy matmul. At 100k it runs fully and its
  result is the exact answer ours is compared with; at 1M (10^12 pairs) it is ESTIMATED from
  timing a sample of row blocks against all 1M vectors, and labelled as an estimate.

End to end: 10k instructions generated from templates (seeded), 10% of them planted
paraphrases of others (case/punctuation changes, "please"/"can you" wrappers, synonym swaps),
embedded with the bundled all-MiniLM-L6-v2 and deduplicated by the real stage (`run`).

    python bench/dedup.py                 # ~15 min measured here with the 2 cores shared (load ~6)
    python bench/dedup.py --sizes 100000  # skip 1M
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datagen.stages.dedup import SIM_EPS, semantic_dedup  # noqa: E402

THRESHOLD = 0.9


# ---------------------------------------------------------------------------------------------
# synthetic vectors


def make_vectors(
    n: int, dim: int = 384, dup_frac: float = 0.05, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(vectors, planted pairs [source, copy]) with clusters and planted near duplicates."""
    rng = np.random.default_rng(seed)
    n_dup = int(n * dup_frac)
    n_base = n - n_dup
    centers = rng.standard_normal((max(1, n // 500), dim), dtype=np.float32)
    vectors = np.empty((n, dim), dtype=np.float32)
    step = 65_536
    for start in range(0, n_base, step):  # in chunks: keeps peak memory at one copy
        stop = min(n_base, start + step)
        block = centers[rng.integers(0, len(centers), stop - start)]
        block += 1.2 * rng.standard_normal(block.shape, dtype=np.float32)
        vectors[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    src = rng.choice(n_base, n_dup, replace=False)
    noise = rng.standard_normal((n_dup, dim), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    copies = vectors[src] + rng.uniform(0.1, 0.4, (n_dup, 1)).astype(np.float32) * noise
    vectors[n_base:] = copies / np.linalg.norm(copies, axis=1, keepdims=True)
    perm = rng.permutation(n)  # copies must not all come last (order = priority)
    vectors = vectors[perm]
    where = np.empty(n, dtype=np.int64)
    where[perm] = np.arange(n)
    pairs = np.stack([where[src], where[n_base + np.arange(n_dup)]], axis=1)
    return vectors, pairs


def planted_recall(keep: np.ndarray, pairs: np.ndarray) -> float:
    return float(np.mean(~(keep[pairs[:, 0]] & keep[pairs[:, 1]])))


# ---------------------------------------------------------------------------------------------
# brute-force baseline


def brute_pairs(vectors: np.ndarray, rows: range, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (i, j, cos) with j < i (j earlier = higher priority) and cos >= threshold, rows i in `rows`."""
    out_i, out_j, out_s = [], [], []
    cut = THRESHOLD - SIM_EPS
    for start in range(rows.start, rows.stop, block):
        stop = min(rows.stop, start + block)
        sims = vectors[start:stop] @ vectors.T
        bi, bj = np.nonzero(sims >= cut)
        gi = bi + start
        earlier = bj < gi
        out_i.append(gi[earlier])
        out_j.append(bj[earlier])
        out_s.append(sims[bi[earlier], bj[earlier]])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s)


def brute_force_dedup(vectors: np.ndarray, block: int = 2048) -> np.ndarray:
    """Exact greedy keep over all pairs (order = index)."""
    n = len(vectors)
    gi, gj, _ = brute_pairs(vectors, range(n), block)
    order = np.argsort(gi, kind="stable")
    gi, gj = gi[order], gj[order]
    keep = np.ones(n, dtype=bool)
    bounds = np.flatnonzero(np.diff(gi)) + 1
    for i_group, j_group in zip(np.split(gi, bounds), np.split(gj, bounds), strict=True):
        if len(i_group) and keep[j_group].any():
            keep[i_group[0]] = False
    return keep


def estimate_brute_seconds(vectors: np.ndarray, sample_rows: int = 1024, block: int = 256) -> float:
    """Seconds for all N rows from timing `sample_rows` rows (spread over the set) against all N."""
    n = len(vectors)
    starts = np.linspace(0, n - block, sample_rows // block).astype(int)
    started = time.perf_counter()
    for s in starts:
        brute_pairs(vectors, range(int(s), int(s) + block), block)
    per_row = (time.perf_counter() - started) / (len(starts) * block)
    return per_row * n


# ---------------------------------------------------------------------------------------------
# 10k instructions

# fmt: off
THINGS = [
    "the ocean", "a lighthouse", "autumn leaves", "a city at night", "a lost dog", "the first snow",
    "a volcano",
    "an old library", "a desert caravan", "a thunderstorm", "a honeybee", "the moon landing",
    "a train station",
    "a chess game", "a sunflower field", "a broken clock", "a mountain village", "a robot gardener",
    "a jazz club", "a school reunion", "a coral reef", "a midnight bakery", "a paper airplane",
    "a space station",
    "a grandmother's kitchen", "a rainy Monday", "an abandoned fairground", "a fishing boat",
    "a desert cactus",
    "a wedding dance", "a power outage", "a hospital night shift", "a street musician", "a frozen lake",
    "a migrating whale", "a first job", "a haunted lighthouse keeper", "an empty stadium", "a garden snail",
    "a long-distance call", "a vintage typewriter", "a wildfire", "a crowded subway", "an origami crane",
    "a mountain rescue", "a forgotten birthday", "a summer festival", "a stray kitten", "a harvest moon",
    "a science fair", "a shipwreck", "an ant colony", "a snow day", "a retiring teacher", "a tea ceremony",
    "a solar eclipse", "a rooftop garden", "a marathon finish", "a packed suitcase", "a sleeping volcano",
]
FORMS = ["poem", "short story", "limerick", "haiku", "song chorus", "diary entry", "news headline", "fable"]
TONES = ["funny", "sad", "hopeful", "eerie", "nostalgic", "angry"]
PROCESSES = [
    "photosynthesis", "a vaccine", "compound interest", "a refrigerator", "the immune system", "GPS",
    "a bicycle gear", "blockchain", "a solar panel", "the water cycle", "public-key encryption",
    "a jet engine",
    "plate tectonics", "a search engine", "natural selection", "a heat pump", "inflation", "a neural network",
    "the stock market", "a nuclear reactor", "a 3D printer", "wind erosion", "the human heart", "a compiler",
    "a microwave oven", "the electoral college", "a credit score", "noise-cancelling headphones",
    "a hurricane",
    "a touchscreen", "the kidneys", "a lock and key", "an elevator", "caffeine", "a rainbow", "tides",
    "a hybrid car", "wifi", "a camera lens", "memory in the brain",
]
AUDIENCES = ["a child", "a teenager", "a beginner", "an engineer", "a retiree", "a busy manager",
             "a nurse", "a farmer"]
LENGTHS = ["in one paragraph", "in three sentences", "step by step", "using an analogy", "in simple words"]
ACTIVITIES = [
    "learning Spanish", "running a marathon", "saving money", "sleeping better", "public speaking",
    "starting a vegetable garden", "writing a resume", "studying for exams", "cooking for one",
    "working from home", "training a puppy", "reducing stress", "taking better photos", "learning guitar",
    "travelling on a budget", "reading more books", "keeping houseplants alive", "making new friends",
    "negotiating a salary", "learning to swim", "decluttering a flat", "writing a novel", "quitting sugar",
    "moving to a new city", "hosting a dinner party", "learning to code", "camping in the rain",
    "preparing for a job interview", "teaching a teenager to drive", "staying focused",
]
GROUPS = ["students", "parents", "retirees", "shift workers", "beginners", "introverts", "nurses",
          "freelancers",
          "people with little time", "people on a tight budget"]
CODE_TASKS = [
    "reverses a string", "checks whether a number is prime", "merges two sorted lists",
    "counts the vowels in a sentence", "finds the largest element in a list",
    "removes duplicates from a list",
    "converts Celsius to Fahrenheit", "computes the factorial of n", "checks if a word is a palindrome",
    "flattens a nested list", "returns the n-th Fibonacci number", "sorts a dictionary by value",
    "validates an email address", "parses a CSV line", "computes the median of a list",
    "finds the longest word in a sentence", "rotates a matrix by 90 degrees", "counts word frequencies",
    "computes the greatest common divisor", "checks balanced parentheses",
    "converts a Roman numeral to an integer",
    "generates all permutations of a list", "finds two numbers that sum to a target", "capitalises each word",
    "reads a text file and counts its lines", "implements binary search", "chunks a list into groups of n",
    "computes a moving average", "detects an anagram", "encodes a string with a Caesar cipher",
]
LANGS = ["Python", "JavaScript", "Go", "Rust", "Java", "C++", "Ruby", "Kotlin"]
EXTRAS = ["", " and include a short test", " without using any library"]
PLACES = [
    "ancient Egypt", "the Roman Empire", "the Ming dynasty", "the Inca Empire", "Renaissance Florence",
    "Victorian London", "the Ottoman Empire", "feudal Japan", "the Aztec capital", "medieval Baghdad",
    "colonial Boston", "the Mughal court", "Viking Scandinavia", "the Silk Road", "Byzantine Constantinople",
    "classical Athens", "the Mali Empire", "Tang dynasty China", "Soviet Moscow", "1920s Paris",
    "the Maya cities", "Edo-period Tokyo", "Moorish Spain", "the Khmer Empire", "gold-rush California",
]
ASPECTS = ["daily life", "food", "trade", "warfare", "religion", "art", "education", "medicine", "music",
           "clothing", "childhood", "architecture"]
PHRASES = [
    "good morning", "where is the train station", "thank you very much", "I am lost", "how much does it cost",
    "the weather is lovely today", "see you tomorrow", "I would like a coffee", "happy birthday",
    "can you help me", "the museum opens at nine", "I love this city", "my phone battery is dead",
    "is this seat taken", "I am allergic to peanuts", "the bill, please", "we missed the last bus",
    "what time is it", "nice to meet you", "I need a doctor", "turn left at the bridge",
    "the meeting is cancelled", "I forgot my keys", "congratulations on your new job", "the shop is closed",
    "do you speak English", "I will call you later", "this soup is delicious", "where can I buy a ticket",
    "good luck with your exam",
]
LANGUAGES = ["French", "German", "Spanish", "Italian", "Japanese", "Portuguese", "Dutch", "Swahili", "Polish",
             "Korean", "Turkish", "Greek"]
PRODUCTS = [
    "water bottle", "backpack", "desk lamp", "pair of running shoes", "coffee grinder", "mechanical keyboard",
    "yoga mat", "electric kettle", "umbrella", "bluetooth speaker", "camping tent", "fountain pen",
    "office chair", "baby stroller", "smart watch", "chef's knife", "rain jacket", "board game",
    "air purifier", "bicycle helmet", "travel pillow", "cast-iron pan", "noise machine", "garden hose",
    "reading light", "wool blanket", "phone case", "espresso machine", "hiking boot", "standing desk",
    "sketchbook", "dog bed", "tea kettle", "sleeping bag", "laptop stand", "lunch box",
]
STYLES = ["playful", "luxurious", "eco-friendly", "minimalist", "rugged", "retro", "family-friendly",
          "high-tech"]
CHANNELS = ["in 50 words", "for an online shop", "for a printed catalogue"]
PAIRS = [
    ("cats", "dogs"), ("tea", "coffee"), ("trains", "planes"), ("renting", "buying a home"),
    ("Python", "Java"), ("solar power", "wind power"), ("novels", "films"), ("cities", "villages"),
    ("email", "instant messaging"), ("running", "swimming"), ("democracy", "monarchy"), ("ebooks",
    "paper books"),
    ("public schools", "homeschooling"), ("freelancing", "a salaried job"), ("SQL", "NoSQL databases"),
    ("nuclear power", "coal power"), ("team sports", "solo sports"), ("city bikes", "electric scooters"),
    ("meditation", "yoga"), ("print newspapers", "news apps"), ("credit cards", "debit cards"),
    ("hotels", "holiday rentals"), ("classical music", "pop music"), ("laptops", "tablets"),
    ("museums", "zoos"),
]
CRITERIA = ["cost", "health", "the environment", "convenience", "long-term value", "safety", "fun",
            "learning"]
RECIPIENTS = ["your landlord", "a colleague", "your manager", "a new client", "your child's teacher",
              "a hotel", "your neighbour", "a former professor", "the city council", "a supplier",
              "a job recruiter", "an old friend"]
PURPOSES = [
    "asking for a deadline extension", "complaining about noise", "requesting a refund",
    "declining an invitation",
    "thanking them for their help", "reporting a broken heater", "asking for a reference letter",
    "proposing a meeting next week", "apologising for a missed call", "announcing a move abroad",
    "asking about a lost parcel", "suggesting a new project", "requesting a day off",
    "following up on an offer",
    "reporting a billing error", "inviting them to a launch party", "asking for feedback on a draft",
    "cancelling a booking", "introducing a new team member", "asking for a price quote",
    "raising a safety concern", "confirming an appointment", "sharing good news",
    "asking for advice on a career change",
    "returning a borrowed book",
]
EMAIL_TONES = ["formal", "friendly", "firm", "apologetic", "enthusiastic"]
DISHES = [
    "lasagne", "pancakes", "chicken curry", "banana bread", "tomato soup", "fried rice", "falafel",
    "chocolate brownies", "risotto", "tacos", "shepherd's pie", "pad thai", "minestrone", "apple crumble",
    "veggie burgers", "paella", "lentil stew", "cheesecake", "ramen", "stuffed peppers", "carrot cake",
    "dumplings", "shakshuka", "mac and cheese", "goulash", "sushi rolls", "omelette", "pumpkin pie",
    "hummus", "beef stew", "fish pie", "gazpacho", "muffins", "chili", "pesto pasta", "granola",
    "spring rolls", "quiche", "naan bread", "fruit salad",
]
CONSTRAINTS = ["vegan", "gluten-free", "ready in 30 minutes", "for a crowd of twenty", "without an oven",
               "low in sugar", "for a toddler", "using leftovers"]
CHARACTERS = [
    "a retired detective", "a shy dragon", "a time-travelling nurse", "a talking fox", "a lonely astronaut",
    "a clumsy wizard", "a runaway princess", "a street artist", "a robot chef",
    "a ghost who is afraid of the dark",
    "a young inventor", "a pirate grandmother", "a forgetful superhero", "a lighthouse cat",
    "a rival chess player",
    "a homesick alien", "a village baker", "a deep-sea diver", "a nervous bride", "a mapmaker", "a beekeeper",
    "a translator", "a night bus driver", "a museum guard", "a circus acrobat",
]
SETTINGS = [
    "a floating city", "a snowed-in hotel", "a Martian colony", "a medieval market", "an underwater school",
    "a haunted train", "a desert oasis", "a jungle research station", "a 1980s arcade", "a royal ball",
    "a sinking ship", "a mountain monastery", "a neon-lit megacity", "a tiny island", "a war-time bunker",
    "a magic library", "a busy airport", "a lunar base", "a travelling circus", "a quiet fishing town",
    "a cursed forest", "a high school prom", "a space elevator", "an endless staircase",
]
GOALS = ["learning French", "losing weight", "writing a thesis", "training for a 10k", "saving for a car",
         "getting fit after an injury", "learning to draw", "preparing for a move", "launching a podcast",
         "renovating a kitchen", "reading the classics", "learning chess", "growing tomatoes",
    "starting a blog",
         "improving posture", "studying for a driving test", "building a mobile app", "cleaning out a garage",
         "planning a wedding", "running a bake sale"]
DURATIONS = ["weekend", "one-week", "30-day", "three-month", "six-month"]
BUSINESSES = ["coffee shop", "bakery", "bookstore", "yoga studio", "bike repair shop", "pet grooming salon",
              "food truck", "tutoring service", "cleaning company", "florist", "board game cafe",
    "barber shop",
              "vegan restaurant", "podcast", "craft brewery", "escape room", "language school",
    "plant nursery",
              "tattoo studio", "web design agency"]
NAME_STYLES = ["catchy", "elegant", "funny", "short", "old-fashioned", "futuristic", "local-sounding", "bold"]
NAME_COUNTS = ["three", "five", "ten"]
# fmt: on

# (slots, base template, paraphrase templates) per family.
FAMILIES: list[tuple[dict[str, list], str, list[str]]] = [
    (
        {"tone": TONES, "form": FORMS, "thing": THINGS},
        "Write a {tone} {form} about {thing}.",
        [
            "Compose a {tone} {form} about {thing}.",
            "Please write a {tone} {form} about {thing}.",
            "Can you write a {tone} {form} about {thing}?",
        ],
    ),
    (
        {"process": PROCESSES, "aud": AUDIENCES, "length": LENGTHS},
        "Explain how {process} works to {aud} {length}.",
        [
            "Explain to {aud} how {process} works {length}.",
            "Please explain how {process} works to {aud} {length}.",
            "Can you explain how {process} works to {aud} {length}?",
        ],
    ),
    (
        {"n": ["three", "five", "seven"], "activity": ACTIVITIES, "group": GROUPS},
        "Give {n} tips on {activity} for {group}.",
        [
            "Give me {n} tips on {activity} for {group}.",
            "Share {n} tips on {activity} for {group}.",
            "What are {n} tips on {activity} for {group}?",
        ],
    ),
    (
        {"task": CODE_TASKS, "lang": LANGS, "extra": EXTRAS},
        "Write a {lang} function that {task}{extra}.",
        [
            "Write a function in {lang} that {task}{extra}.",
            "Please write a {lang} function which {task}{extra}.",
            "Implement a {lang} function that {task}{extra}.",
        ],
    ),
    (
        {"place": PLACES, "aspect": ASPECTS},
        "Describe {aspect} in {place}.",
        [
            "Please describe {aspect} in {place}.",
            "Can you describe {aspect} in {place}?",
            "Give a description of {aspect} in {place}.",
        ],
    ),
    (
        {"phrase": PHRASES, "language": LANGUAGES},
        "Translate '{phrase}' into {language}.",
        [
            "Translate '{phrase}' to {language}.",
            "Please translate '{phrase}' into {language}.",
            "How do you say '{phrase}' in {language}?",
        ],
    ),
    (
        {"style": STYLES, "product": PRODUCTS, "channel": CHANNELS},
        "Write a {style} description of a {product} {channel}.",
        [
            "Write a description of a {style} {product} {channel}.",
            "Please write a {style} description of a {product} {channel}.",
            "Create a {style} description of a {product} {channel}.",
        ],
    ),
    (
        {"pair": PAIRS, "crit": CRITERIA},
        "Compare {a} and {b} in terms of {crit}.",
        [
            "Compare {a} with {b} in terms of {crit}.",
            "Please compare {a} and {b} in terms of {crit}.",
            "How do {a} and {b} compare in terms of {crit}?",
        ],
    ),
    (
        {"tone": EMAIL_TONES, "who": RECIPIENTS, "purpose": PURPOSES},
        "Write a {tone} email to {who} {purpose}.",
        [
            "Draft a {tone} email to {who} {purpose}.",
            "Please write a {tone} email to {who} {purpose}.",
            "Can you write a {tone} email to {who} {purpose}?",
        ],
    ),
    (
        {"dish": DISHES, "constraint": CONSTRAINTS},
        "Give me a recipe for {dish} that is {constraint}.",
        [
            "Share a recipe for {dish} that is {constraint}.",
            "Please give me a recipe for {dish} that is {constraint}.",
            "What is a good recipe for {dish} that is {constraint}?",
        ],
    ),
    (
        {"who": CHARACTERS, "where": SETTINGS},
        "Write the opening paragraph of a story about {who} in {where}.",
        [
            "Write the first paragraph of a story about {who} in {where}.",
            "Please write the opening paragraph of a story about {who} in {where}.",
            "Compose the opening paragraph of a story about {who} in {where}.",
        ],
    ),
    (
        {"duration": DURATIONS, "goal": GOALS},
        "Create a {duration} plan for {goal}.",
        [
            "Make a {duration} plan for {goal}.",
            "Please create a {duration} plan for {goal}.",
            "Can you create a {duration} plan for {goal}?",
        ],
    ),
    (
        {"n": NAME_COUNTS, "style": NAME_STYLES, "biz": BUSINESSES},
        "Suggest {n} {style} names for a {biz}.",
        [
            "Give me {n} {style} names for a {biz}.",
            "Please suggest {n} {style} names for a {biz}.",
            "Can you suggest {n} {style} names for a {biz}?",
        ],
    ),
]


def _fill(template: str, slots: dict[str, object]) -> str:
    values = dict(slots)
    if "pair" in values:
        values["a"], values["b"] = values.pop("pair")
    return re.sub(r"\ba ([aeiou])", r"an \1", template.format(**values))


def make_instructions(
    n: int, dup_frac: float = 0.1, seed: int = 0
) -> tuple[list[str], list[tuple[int, int]]]:
    """`n` instructions, `dup_frac` of them planted paraphrases; returns (texts, [source, copy] pairs)."""
    import itertools

    rng = random.Random(seed)
    combos = []
    for fam, (slots, _, _) in enumerate(FAMILIES):
        keys = list(slots)
        for values in itertools.product(*(slots[k] for k in keys)):
            combos.append((fam, dict(zip(keys, values, strict=True))))
    n_dup = int(n * dup_frac)
    n_base = n - n_dup
    if n_base > len(combos):
        raise ValueError(f"only {len(combos)} distinct base instructions; ask for fewer")
    chosen = rng.sample(combos, n_base)
    texts = [_fill(FAMILIES[fam][1], slots) for fam, slots in chosen]
    pairs = []
    for src in rng.sample(range(n_base), n_dup):
        fam, slots = chosen[src]
        kind = rng.random()
        if kind < 0.25:  # surface change only: an exact duplicate after normalisation
            text = texts[src].lower().rstrip(".?!") + rng.choice(["", "!", " ?", "..."])
        else:
            text = _fill(rng.choice(FAMILIES[fam][2]), slots)
        pairs.append((src, len(texts)))
        texts.append(text)
    order = list(range(len(texts)))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    return [texts[i] for i in order], [(where[a], where[b]) for a, b in pairs]


# ---------------------------------------------------------------------------------------------


def bench_vectors(n: int, full_brute: bool) -> dict:
    started = time.perf_counter()
    vectors, pairs = make_vectors(n)
    gen_s = time.perf_counter() - started
    print(f"[{n}] generated in {gen_s:.1f}s; running ours...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    ours = semantic_dedup(vectors, threshold=THRESHOLD)
    ours_s = time.perf_counter() - started
    row = {
        "n": n,
        "planted_pairs": int(len(pairs)),
        "ours_seconds": round(ours_s, 2),
        "ours_stats": ours.stats,
        "ours_dropped": int((~ours.keep).sum()),
        "ours_planted_recall": planted_recall(ours.keep, pairs),
    }
    print(f"[{n}] ours {ours_s:.1f}s {ours.stats}; brute force...", file=sys.stderr, flush=True)
    if full_brute:
        started = time.perf_counter()
        exact = brute_force_dedup(vectors)
        row["brute_seconds"] = round(time.perf_counter() - started, 2)
        row["brute_estimated"] = False
        row["brute_dropped"] = int((~exact).sum())
        row["brute_planted_recall"] = planted_recall(exact, pairs)
        exact_drops = ~exact
        row["ours_recall_of_exact_drops"] = (
            float(np.mean(~ours.keep[exact_drops])) if exact_drops.any() else 1.0
        )
        row["same_decision_share"] = float(np.mean(ours.keep == exact))
    else:
        row["brute_seconds"] = round(estimate_brute_seconds(vectors), 1)
        row["brute_estimated"] = True
    return row


def bench_e2e(n: int) -> dict:
    from datagen.embed import embed_texts, load_model
    from datagen.records import Record
    from datagen.stages.context import StageContext
    from datagen.stages.dedup import DedupConfig, run

    texts, pairs = make_instructions(n)
    records = [Record(id=f"i{i}", instruction=t, output="") for i, t in enumerate(texts)]
    started = time.perf_counter()
    load_model()
    load_s = time.perf_counter() - started
    started = time.perf_counter()
    result = run(records, StageContext(progress=False), DedupConfig())
    total_s = time.perf_counter() - started
    gone = {int(r.id[1:]) for r in result.dropped}
    caught = [a in gone or b in gone for a, b in pairs]
    planted_members = {x for pair in pairs for x in pair}
    by_reason = {"exact_duplicate": 0, "near_duplicate": 0}
    for r in result.dropped:
        by_reason[r.meta.drop_reason] += 1
    # Brute force on the same embeddings, for the recall of exact search at the same threshold.
    vectors = embed_texts(texts, progress=False)
    started = time.perf_counter()
    exact_keep = brute_force_dedup(vectors)
    brute_s = time.perf_counter() - started
    missed = [
        (texts[a], texts[b], round(float(vectors[a] @ vectors[b]), 3))
        for (a, b), c in zip(pairs, caught, strict=True)
        if not c
    ]
    rouge = rouge_on_pairs(texts, pairs, n)
    return {
        "n": n,
        "planted_pairs": len(pairs),
        "model_load_seconds": round(load_s, 2),
        "embed_seconds": result.stats.get("embed_seconds"),
        "dedup_seconds_total": round(total_s, 2),
        "search_seconds": result.stats.get("search_seconds"),
        "index": result.stats.get("index"),
        "dropped": by_reason,
        "planted_recall": float(np.mean(caught)),
        "extra_drops_not_planted": len(gone - planted_members),
        "brute_numpy_same_embeddings_seconds": round(brute_s, 3),
        "brute_numpy_planted_recall": float(
            np.mean([not (exact_keep[a] and exact_keep[b]) for a, b in pairs])
        ),
        "missed_examples": missed[:5],
        "alpaca_rouge": rouge,
    }


def rouge_on_pairs(texts: list[str], pairs: list[tuple[int, int]], n: int) -> dict:
    """The Alpaca-style ROUGE-L > 0.7 filter: which planted pairs would it catch, and its
    all-pairs cost (estimated from timing 5000 random pairs; it is O(N^2) with a Python DP)."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    caught = [scorer.score(texts[a], texts[b])["rougeL"].fmeasure > 0.7 for a, b in pairs]
    rng = random.Random(1)
    sample = [(rng.randrange(n), rng.randrange(n)) for _ in range(5000)]
    started = time.perf_counter()
    for a, b in sample:
        scorer.score(texts[a], texts[b])
    per_pair = (time.perf_counter() - started) / len(sample)
    return {
        "planted_recall": float(np.mean(caught)),
        "all_pairs_seconds_estimated": round(per_pair * n * (n - 1) / 2, 1),
    }


def main() -> int:
    import faiss

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument(
        "--full-brute-max", type=int, default=100_000, help="run brute force fully up to this N"
    )
    parser.add_argument(
        "--e2e", type=int, default=10_000, help="instructions for the end-to-end run (0 = skip)"
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "dedup.json"))
    args = parser.parse_args()

    threads = faiss.omp_get_max_threads()
    print(f"faiss {faiss.__version__}, omp threads {threads}, numpy {np.__version__}", file=sys.stderr)
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "faiss_omp_threads": threads,
            "python": platform.python_version(),
        },
        "threshold": THRESHOLD,
        "note": "synthetic 384-d vectors for 100k/1M (embedding 1M texts here would take ~35 min); "
        "1M brute force is an estimate from timed sample rows",
        "vectors": [],
    }
    e2e = bench_e2e(args.e2e) if args.e2e else None
    result["end_to_end"] = e2e
    for n in args.sizes:
        result["vectors"].append(bench_vectors(n, full_brute=n <= args.full_brute_max))
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # partial results survive a kill

    print()
    if e2e:
        print(
            f"end to end, {e2e['n']} instructions ({e2e['planted_pairs']} planted paraphrases), "
            "bundled MiniLM:"
        )
        print(
            f"  embed {e2e['embed_seconds']:.1f}s + search {e2e['search_seconds']:.2f}s "
            f"(stage total {e2e['dedup_seconds_total']:.1f}s, model load {e2e['model_load_seconds']:.1f}s)"
        )
        print(
            f"  dropped: {e2e['dropped']}; planted recall {e2e['planted_recall']:.3f} "
            f"(brute numpy on same embeddings {e2e['brute_numpy_planted_recall']:.3f}); "
            f"drops outside planted pairs {e2e['extra_drops_not_planted']}"
        )
        print(
            f"  Alpaca ROUGE-L>0.7 would catch {e2e['alpaca_rouge']['planted_recall']:.3f} "
            "of the planted pairs; "
            f"its all-pairs pass ~{e2e['alpaca_rouge']['all_pairs_seconds_estimated']:.0f}s (estimated)"
        )
        print()
    print(
        f"{'N':>9} {'ours index':>10} {'ours s':>8} {'brute s':>12} {'speedup':>8} {'planted recall':>15} "
        f"{'recall vs exact':>16}"
    )
    for row in result["vectors"]:
        brute = f"{row['brute_seconds']:.1f}" + (" (est)" if row["brute_estimated"] else "")
        vs_exact = (
            f"{row['ours_recall_of_exact_drops']:.4f}" if "ours_recall_of_exact_drops" in row else "n/a"
        )
        speed = row["brute_seconds"] / row["ours_seconds"]
        print(
            f"{row['n']:>9} {row['ours_stats']['index']:>10} {row['ours_seconds']:>8.1f} {brute:>12} "
            f"{speed:>7.1f}x {row['ours_planted_recall']:>15.4f} {vs_exact:>16}"
        )
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    last = result["vectors"][-1]
    print(
        f"{last['n']:,} vectors: ours (FAISS {last['ours_stats']['index']}) {last['ours_seconds']:.1f}s vs "
        f"brute-force numpy {last['brute_seconds']:.0f}s{' (estimated)' if last['brute_estimated'] else ''}"
        f" -> {last['brute_seconds'] / last['ours_seconds']:.0f}x faster, planted recall "
        f"{last['ours_planted_recall']:.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
