"""Quality on dialogues: every assistant turn is checked, and one bad turn drops or truncates.

A multi-turn record (more than one assistant answer in `messages`) becomes one *view* per
assistant turn: a single-turn record whose instruction is that turn's user message and whose
output is the answer, so every rule, IFD and the judge apply to each answer exactly as they do
to a single-turn record. The judge also sees the dialogue before the turn (a follow-up such as
"and in winter?" means nothing alone). A single-turn record is its own one view, unchanged.

Back on the dialogue: with `on_bad_turn: drop` the first bad turn drops it (its reason, with
`turn` in the detail); with `truncate` the dialogue keeps its turns before the first bad one
(a bad first turn still drops it). A kept dialogue's judge score is its worst turn's.
"""

from __future__ import annotations

from typing import Any

from datagen.records import Message, Record, dropped


def assistant_turns(record: Record) -> list[tuple[list[dict[str, str]], str]]:
    """(context up to and including the user message, answer) for each assistant turn."""
    if not record.messages:
        return []
    msgs = [m.model_dump() for m in record.messages]
    return [(msgs[:i], m["content"]) for i, m in enumerate(msgs) if m["role"] == "assistant" and i > 0]


def dialogue_text(context: list[dict[str, str]]) -> str:
    """The dialogue before an answer, for the judge: earlier turns labelled, the question last."""
    turns = [m for m in context if m["role"] != "system"]
    if len(turns) <= 1:
        return turns[-1]["content"] if turns else ""
    earlier = "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in turns[:-1])
    return f"(Conversation so far)\n{earlier}\n\n(The user's new message)\n{turns[-1]['content']}"


def turn_views(records: list[Record]) -> tuple[list[Record], list[tuple[int, int]], dict[int, str]]:
    """Views, (record index, turn number) per view, and the judge's text for views of dialogues."""
    views: list[Record] = []
    owners: list[tuple[int, int]] = []
    judge_text: dict[int, str] = {}
    for r, record in enumerate(records):
        turns = assistant_turns(record)
        if len(turns) <= 1:
            views.append(record)
            owners.append((r, 1))
            continue
        for t, (context, answer) in enumerate(turns, start=1):
            view = record.model_copy(deep=True)
            view.messages = None
            if t > 1:  # the first turn's view is the record's own instruction/input
                view.instruction, view.input = context[-1]["content"], ""
                view.meta.answer_finish_reason = None
            view.output = answer
            judge_text[len(views)] = dialogue_text(context)
            views.append(view)
            owners.append((r, t))
    return views, owners, judge_text


def merge_turns(
    records: list[Record],
    views: list[Record],
    owners: list[tuple[int, int]],
    verdicts: dict[int, tuple[str, dict[str, Any]]],
    on_bad_turn: str,
    stats: dict[str, Any],
) -> tuple[list[Record], list[Record]]:
    """Kept and dropped records (input order) from the views' verdicts; `views` are the final
    ones (with the scores the rules, IFD and the judge wrote)."""
    by_record: dict[int, list[int]] = {}
    for v, (r, _) in enumerate(owners):
        by_record.setdefault(r, []).append(v)
    kept: list[Record] = []
    gone: list[Record] = []
    truncated = 0
    for r, record in enumerate(records):
        vs = by_record[r]
        if len(assistant_turns(record)) <= 1:  # a single-turn record: its own view
            v = vs[0]
            if v in verdicts:
                gone.append(dropped(views[v], verdicts[v][0], **verdicts[v][1]))
            else:
                kept.append(views[v] if views[v] is not record else record.model_copy(deep=True))
            continue
        out = record.model_copy(deep=True)
        bad = next((v for v in vs if v in verdicts), None)
        good = vs if bad is None else vs[: vs.index(bad)]
        _carry_scores(out, [views[v] for v in good] or [views[vs[0]]])
        if bad is None:
            kept.append(out)
            continue
        reason, detail = verdicts[bad]
        turn = owners[bad][1]
        if on_bad_turn == "drop" or not good:
            gone.append(dropped(out, reason, **detail, turn=turn, turns=len(vs)))
            continue
        out.messages = _first_turns(out.messages or [], turn - 1)
        out.meta.conversation_stop = f"truncated_by_quality:{reason}"
        truncated += 1
        kept.append(out)
    stats["dialogues"] = sum(len(v) > 1 for v in by_record.values())
    stats["dialogues_truncated"] = truncated
    return kept, gone


def _carry_scores(out: Record, views: list[Record]) -> None:
    """A dialogue's scores: the worst judged turn's score and reason, the highest IFD."""
    judged = [v for v in views if "quality_judge" in v.meta.scores]
    if judged:
        worst = min(judged, key=lambda v: v.meta.scores["quality_judge"])
        out.meta.scores["quality_judge"] = worst.meta.scores["quality_judge"]
        out.meta.quality_judge_reason = worst.meta.quality_judge_reason
    ifds = [v.meta.scores["ifd"] for v in views if "ifd" in v.meta.scores]
    if ifds:
        out.meta.scores["ifd"] = max(ifds)


def _first_turns(messages: list[Message], turns: int) -> list[Message]:
    """The dialogue through its `turns`-th assistant answer."""
    seen = 0
    for i, m in enumerate(messages):
        if m.role == "assistant":
            seen += 1
            if seen == turns:
                return messages[: i + 1]
    return messages
