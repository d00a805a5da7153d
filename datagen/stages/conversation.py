"""Conversations: extend single-turn records to k turns, a user model and an assistant taking turns.

Each record's dialogue so far (its `messages`, or its instruction and answer) goes to a
*user model* that writes the next user message, in the voice of a persona when personas are
on (`prompts/conversation_user.txt`); the *assistant model* answers it with the whole dialogue
as context. Rounds are batched: every dialogue still going gets its next user turn in one
generate call, then every new user turn is answered in one more, until each dialogue has
`turns` user turns or stops early:

* the user model replies with `stop_marker` (it has nothing more to ask): `user_ended`;
* the dialogue grew past `max_dialogue_chars`: `length_cap`.

A user turn cut off at `user_max_tokens` keeps its finished sentences (the question is
usually whole; counted in stats `user_turns_trimmed`). A turn that fails (request error, empty
reply, an answer cut off at `max_tokens`, a user turn with no finished sentence or one that
repeats an earlier one) either drops the whole dialogue (`on_failed_turn: drop`, the reason counted as
`user_turn_failed`, `assistant_turn_failed`, `assistant_turn_cut_off`, `user_turn_cut_off`,
`user_turn_repeated`) or truncates it to its last complete exchange (`truncate`: kept when it
still has `min_turns` exchanges, the reason counted in stats `truncated`). Dialogues that end
with fewer than `min_turns` exchanges are dropped as `too_few_turns`.

`messages` is the record's truth afterwards; `instruction` / `input` / `output` stay the first
turn's view. The persona used is written to `meta.persona` (a record that already has one, from
`self_instruct`, keeps it) and why the dialogue ended to `meta.conversation_stop`.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from datagen.errors import failure_reason
from datagen.llm import ChatRequest, generate_sync
from datagen.personas import load_personas, pick_persona
from datagen.plan import Calls, Records, StagePlan, finish, merge_same_spec, template_tokens
from datagen.prompts import render
from datagen.records import Message, Record, StageResult, dropped
from datagen.registry import Command, Stage, register


class ConversationConfig(BaseModel):
    """Multi-turn extension settings."""

    model_config = ConfigDict(extra="forbid")

    turns: int = Field(3, ge=1, description="user turns per finished dialogue (k)")
    min_turns: int = Field(1, ge=1, description="drop a dialogue that ends with fewer exchanges (too_few_turns)")
    personas: str | None = Field(
        "bundled", description="who the user is: 'bundled' (our persona set), a .txt/.jsonl file, or none"
    )
    stop_marker: str = Field("[END]", min_length=1, description="the user model ends the chat by replying with this")
    max_dialogue_chars: int = Field(
        16000, ge=1, description="stop extending a dialogue once its text is this long (length_cap)"
    )
    on_failed_turn: Literal["drop", "truncate"] = Field(
        "truncate", description="a failed turn drops the dialogue or cuts it back to its last complete exchange"
    )
    user_temperature: float = Field(0.9, ge=0, description="user model sampling temperature")
    user_max_tokens: int = Field(256, ge=1, description="token limit of a user turn")
    temperature: float = Field(0.7, ge=0, description="assistant sampling temperature")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling for both models")
    max_tokens: int = Field(1024, ge=1, description="token limit of an assistant turn")
    system_prompt: str | None = Field(None, description="system message for the assistant only (not stored)")
    user_llm: str | None = Field(None, description="backend spec of the user model (default: the assistant's)")
    llm: str | None = Field(None, description="backend spec of the assistant (default: the pipeline's)")


class Dialogue:
    """One record being extended: its turns so far and why it stopped, if it has."""

    def __init__(self, record: Record, persona: str | None, system: str | None = None) -> None:
        self.record = record
        self.persona = persona
        self.system = system  # a system message for the assistant's requests only (never stored)
        self.messages: list[dict[str, str]] = start_messages(record)
        self.stop: str | None = None
        self.trimmed = 0  # user turns cut at the token limit and kept up to their last sentence
        self.failure: tuple[str, dict[str, Any]] | None = None

    def user_turns(self) -> int:
        return sum(m["role"] == "user" for m in self.messages)

    def chars(self) -> int:
        return sum(len(m["content"]) for m in self.messages)

    def fail(self, reason: str, **detail: Any) -> None:
        self.failure = (reason, detail)
        self.stop = "failed"


def start_messages(record: Record) -> list[dict[str, str]]:
    """The dialogue a record brings: its messages, or its instruction and (if any) answer."""
    if record.messages:
        return [m.model_dump() for m in record.messages]
    msgs = [{"role": "user", "content": record.prompt_text()}]
    if record.output.strip():
        msgs.append({"role": "assistant", "content": record.output})
    return msgs


_SENTENCE_END = re.compile(r"[?.!？。！](?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """A user turn cut off at the token limit, up to its last finished sentence ("" if none):
    the question is usually whole and only what a small model rambles on with is lost."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else ""


