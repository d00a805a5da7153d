"""Real English text with planted paraphrases, for dedup recall and precision.

There is no internet here for instruction datasets, so the text is what this machine has
that people wrote: the 175 seed tasks (instructions and instance inputs) plus every sentence
of 25-300 characters found in the docstrings of the Python packages installed beside
datagen (~120k unique sentences in this venv, many imperative: "Return the list of ...").
They are real, varied and written by many hands, but they are documentation, not chat
instructions: say so next to any number measured on them.

The corpus is exact-deduplicated (the stage's own normalisation) before planting, so the only
duplicates we know of are the planted ones; the corpus still holds natural near duplicates
(sister methods documented alike), which is why precision is reported as "share of drops that
are planted copies" and not as the precision of a human-labelled set.

Planted copies are paraphrase-like edits of a random source sentence, one or two of: a polite
wrapper ("Please ...", "Can you ...?"), a synonym swap from a small table, dropping a function
word, a one-letter typo in a long word, an appended filler clause. No word-order shuffles:
a bag-of-tokens static model would see those as identical, which would flatter it.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_DOCSTRING = re.compile(r'"""(.*?)"""', re.S)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_MARKS = set("=>{}|`$\\")

SYNONYMS = {
    "return": "give back",
    "returns": "gives back",
    "get": "retrieve",
    "gets": "retrieves",
    "compute": "calculate",
    "computes": "calculates",
    "create": "make",
    "creates": "makes",
    "check": "verify",
    "checks": "verifies",
    "list": "sequence",
    "number": "count",
    "remove": "delete",
    "removes": "deletes",
    "find": "locate",
    "finds": "locates",
    "write": "compose",
    "explain": "describe",
    "show": "display",
    "shows": "displays",
    "given": "provided",
    "value": "quantity",
    "method": "function",
    "simple": "basic",
    "large": "big",
    "small": "little",
    "use": "utilise",
    "uses": "utilises",
    "start": "begin",
    "build": "construct",
    "builds": "constructs",
    "convert": "transform",
    "converts": "transforms",
}
FUNCTION_WORDS = ("the", "a", "an", "of", "that", "this", "to")
WRAPPERS = ("Please {s}", "Can you {s_q}?", "I need you to {s}", "Could you {s_q}?")
FILLERS = (" Keep it short.", " Be precise.", " Thanks.", " Explain briefly.")


def docstring_sentences(root: Path | None = None) -> list[str]:
    """Sentences from docstrings of installed packages (site-packages of this interpreter)."""
    import site

    roots = [Path(p) for p in site.getsitepackages()] if root is None else [root]
    out: set[str] = set()
    for base in roots:
        for path in sorted(base.rglob("*.py")):
            try:
                source = path.read_text(encoding="utf-8", errors="ignore")
            except OSError:
                continue
            for match in _DOCSTRING.finditer(source):
                for para in re.split(r"\n\s*\n", match.group(1)):
                    para = " ".join(para.split())
                    if not para or not para[0].isupper() or _CODE_MARKS & set(para):
                        continue
                    for sentence in _SENTENCE_END.split(para):
                        if 25 <= len(sentence) <= 300 and sentence[-1] in ".?!" and sentence.count(" ") >= 3:
                            out.add(sentence)
    return sorted(out)


def seed_texts() -> list[str]:
    sys.path.insert(0, str(ROOT))
    from datagen.io import default_seeds_path, read_seed_tasks

    texts = []
    for task in read_seed_tasks(default_seeds_path()):
        texts.append(task.instruction)
        texts += [inst.input for inst in task.instances if inst.input and len(inst.input) <= 300]
    return texts


def paraphrase(text: str, rng: random.Random) -> str:
    """One or two meaning-preserving edits (see the module docstring)."""
    edits = rng.sample(["wrap", "synonym", "drop", "typo", "filler"], rng.choice([1, 2]))
    for edit in edits:
        words = text.split()
        if edit == "synonym":
            spots = [i for i, w in enumerate(words) if w.lower().strip(".,?!") in SYNONYMS]
            if spots:
                i = rng.choice(spots)
                core = words[i].lower().strip(".,?!")
                swap = SYNONYMS[core]
                swap = swap.capitalize() if words[i][0].isupper() else swap
                words[i] = words[i].replace(words[i].strip(".,?!"), swap)
                text = " ".join(words)
                continue
            edit = "drop"
        if edit == "drop":
            spots = [i for i, w in enumerate(words) if w.lower() in FUNCTION_WORDS]
            if spots:
                del words[rng.choice(spots)]
                text = " ".join(words)
                continue
            edit = "typo"
        if edit == "typo":
            spots = [i for i, w in enumerate(words) if len(w) >= 7 and w.isalpha()]
            if spots:
                i = rng.choice(spots)
                j = rng.randrange(1, len(words[i]) - 1)
                words[i] = words[i][:j] + words[i][j + 1 :]
                text = " ".join(words)
                continue
            edit = "filler"
        if edit == "filler":
            text = text + rng.choice(FILLERS)
        elif edit == "wrap":
            body = text[0].lower() + text[1:] if text[1:2].islower() else text
            text = rng.choice(WRAPPERS).format(s=body, s_q=body.rstrip(".!?"))
    return text


def planted_corpus(
    n: int, dup_frac: float = 0.1, seed: int = 0
) -> tuple[list[str], list[tuple[int, int]], str]:
    """`n` texts, `dup_frac` of them planted paraphrases: (texts, [source, copy] pairs, description)."""
    sys.path.insert(0, str(ROOT))
    from datagen.stages.dedup import normalize_text

    pool: dict[str, str] = {}
    for text in seed_texts() + docstring_sentences():
        pool.setdefault(normalize_text(text), text)
    base_all = list(pool.values())
    rng = random.Random(seed)
    n_dup = int(n * dup_frac)
    n_base = n - n_dup
    if n_base > len(base_all):
        raise ValueError(f"only {len(base_all)} distinct sentences available here; ask for fewer than {n}")
    texts = rng.sample(base_all, n_base)
    pairs = []
    for src in rng.sample(range(n_base), n_dup):
        copy = paraphrase(texts[src], rng)
        if normalize_text(copy) == normalize_text(texts[src]):
            copy = copy + rng.choice(FILLERS)
        pairs.append((src, len(texts)))
        texts.append(copy)
    order = list(range(len(texts)))
    rng.shuffle(order)
    where = {old: new for new, old in enumerate(order)}
    about = (
        f"{n_base} real sentences ({len(base_all)} available: seed tasks + docstrings of installed packages, "
        f"exact-deduplicated) + {n_dup} planted paraphrase-like copies"
    )
    return [texts[i] for i in order], [(where[a], where[b]) for a, b in pairs], about
