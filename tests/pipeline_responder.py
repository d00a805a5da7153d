"""A deterministic 'model' for whole-pipeline tests over the loopback server.

It recognises each of our prompts by a phrase from its template and answers in the shape that
prompt asks for, with content derived from a hash of the prompt: the same request always gets
the same reply (so an interrupted run and an uninterrupted one must end byte-identical), and
different requests get different, novel text (so novelty and dedup filters keep them).
"""

from __future__ import annotations

import hashlib
import re

VOCAB = (
    "orbit glacier ledger violin harbor quartz meadow cipher lantern tundra saffron beacon canyon "
    "falcon mosaic nectar pylon quiver ribbon summit thistle umber vortex willow yonder zephyr "
    "anchor bramble cobalt dune ember fjord garnet hollow indigo jasper kelp lagoon maple nimbus "
    "oasis pepper quill raven sable tidal urchin velvet walnut xenon yarrow zinc almond birch"
).split()


def _words(seed: str, count: int) -> list[str]:
    out, counter = [], 0
    while len(out) < count:
        digest = hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        out.extend(VOCAB[b % len(VOCAB)] for b in digest[:8])
        counter += 1
    return out[:count]


def reply(messages: list[dict[str, str]], choice: int, seed: int | None) -> str:
    prompt = messages[-1]["content"] if messages else ""
    key = f"{prompt}|{choice}|{seed}"
    if prompt.endswith("<|im_start|>user\n"):  # Magpie's pre-query prompt: write a user query
        w = _words(key, 7)
        if "Chinese" in prompt:
            return "请解释为什么" + "".join("天地人山水火木"[ord(c) % 7] for c in w[0]) + "会影响气候？"
        return f"How does the {w[0]} {w[1]} shape the {w[2]} {w[3]} of a {w[4]} {w[5]} {w[6]}?"
    if "Now invent" in prompt:
        wanted = re.search(r"invent (\d+)", prompt)
        count = int(wanted.group(1)) if wanted else 8
        start = len(re.findall(r"^\d+\. ", prompt, re.M)) + 1
        lines = []
        for k in range(count):
            w = _words(f"{key}:{k}", 6)
            lines.append(f"{start + k}. Describe how the {w[0]} {w[1]} affects the {w[2]} {w[3]} near the {w[4]} {w[5]}.")
        return "\n".join(lines)
    if "You are playing the user in a conversation" in prompt:  # conversation: the next user turn
        if len(re.findall(r"^User: ", prompt, re.M)) >= 5:
            return "[END]"
        w = _words(key, 6)
        return f"Thanks. Could you also show how the {w[0]} {w[1]} would change if the {w[2]} {w[3]} met the {w[4]} {w[5]}?"
    if "answer Yes or No" in prompt:
        return "No"
    if "Class label:" in prompt:
        w = _words(key, 6)
        return f"Example 1\nClass label: {w[0]}\nInput: The {w[1]} {w[2]} and the {w[3]} {w[4]} {w[5]}."
    if "Input: ..." in prompt and "Output: ..." in prompt:
        w = _words(key, 12)
        return f"Example 1\nInput: (none)\nOutput: The {' '.join(w[:6])} is explained by the {' '.join(w[6:])}."
    if "add something that the first one does not have" in prompt:
        return "yes"
    if "Grade on a scale" in prompt:  # best-of-n judge; prefer the first candidate's wording
        score = 9 - choice % 2 if "Here is" in prompt else 7
        return f'{{"reason": "complete and correct", "score": {score}}}'
    if "Answer with a single JSON object" in prompt:  # quality judge
        return '{"reason": "correct and clear", "score": 5}'
    if "Rewritten instruction" in prompt or "Created instruction" in prompt or "You help build training data" in prompt:
        w = _words(key, 8)
        return f"Explain in three steps why the {w[0]} {w[1]} changes the {w[2]} {w[3]}, citing the {w[4]} {w[5]} {w[6]} {w[7]}."
    w = _words(key, 40)
    sentences = [" ".join(w[i : i + 8]).capitalize() + "." for i in range(0, 40, 8)]
    return "Here is a careful answer. " + " ".join(sentences)
