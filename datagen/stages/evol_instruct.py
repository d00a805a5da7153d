"""Evol-Instruct: rewrite instructions into harder (in-depth) or rarer (in-breadth) ones, in rounds.

Each round, every instruction in the pool draws one operation (weights configurable), the LLM
rewrites it, and the rewrite must survive the elimination rules before it replaces its parent
in the pool:

* `llm_error`            a request failed for good (errors are never cached: a rerun retries)
* `empty_evolution`      nothing usable came back
* `truncated_evolution`  the rewrite hit max_tokens, so it is cut off
* `template_leak`        the rewrite talks about the prompt ("given prompt", "#Rewritten Prompt#")
* `copied_parent`        the rewrite is the parent again (up to case/punctuation)
* `no_information_gain`  the LLM equality check says the rewrite adds nothing over its parent
* `refusal_response`     the answer to the rewrite apologises/refuses and is short (< 80 words)
* `degenerate_response`  the answer is only punctuation and stop words

The last two need an answer, so the stage answers every surviving rewrite (as WizardLM does)
and keeps that answer as the record's `output`; distillation can re-answer or reuse it.

A failed evolution returns its parent to the pool unchanged, so the parent gets another try
(with a fresh operation and seed) next round; the failed attempt goes to `dropped` with its
reason. Lineage lives in meta: `parent_id` (the immediate parent), `evol_op`, `round` (the
round of this run that produced it), `root_id` (the input record it descends from) and
`evol_depth` (successful evolutions since the root). Ids hash content plus lineage, and ops
and seeds come from `ctx.rng` salted per record and round, so reruns are identical and adding
a record never changes what happens to the others.

Records are evolved through `prompt_text()` (instruction plus input); an evolved record is a
single-turn task with an empty `input`, since rewriting may fold the input into the text.

Multi-turn records (`messages` with more than one user turn), by `turns`:

* `first` (default): the first user turn is evolved into a single-turn task (the later turns
  followed up on the old question, so they are not carried over);
* `keep`: they pass through unevolved; only single-turn records evolve;
* `each`: every user turn is rewritten with the op drawn for the record (one request per
  turn, each checked by the rules above, a failing turn fails the whole attempt with its
  `turn` in the detail), then every assistant turn is answered again in order, each seeing the
  rewritten dialogue before it (the `conversation` stage's answer round: `assistant_turn_failed`,
  `assistant_turn_cut_off`, and the refusal / degenerate rules per answer). Old answers would
  answer questions no longer asked, so they are never kept; hence `each` needs `answer`. A
  `breadth` draw writes a new task, which the old follow-ups would not fit: it evolves the
  first turn only, as `first` does.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from datagen.errors import failure_reason
from datagen.llm import ChatRequest, Completion, generate_sync
from datagen.parsing import parse_yes_no
from datagen.plan import Calls, Records, StagePlan, finish, template_tokens
from datagen.prompts import render
from datagen.records import Message, Record, RecordMeta, StageResult, dropped, stable_id
from datagen.registry import Command, Stage, register
from datagen.stages.conversation import Dialogue, answer_round
from datagen.stages.evol_config import IN_DEPTH_OPS, EvolConfig

# English function words (the usual NLTK-style list, plus contraction fragments) used by the
# degenerate-response rule: an answer made only of these carries no content.
STOP_WORDS = frozenset(
    """a about above after again against ain all am an and any are aren as at be because been before being
    below between both but by can could couldn d did didn do does doesn doing don down during each few for
    from further had hadn has hasn have haven having he her here hers herself him himself his how i if in
    into is isn it its itself just ll m ma me might mightn more most must mustn my myself needn no nor not
    now o of off on once only or other our ours ourselves out over own re s same shan she should shouldn
    so some such t than that the their theirs them themselves then there these they this those through to
    too under until up us ve very was wasn we were weren what when where which while who whom why will
    with won would wouldn y you your yours yourself yourselves yes ok okay oh well""".split()
)


def clean_evolution(text: str) -> str:
    """The rewrite without a leading label ("Rewritten instruction:") or wrapping quotes.

    Models often echo the label our prompt ends with; that is formatting, not a leak. A label
    *inside* the text (the model talking about the prompt) is left for the leak rule.
    """
    text = text.strip()
    text = _LABEL.sub("", text, count=1).strip()
    if (
        len(text) >= 2
        and text[0] in "\"“'"
        and text[-1] in "\"”'"
        and text[0] + text[-1] in {'""', "“”", "''"}
    ):
        inner = text[1:-1]
        if text[0] not in inner and "”" not in inner:
            text = inner.strip()
    return text


_LABEL = re.compile(
    r"^[\s#*]*(?:rewritten|new|created|evolved|revised|improved|harder)\s+(?:instruction|prompt)[\s#*]*:[\s*]*",
    re.I,
)


def _normalise(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.lower()).strip()


def find_leak(text: str, leak_words: list[str]) -> str | None:
    lowered = text.lower()
    return next((w for w in leak_words if w and w.lower() in lowered), None)


def is_refusal(text: str, phrases: list[str], max_words: int) -> bool:
    """Apologies and refusals that stop short; a long answer that says "sorry" once is fine."""
    if len(text.split()) >= max_words:
        return False
    lowered = text.lower().replace("’", "'")
    return any(p.lower() in lowered for p in phrases if p)


def is_degenerate(text: str) -> bool:
    """Only punctuation and stop words (or nothing): no content to learn from."""
    words = re.findall(r"[^\W_]+", text.lower())
    return all(w in STOP_WORDS for w in words)


class _Attempt:
    """One evolution attempt of one pool member in one round."""

    def __init__(self, index: int, parent: Record, op: str, seed: int):
        self.index = index
        self.parent = parent
        self.op = op
        self.seed = seed
        self.turns: list[str] = []  # `turns: each` on a dialogue: the parent's user turns, each rewritten
        self.turn_seeds: list[int] = []
        self.new_turns: list[str] = []
        self.child: Record | None = None
        self.rejected: Record | None = None  # a rewrite that failed a phase-2 rule, for `dropped`
        self.failure: tuple[str, dict[str, Any]] | None = None

    def fail(self, reason: str, **detail: Any) -> None:
        self.failure = (reason, detail)


def user_turns(record: Record) -> list[str]:
    return [m.content for m in record.messages or [] if m.role == "user"]


def run(records: list[Record], ctx: Any, config: EvolConfig) -> StageResult:
    llm = ctx.llm(config.llm)
    op_names = [op for op, w in config.ops.items() if w > 0]
    weights = [config.ops[op] for op in op_names]
    passed = [r for r in records if config.turns == "keep" and len(user_turns(r)) > 1]
    passed_ids = {id(r) for r in passed}
    pool = [r for r in records if r.prompt_text().strip() and id(r) not in passed_ids]
    stats: dict[str, Any] = {
        "input_records": len(records),
        "skipped_empty": len(records) - len(pool) - len(passed),
        "rounds": config.rounds,
        "requests": 0,
        "evolved": 0,
        "ops_drawn": Counter(),
        "ops_succeeded": Counter(),
        "equality_unparsed": 0,
        "answers_truncated": 0,
        "per_round": [],
        **({"dialogues_kept": len(passed)} if config.turns == "keep" else {}),
    }
    successes_by_round: list[list[Record]] = []
    failed: list[Record] = []

    for rnd in range(1, config.rounds + 1):
        attempts = []
        for i, parent in enumerate(pool):
            rng = ctx.rng(f"evol:{parent.id}:{rnd}")
            op = rng.choices(op_names, weights)[0]
            attempt = _Attempt(i, parent, op, rng.randrange(2**31))
            if config.turns == "each" and op != "breadth" and len(user_turns(parent)) > 1:
                attempt.turns = user_turns(parent)
                attempt.turn_seeds = [attempt.seed] + [rng.randrange(2**31) for _ in attempt.turns[1:]]
            attempts.append(attempt)
            stats["ops_drawn"][op] += 1
        with ctx.bar(len(attempts), f"evolve round {rnd}/{config.rounds}", unit="req") as bar:
            _evolve(attempts, llm, ctx, config, rnd, bar, stats)
            _check_and_answer(attempts, llm, ctx, config, bar, stats)
            _answer_later_turns(attempts, llm, ctx, config, stats)
            done = [a for a in attempts if a.child is not None]
            bar.set_postfix(evolved=len(done), failed=len(attempts) - len(done))
        round_failures: Counter[str] = Counter()
        for attempt in attempts:
            if attempt.failure is not None:
                reason, detail = attempt.failure
                round_failures[reason] += 1
                failed.append(dropped(_failed_record(attempt, rnd, llm.name), reason, **detail))
            elif attempt.child is not None:
                stats["ops_succeeded"][attempt.op] += 1
        successes_by_round.append([a.child for a in attempts if a.child is not None])
        stats["evolved"] += len(done)
        stats["per_round"].append(
            {
                "round": rnd,
                "attempts": len(attempts),
                "evolved": len(done),
                "failed": dict(sorted(round_failures.items())),
            }
        )
        # Success replaces the parent; failure leaves it in the pool for the next round.
        pool = [a.child if a.child is not None else a.parent for a in attempts]

    kept = list(records) if config.keep_originals else list(passed)
    if config.keep_all_rounds:
        for round_children in successes_by_round:
            kept.extend(round_children)
    else:
        produced = {id(c) for round_children in successes_by_round for c in round_children}
        kept.extend(r for r in pool if id(r) in produced)
    stats["ops_drawn"] = dict(sorted(stats["ops_drawn"].items()))
    stats["ops_succeeded"] = dict(sorted(stats["ops_succeeded"].items()))
    return StageResult(kept=kept, dropped=failed, stats=stats)


def _evolve(
    attempts: list[_Attempt],
    llm: Any,
    ctx: Any,
    config: EvolConfig,
    rnd: int,
    bar: Any,
    stats: dict[str, Any],
) -> None:
    """Phase 1: one rewrite request per attempt (per user turn under `turns: each`), then the rules
    that need no further call; the first turn that fails one fails the attempt."""
    jobs = [(a, j, text, seed) for a in attempts
            for j, (text, seed) in enumerate(zip(a.turns or [a.parent.prompt_text()], a.turn_seeds or [a.seed],
                                                 strict=True))]
    requests = [
        ChatRequest.chat(
            render(f"evol_{a.op}", prompts_dir=ctx.prompts_dir, instruction=text),
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            seed=seed,
        )
        for a, _, text, seed in jobs
    ]
    stats["requests"] += len(requests)
    completions = generate_sync(llm, requests, lambda i, c: bar.update(1))
    rewrites: dict[int, list[str]] = {}
    for (attempt, j, source, _), completion in zip(jobs, completions, strict=True):
        if attempt.failure is not None:
            continue
        where = {"turn": j + 1} if attempt.turns else {}
        failed = failure_reason(completion)
        if failed and failed != "empty_reply":  # an empty rewrite is `empty_evolution` below
            attempt.fail(failed, step="evolve", op=attempt.op, round=rnd, error=completion.error, **where)
            continue
        text = clean_evolution(completion.text)
        if not text:
            attempt.fail("empty_evolution", op=attempt.op, round=rnd, raw=completion.text[:500], **where)
            continue
        if completion.finish_reasons and completion.finish_reasons[0] == "length":
            attempt.fail("truncated_evolution", op=attempt.op, round=rnd, text=text[:500], **where)
            continue
        leak = find_leak(text, config.leak_words)
        if leak:
            attempt.fail("template_leak", op=attempt.op, round=rnd, word=leak, text=text[:500], **where)
            continue
        if _normalise(text) == _normalise(source):
            attempt.fail("copied_parent", op=attempt.op, round=rnd, **where)
            continue
        rewrites.setdefault(attempt.index, []).append(text)
    for attempt in attempts:
        if attempt.failure is not None:
            continue
        texts = rewrites[attempt.index]
        attempt.new_turns = texts if attempt.turns else []
        parent_meta = attempt.parent.meta
        attempt.child = Record(
            id=stable_id("evol", attempt.parent.id, attempt.op, str(rnd), *texts),
            instruction=texts[0],
            meta=RecordMeta(
                source="evol_instruct",
                parent_id=attempt.parent.id,
                evol_op=attempt.op,
                round=rnd,
                model=llm.name,
                root_id=parent_meta.root_id or attempt.parent.id,
                evol_depth=parent_meta.evol_depth + 1,
            ),
        )


def _check_and_answer(
    attempts: list[_Attempt], llm: Any, ctx: Any, config: EvolConfig, bar: Any, stats: dict[str, Any]
) -> None:
    """Phase 2: equality check and answer of every surviving rewrite, all in one batch."""
    live = [a for a in attempts if a.child is not None]
    jobs: list[tuple[_Attempt, str]] = []
    requests: list[ChatRequest] = []
    for attempt in live:
        assert attempt.child is not None
        pairs = (list(zip(attempt.turns, attempt.new_turns, strict=True)) if attempt.turns
                 else [(attempt.parent.prompt_text(), attempt.child.instruction)])
        for j, (parent_text, child_text) in enumerate(pairs if config.equality_check else []):
            prompt = render(
                "evol_equality_check",
                prompts_dir=ctx.prompts_dir,
                parent=parent_text,
                child=child_text,
            )
            requests.append(ChatRequest.chat(prompt, temperature=0.0, max_tokens=config.equality_max_tokens))
            jobs.append((attempt, "equality" if j == 0 else f"equality:{j}"))
        if config.answer:
            requests.append(
                ChatRequest.chat(
                    _opening(attempt) if attempt.turns else attempt.child.instruction,
                    temperature=config.answer_temperature,
                    max_tokens=config.answer_max_tokens,
                    seed=attempt.seed,
                )
            )
            jobs.append((attempt, "answer"))
    if not requests:
        return
    stats["requests"] += len(requests)
    bar.total += len(requests)
    bar.refresh()
    completions = generate_sync(llm, requests, lambda i, c: bar.update(1))
    replies: dict[int, dict[str, Completion]] = {}
    for (attempt, kind), completion in zip(jobs, completions, strict=True):
        replies.setdefault(attempt.index, {})[kind] = completion
    for attempt in live:
        got = replies[attempt.index]
        child = attempt.child
        assert child is not None
        common = {"op": attempt.op, "round": child.meta.round}
        errors = {kind: c for kind, c in got.items() if c.error}
        answer = got.get("answer")
        checks = [(kind, c) for kind, c in got.items() if kind.startswith("equality")]
        verdicts = [parse_yes_no(c.text) if not c.error else None for _, c in checks]
        no_gain = next((k for k, v in enumerate(verdicts) if v is False), None)
        if answer is not None and not answer.error:
            # Kept on the record either way: on a drop it shows what the rule saw.
            child.output = answer.text
        if errors:
            kind, failed_call = next(iter(errors.items()))
            attempt.fail(failure_reason(failed_call) or "llm_error", step=kind, error=failed_call.error, **common)
        elif no_gain is not None:
            where = {"turn": no_gain + 1} if attempt.turns else {}
            attempt.fail("no_information_gain", reply=checks[no_gain][1].text[:200], **common, **where)
        elif answer is not None and is_refusal(answer.text, config.refusal_phrases, config.refusal_max_words):
            attempt.fail("refusal_response", response=answer.text[:500], **common)
        elif answer is not None and is_degenerate(answer.text):
            attempt.fail("degenerate_response", response=answer.text[:500], **common)
        else:
            if None in verdicts:
                stats["equality_unparsed"] += 1  # lenient: an unreadable check does not veto
            if answer is not None:
                finish = answer.finish_reasons[0] if answer.finish_reasons else "stop"
                child.meta.answer_finish_reason = finish
                stats["answers_truncated"] += finish == "length"
            continue
        attempt.rejected, attempt.child = child, None


def _opening(attempt: _Attempt) -> list[dict[str, str]]:
    """A dialogue's first rewritten user turn, after the parent's system message if it had one."""
    system = [m.model_dump() for m in (attempt.parent.messages or [])[:1] if m.role == "system"]
    return [*system, {"role": "user", "content": attempt.new_turns[0]}]


def _answer_later_turns(attempts: list[_Attempt], llm: Any, ctx: Any, config: EvolConfig, stats: dict[str, Any]) -> None:
    """Phase 3 (`turns: each`): answer each rewritten later user turn in order, one batch per turn,
    each seeing the rewritten dialogue before it; the refusal and degenerate rules judge every answer."""
    live = [(a, Dialogue(a.child, None)) for a in attempts if a.child is not None and a.turns]
    for attempt, dialogue in live:
        dialogue.messages = [*_opening(attempt), {"role": "assistant", "content": attempt.child.output}]
    for j in range(1, max((len(a.new_turns) for a, _ in live), default=0)):
        todo = [(a, d) for a, d in live if d.failure is None and j < len(a.new_turns)]
        for attempt, dialogue in todo:
            dialogue.messages.append({"role": "user", "content": attempt.new_turns[j]})
        stats["requests"] += len(todo)
        answer_round([d for _, d in todo], llm, ctx, temperature=config.answer_temperature, top_p=1.0,
                     max_tokens=config.answer_max_tokens, key="evol", step=j)
        for _, dialogue in todo:
            if dialogue.failure is not None:
                continue
            text = dialogue.messages[-1]["content"]
            if is_refusal(text, config.refusal_phrases, config.refusal_max_words):
                dialogue.fail("refusal_response", turn=j + 1, response=text[:500])
            elif is_degenerate(text):
                dialogue.fail("degenerate_response", turn=j + 1, response=text[:500])
    for attempt, dialogue in live:
        child = attempt.child
        child.messages = [Message(**m) for m in dialogue.messages]  # on a drop: what the rule saw
        if dialogue.failure is not None:
            reason, detail = dialogue.failure
            attempt.fail(reason, op=attempt.op, round=child.meta.round, **detail)
            attempt.rejected, attempt.child = child, None


def _failed_record(attempt: _Attempt, rnd: int, model: str) -> Record:
    """What goes to `dropped`: the rejected rewrite (or an empty shell) with its lineage."""
    if attempt.rejected is not None:
        return attempt.rejected
    detail = attempt.failure[1] if attempt.failure else {}
    text = str(detail.get("text", ""))
    return Record(
        id=stable_id("evol_failed", attempt.parent.id, attempt.op, str(rnd)),
        instruction=text,
        meta=RecordMeta(
            source="evol_instruct", parent_id=attempt.parent.id, evol_op=attempt.op, round=rnd, model=model
        ),
    )


# ---------------------------------------------------------------------------------------- CLI


def parse_ops(spec: str) -> dict[str, float]:
    """`"deepen=1,breadth=2"` -> weights; a bare name means weight 1. Unlisted ops are off."""
    ops: dict[str, float] = {}
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, weight = part.partition("=")
        name = name.strip().replace("-", "_")
        try:
            ops[name] = float(weight) if sep else 1.0
        except ValueError:
            raise ValueError(
                f"--ops: bad weight {weight!r} for {name!r} (expected e.g. deepen=1,breadth=2)"
            ) from None
    if not ops:
        raise ValueError("--ops is empty")
    return ops


def plan(flow: Records, config: EvolConfig, default_llm: str, prompts_dir: str | None) -> StagePlan:
    """Upper bound: every record rewritten each round (plus its equality check and answer); under
    `turns: each` every user turn, each answer seeing the dialogue before it."""
    calls = Calls(config.llm or default_llm)
    turns = flow.turns if config.turns == "each" else 1
    ops = [op for op, weight in config.ops.items() if weight > 0] or ["deepen"]
    rewrite_template = max(template_tokens(f"evol_{op}", prompts_dir) for op in ops)
    instruction = flow.instruction_tokens
    for _ in range(config.rounds):  # each round rewrites the last round's (longer) rewrites
        calls.add(flow.count * turns, rewrite_template + instruction, config.max_tokens)
        if config.equality_check:
            calls.add(flow.count * turns,
                      template_tokens("evol_equality_check", prompts_dir) + instruction + config.max_tokens,
                      config.equality_max_tokens)
        if config.answer:
            calls.add(flow.count * turns, turns * (config.max_tokens + 8) + (turns - 1) * config.answer_max_tokens,
                      config.answer_max_tokens)
        instruction = max(instruction, config.max_tokens)
    out_count = flow.count * max(1, config.rounds) if config.keep_all_rounds else flow.count
    out = Records(out_count, instruction, max(flow.output_tokens, config.answer_max_tokens * turns if config.answer else 0),
                  turns=flow.turns)
    return finish(StagePlan("", flow.count, out_count, [calls], iterative=True), out)


STAGE = register(Stage(
    name="evol_instruct",
    config=EvolConfig,
    run=run,
    plan=plan,
    position=20,
    help="Evol-Instruct: rewrite instructions into harder / rarer ones over several rounds",
    command=Command(
        verb="evolve",
        description=(
            "Evolve every instruction of a file for M rounds (in-depth: " + ", ".join(IN_DEPTH_OPS)
            + "; in-breadth: breadth).\nFailed rewrites are dropped with their reason and the parent tries again "
            "next round.\nWorks on any instruction file (records, Alpaca, ShareGPT, messages).\n"
            'Op weights: --ops "deepen=1,breadth=2" (unlisted ops are not used).'
        ),
        flag_aliases={"keep_originals": ["--originals"]},
        value_parsers={"ops": parse_ops},
    ),
    uses=frozenset({"root_id", "evol_depth", "round"}),
    writes=frozenset({"source", "parent_id", "root_id", "evol_op", "evol_depth", "round", "answer_finish_reason",
                      "model"}),
))