def clean_user_turn(text: str) -> str:
    """What a user model wrote, without the label or quotes small models like to add, and
    without an assistant reply it went on to write itself."""
    text = re.split(r"\n\s*(?:\*\*)?(?:Assistant|AI)\s*:", text.strip(), maxsplit=1)[0].strip()
    for label in ("User:", "user:", "USER:", "**User:**"):
        if text.startswith(label):
            text = text[len(label):].strip()
    if len(text) > 1 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    return text


def complete_exchanges(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The dialogue up to its last assistant answer (what `truncate` keeps)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    return messages[: last + 1]


def run(records: list[Record], ctx: Any, config: ConversationConfig) -> StageResult:
    assistant = ctx.llm(config.llm)
    user_model = ctx.llm(config.user_llm or config.llm)
    personas = load_personas(config.personas)
    stats: dict[str, Any] = {"input_records": len(records), "turns": config.turns, "personas": len(personas)}
    out_dropped: list[Record] = []
    dialogues: list[Dialogue] = []
    for record in records:
        persona = record.meta.persona or pick_persona(personas, ctx.seed, record.id)
        dialogue = Dialogue(record, persona, config.system_prompt)
        if not any(m["role"] == "user" and m["content"].strip() for m in dialogue.messages):
            out_dropped.append(dropped(record, "empty_instruction"))
            continue
        dialogues.append(dialogue)

    user_calls = assistant_calls = 0
    for step in range(2 * config.turns + 1):  # never more rounds than turns: a guard, not a rule
        answer_now = [d for d in dialogues if d.stop is None and d.messages[-1]["role"] == "user"]
        if answer_now:
            assistant_calls += len(answer_now)
            answer_round(answer_now, assistant, ctx, temperature=config.temperature, top_p=config.top_p,
                         max_tokens=config.max_tokens, key="conversation", step=step)
        for d in dialogues:
            if d.stop is None and d.user_turns() >= config.turns:
                d.stop = "turns"
            elif d.stop is None and d.chars() >= config.max_dialogue_chars:
                d.stop = "length_cap"
        ask_now = [d for d in dialogues if d.stop is None]
        if not ask_now:
            break
        user_calls += len(ask_now)
        _user_round(ask_now, user_model, ctx, config, step)

    kept, settled_drops, stops, truncated = settle_dialogues(dialogues, config.on_failed_turn, config.min_turns)
    out_dropped.extend(settled_drops)
    stats.update(user_requests=user_calls, assistant_requests=assistant_calls, stops=stops, truncated=truncated,
                 user_turns_trimmed=sum(d.trimmed for d in dialogues))
    stats["turns_per_dialogue"] = turns_per_dialogue(kept)
    return StageResult(kept=kept, dropped=out_dropped, stats=stats)


def answer_round(todo: list[Dialogue], llm: Any, ctx: Any, *, temperature: float, top_p: float, max_tokens: int,
                 key: str, step: int) -> None:
    """One generate call: every dialogue whose last turn is the user's gets its answer (a failed or
    cut-off answer fails the dialogue). `key` names the stage in seeds and the progress bar: the
    `magpie` stage answers its later turns here too."""
    requests = []
    for d in todo:
        messages = list(d.messages)
        if d.system and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": d.system})
        requests.append(ChatRequest.chat(
            messages, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
            seed=ctx.rng(f"{key}:assistant:{d.record.id}:{d.user_turns()}").randrange(2**31),
        ))
    with ctx.bar(len(requests), f"{key}: assistant turns (round {step + 1})", unit="turn") as bar:
        completions = generate_sync(llm, requests, lambda i, c: bar.update(1))
    for d, completion in zip(todo, completions, strict=True):
        turn = d.user_turns()
        kind = failure_reason(completion)
        if kind is not None:
            d.fail("assistant_turn_failed", turn=turn, error=completion.error or kind)
        elif (completion.finish_reasons or ["stop"])[0] == "length":
            d.fail("assistant_turn_cut_off", turn=turn, max_tokens=max_tokens)
        else:
            d.messages.append({"role": "assistant", "content": completion.text.strip()})
            if turn == 1:
                d.record = d.record.model_copy(update={"output": completion.text.strip()})
                d.record.meta = d.record.meta.model_copy(update={"answer_finish_reason": "stop"})


def _user_round(todo: list[Dialogue], llm: Any, ctx: Any, config: ConversationConfig, step: int) -> None:
    """One generate call: every dialogue still going gets its next user turn (or ends)."""
    requests = []
    for d in todo:
        prompt = render("conversation_user", ctx.prompts_dir, persona=d.persona, stop_marker=config.stop_marker,
                        turns=[m for m in d.messages if m["role"] != "system"])
        requests.append(ChatRequest.chat(
            [{"role": "user", "content": prompt}], temperature=config.user_temperature, top_p=config.top_p,
            max_tokens=config.user_max_tokens,
            seed=ctx.rng(f"conversation:user:{d.record.id}:{d.user_turns()}").randrange(2**31),
        ))
    with ctx.bar(len(requests), f"conversation: user turns (round {step + 1})", unit="turn") as bar:
        completions = generate_sync(llm, requests, lambda i, c: bar.update(1))
    for d, completion in zip(todo, completions, strict=True):
        turn = d.user_turns() + 1
        kind = failure_reason(completion)
        text = clean_user_turn(completion.text)
        cut_off = completion.finish_reasons[:1] == ["length"]
        if cut_off and config.stop_marker not in text:
            text = trim_to_sentence(text)  # "" when not even one sentence was finished
            d.trimmed += bool(text)
        asked = {m["content"].strip().lower() for m in d.messages if m["role"] == "user"}
        if kind is not None:
            d.fail("user_turn_failed", turn=turn, error=completion.error or kind)
        elif config.stop_marker in text:
            d.stop = "user_ended"
        elif not text:
            d.fail("user_turn_cut_off", turn=turn, max_tokens=config.user_max_tokens)
        elif text.lower() in asked:
            d.fail("user_turn_repeated", turn=turn, text=text[:200])
        else:
            d.messages.append({"role": "user", "content": text})


def settle_dialogues(dialogues: list[Dialogue], on_failed_turn: str, min_turns: int
                     ) -> tuple[list[Record], list[Record], dict[str, int], dict[str, int]]:
    """Finished dialogues as records: kept, dropped, why each kept one stopped, and what was
    truncated. A failed turn drops the dialogue (`drop`) or cuts it back to its last complete
    exchange (`truncate`); fewer than `min_turns` exchanges is `too_few_turns`."""
    kept: list[Record] = []
    out_dropped: list[Record] = []
    stops: dict[str, int] = {}
    truncated: dict[str, int] = {}
    for d in dialogues:
        messages = d.messages
        stop = d.stop or "turns"
        if d.failure is not None:
            reason, detail = d.failure
            if on_failed_turn == "drop":
                out_dropped.append(_finished(d, messages, f"failed:{reason}", drop=(reason, detail)))
                continue
            messages = complete_exchanges(messages)
            truncated[reason] = truncated.get(reason, 0) + 1
            stop = f"truncated:{reason}"
        exchanges = sum(m["role"] == "assistant" for m in messages)
        if exchanges < min_turns or not messages:
            out_dropped.append(_finished(d, d.messages, stop, drop=("too_few_turns", {"turns": exchanges})))
            continue
        stops[stop.split(":")[0]] = stops.get(stop.split(":")[0], 0) + 1
        kept.append(_finished(d, messages, stop))
    return kept, out_dropped, stops, truncated


def turns_per_dialogue(records: list[Record]) -> dict[str, int]:
    lengths = [sum(m.role == "user" for m in r.messages or []) for r in records]
    return {str(k): lengths.count(k) for k in sorted(set(lengths))}


def _finished(d: Dialogue, messages: list[dict[str, str]], stop: str,
              drop: tuple[str, dict[str, Any]] | None = None) -> Record:
    out = d.record.model_copy(deep=True)
    out.messages = [Message(**m) for m in messages] if messages else None
    out.meta.persona = d.persona
    out.meta.conversation_stop = stop
    if drop is not None:
        return dropped(out, drop[0], **drop[1])
    return out


# ---------------------------------------------------------------------------------------- CLI


def plan(flow: Records, config: ConversationConfig, default_llm: str, prompts_dir: str | None) -> StagePlan:
    """Upper bound: k assistant answers and k-1 user turns per record, each seeing the whole dialogue."""
    assistant = Calls(config.llm or default_llm)
    user = Calls(config.user_llm or config.llm or default_llm)
    turn_tokens = config.max_tokens + config.user_max_tokens
    full = flow.instruction_tokens + flow.output_tokens + config.turns * turn_tokens
    assistant.add(flow.count * config.turns, full, config.max_tokens)
    user.add(flow.count * max(config.turns - 1, 0), full + template_tokens("conversation_user", prompts_dir) + 64,
             config.user_max_tokens)
    out = Records(flow.count, flow.instruction_tokens, config.turns * turn_tokens, turns=max(config.turns, flow.turns))
    return finish(StagePlan("", flow.count, flow.count, merge_same_spec([assistant, user])), out)


STAGE = register(Stage(
    name="conversation",
    config=ConversationConfig,
    run=run,
    plan=plan,
    position=35,
    help="extend records to k-turn dialogues: a user model (with personas) asks, the assistant answers",
    command=Command(
        verb="conversation",
        description=(
            "Multi-turn dialogues: --user-llm writes each next user turn from the dialogue so far (in a persona's\n"
            "voice, --personas bundled|FILE|none), --llm answers it, until --turns user turns or the user model\n"
            "ends the chat. Works on any instruction file (records, Alpaca, ShareGPT, messages)."
        ),
    ),
    uses=frozenset({"persona"}),
    prompts=frozenset({"conversation_user"}),
    writes=frozenset({"persona", "conversation_stop", "answer_finish_reason"}),
))
