"""Magpie: an aligned model writes the user queries itself, then answers them.

Give a chat model its own template up to the point where a user's text would start and
nothing else, and it continues with a plausible user query (Xu et al. 2024, "Magpie"). No
seeds, no few-shot prompt: the cheapest source of instructions we have, cheap enough for the
embedded 135M model. Each query is then answered by one chat request in this same stage.

The pre-query prompt is derived from the model's own chat template, never from a table of
model families: render a conversation whose user message is a sentinel and cut just before
it (the text after the sentinel, stripped, is the end-of-turn marker: the stop sequence).
A system prompt is rendered the same way through a second sentinel. An `openai:` endpoint does
not show its template: give `pre_query` (the literal text, `{system}` where a system prompt
goes) or `template_from` (a tokenizer folder / HF id with the same template, or `embedded`).

Filters, each a counted drop reason: `empty_query`, `incomplete_query` (hit the token limit
before the end of the turn), `too_short_query`, `too_long_query`, `repetitive_query`,
`wrong_language` (by script and function words, `datagen.languages`: Chinese, Japanese and
Korean are told apart), `duplicate_query`; answers: the usual request failure reasons.

`personas` (off by default) conditions each query on a persona, as PersonaHub does with Magpie:
the persona goes into the pre-query's system prompt (`prompts/magpie_persona.txt`, after the
drawn system prompt if any), so the model writes the query that person would send. It shapes
the query only: the answer sees the drawn system prompt as before, and the persona is recorded
in `meta.persona`.

`n_turns` > 1 makes dialogues the way Magpie's multi-turn sets were made: after the first query
and answer, the whole dialogue so far is rendered through the same template up to where the
next user message starts, the model writes that message, and the assistant answers it with
the dialogue as context. The records take the shape the `conversation` stage writes (its
helpers do the answering and settling): `messages` is the truth, instruction/output the first
turn's view, `meta.conversation_stop` why it ended. A later query that fails Magpie's filters
fails its turn (`user_turn_failed`, `user_turn_cut_off`, `user_turn_filtered`,
`user_turn_repeated`), as does an answer that fails or is cut off; `on_failed_turn` then drops
the dialogue or cuts it back to its last complete exchange.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from datagen.errors import failure_reason
from datagen.languages import language_mix, language_of
from datagen.llm import ChatRequest, PromptRequest, generate_sync, parse_spec
from datagen.personas import load_personas, personas_enabled, pick_persona
from datagen.plan import Calls, Records, StagePlan, finish, merge_same_spec, template_tokens, text_tokens
from datagen.prompts import render
from datagen.records import Record, RecordMeta, StageResult, dropped, stable_id
from datagen.registry import Command, Stage, register
from datagen.stages.conversation import Dialogue, answer_round, settle_dialogues, turns_per_dialogue
from datagen.stages.quality_checks import repeated_ngram_ratio
from datagen.text_units import length_in_words

USER_SENTINEL = "\u2063MAGPIE-USER\u2063"
SYSTEM_SENTINEL = "\u2063MAGPIE-SYSTEM\u2063"


class MagpieConfig(BaseModel):
    """Magpie settings: how many queries, under which system prompts, sampled how, kept when."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(100, ge=1, description="queries to sample (records out <= this)")
    system_prompts: dict[str, float] = Field(
        default_factory=dict,
        description="system prompt -> weight: each query is written under one, drawn by weight (topic control); "
        "empty: the template's own default",
    )
    temperature: float = Field(1.0, ge=0, description="query sampling temperature (Magpie uses ~1)")
    top_p: float = Field(1.0, gt=0, le=1, description="query nucleus sampling")
    query_max_tokens: int = Field(96, ge=1, description="token limit of a query (hitting it = incomplete_query)")
    answer: bool = Field(True, description="answer each kept query (one chat request each)")
    answer_temperature: float = Field(0.7, ge=0, description="answer sampling temperature")
    answer_max_tokens: int = Field(512, ge=1, description="token limit of an answer")
    answer_with_system: bool = Field(True, description="the answer sees the system prompt the query was written under")
    answer_system_prompt: str | None = Field(
        None, description="a system prompt for the answers alone (e.g. a length guide), in place of the query's; "
        "it steers the answering model only and is not written into the records")
    stop: list[str] = Field(default_factory=list, description="extra stop sequences for queries "
                            "(the template's end-of-turn marker is always one)")
    min_words: int = Field(3, ge=0, description="drop a query with fewer words (a CJK character counts 1/1.5)")
    max_words: int = Field(200, ge=1, description="drop a query with more words")
    max_repeated_ratio: float = Field(0.3, ge=0, le=1, description="drop a query whose repeated 3-gram share is higher")
    languages: list[str] = Field(
        default_factory=lambda: ["en"],
        description="keep queries in these languages (ISO 639-1: en, zh, ja, ko, fr, ...; 'und' = too short to "
        "tell, always kept); empty: any",
    )
    pre_query: str | None = Field(
        None, description="the pre-query prompt itself, `{system}` where the system prompt goes (for endpoints "
        "whose chat template we cannot read)",
    )
    template_from: str | None = Field(
        None, description="tokenizer folder or HF id whose chat template to use, or `embedded` (default: the "
        "backend's own model; required for openai: unless pre_query is given)",
    )
    keep_input: bool = Field(False, description="pass the input records through ahead of the new ones")
    # Added after 0.2.0: left out of the config dump while at their defaults, so the stage hash
    # (and the resume of earlier run directories) stays what it was.
    personas: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="write each query as a persona would: 'bundled' (our set) or a .txt/.jsonl file, carried "
        "in the pre-query's system prompt; off by default (prompts and cache keys unchanged)",
    )
    n_turns: int = Field(1, ge=1, exclude_if=lambda v: v == 1,
                         description="user turns per record: after each answer the model writes the next user "
                         "turn from the dialogue so far through the same template (Magpie multi-turn)")
    turn_format: str | None = Field(
        None, exclude_if=lambda v: v is None,
        description="with pre_query and n_turns > 1: how one finished exchange is written, {user} and {assistant} "
        "for the texts, ending where the next user's text starts",
    )
    on_failed_turn: Literal["drop", "truncate"] = Field(
        "truncate", exclude_if=lambda v: v == "truncate",
        description="n_turns > 1: a failed later turn drops the dialogue or cuts it back to its last complete exchange",
    )
    llm: str | None = Field(None, description="backend spec for this stage (default: the pipeline's)")

    @model_validator(mode="after")
    def _weights(self) -> MagpieConfig:
        if any(w < 0 for w in self.system_prompts.values()) or (self.system_prompts and not
                                                                 sum(self.system_prompts.values())):
            raise ValueError("system_prompts weights must be >= 0 and not all 0")
        if self.n_turns > 1 and not self.answer:
            raise ValueError("n_turns > 1 needs answer: true (each next user turn follows an answer)")
        if self.n_turns > 1 and self.pre_query is not None and self.turn_format is None:
            raise ValueError("n_turns > 1 with pre_query needs turn_format: how one exchange is written, e.g. "
                             "'{user}<|im_end|>\\n<|im_start|>assistant\\n{assistant}<|im_end|>\\n<|im_start|>user\\n'")
        if self.turn_format is not None and not {"{user}", "{assistant}"} <= set(_PLACEHOLDER.findall(self.turn_format)):
            raise ValueError("turn_format must hold both {user} and {assistant}")
        return self


_PLACEHOLDER = re.compile(r"\{user\}|\{assistant\}")


class PreQuery:
    """The text up to where a user's message starts, with and without a system prompt; after a
    dialogue, through the tokenizer's template (`tokenizer`) or the literal `turn_format`."""

    def __init__(self, with_system: str | None, without_system: str, stops: tuple[str, ...],
                 tokenizer: Any = None, turn_format: str | None = None):
        self.with_system, self.without_system, self.stops = with_system, without_system, stops
        self.tokenizer, self.turn_format = tokenizer, turn_format

    def prompt(self, system: str | None, dialogue: Sequence[dict[str, str]] = ()) -> str:
        if system is not None and self.with_system is None:
            raise ValueError("magpie: this chat template has no system role: leave system_prompts empty and "
                             "personas off")
        if dialogue and self.tokenizer is not None:
            head = [{"role": "system", "content": system}] if system is not None else []
            return _cut_before_user(self.tokenizer, [*head, *dialogue])
        start = self.without_system if system is None else self.with_system.replace(SYSTEM_SENTINEL, system)
        if not dialogue:
            return start
        if self.turn_format is None:
            raise ValueError("magpie: n_turns > 1 needs a chat template or turn_format")
        pairs = zip(dialogue[0::2], dialogue[1::2], strict=True)  # (user, assistant) exchanges
        return start + "".join(_exchange(self.turn_format, user["content"], answer["content"]) for user, answer in pairs)


def _exchange(turn_format: str, user: str, assistant: str) -> str:
    """One exchange in `turn_format`; the texts are put in once, never scanned for placeholders."""
    return _PLACEHOLDER.sub(lambda m: user if m.group() == "{user}" else assistant, turn_format)


def _cut_before_user(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """`messages` plus a sentinel user turn, rendered by the chat template and cut just before it."""
    text = tokenizer.apply_chat_template([*messages, {"role": "user", "content": USER_SENTINEL}], tokenize=False,
                                         add_generation_prompt=False)
    if USER_SENTINEL not in text:
        raise ValueError("magpie: the chat template drops the user's text: give pre_query")
    return text.split(USER_SENTINEL, 1)[0]


def pre_query_from_template(tokenizer: Any) -> PreQuery:
    """Cut the rendered [system?, user=sentinel] conversation just before the sentinel."""
    def render(messages: list[dict[str, str]]) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        if USER_SENTINEL not in text:
            raise ValueError("magpie: the chat template drops the user's text: give pre_query")
        return text

    plain = render([{"role": "user", "content": USER_SENTINEL}])
    try:
        with_system = render([{"role": "system", "content": SYSTEM_SENTINEL}, {"role": "user", "content": USER_SENTINEL}])
        with_system = with_system if SYSTEM_SENTINEL in with_system else None
    except Exception:  # noqa: BLE001 - templates that reject a system turn raise their own errors
        with_system = None
    end_of_turn = plain.split(USER_SENTINEL, 1)[1].strip()
    stops = tuple(s for s in (end_of_turn, getattr(tokenizer, "eos_token", None)) if s)
    return PreQuery(with_system.split(USER_SENTINEL, 1)[0] if with_system else None,
                    plain.split(USER_SENTINEL, 1)[0], tuple(dict.fromkeys(stops)), tokenizer=tokenizer)


def resolve_pre_query(spec: str, config: MagpieConfig) -> PreQuery:
    """From `pre_query`, else from the chat template of `template_from` or of the backend's model."""
    if config.pre_query is not None:
        text = config.pre_query.replace("{system}", SYSTEM_SENTINEL)
        return PreQuery(text if SYSTEM_SENTINEL in text else None, config.pre_query.replace("{system}", ""),
                        tuple(config.stop), turn_format=config.turn_format)
    backend, model = parse_spec(spec)
    source = config.template_from
    if source is None and backend == "openai":
        raise ValueError(
            f"magpie: {spec}: an OpenAI-compatible endpoint does not show its chat template: set pre_query "
            "(the prompt up to where the user's text starts, {system} for the system prompt) or template_from "
            "(a tokenizer folder or HF id with the same template, or `embedded`)")
    if source is None or source == "embedded":
        source = model if source is None and model else "embedded"
    from transformers import AutoTokenizer

    from datagen.embedded import embedded_model_dir

    try:
        tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir() if source == "embedded" else source)
    except (OSError, ValueError) as exc:
        raise ValueError(f"magpie: template_from {source}: cannot load its tokenizer ({str(exc).split(chr(10), 1)[0][:160]}); "
                         "give pre_query instead") from None
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"magpie: {source} has no chat template: give pre_query")
    found = pre_query_from_template(tokenizer)
    return PreQuery(found.with_system, found.without_system, tuple(dict.fromkeys([*found.stops, *config.stop])),
                    tokenizer=tokenizer)


def run(records: list[Record], ctx: Any, config: MagpieConfig) -> StageResult:
    """Sample `count` queries from the pre-query prompt, filter them, answer the survivors."""
    spec = config.llm or ctx.llm_spec
    pre = resolve_pre_query(spec, config)
    llm = ctx.llm(config.llm)
    rng = ctx.rng("magpie:system_prompts")
    systems = list(config.system_prompts)
    weights = list(config.system_prompts.values())
    chosen = [rng.choices(systems, weights)[0] if systems else None for _ in range(config.count)]
    personas = load_personas(config.personas)
    chosen_personas = [pick_persona(personas, ctx.seed, f"magpie:{k}") for k in range(config.count)]
    query_systems = [query_system(system, persona, ctx.prompts_dir)
                     for system, persona in zip(chosen, chosen_personas, strict=True)]
    requests = [
        PromptRequest.raw(pre.prompt(system), temperature=config.temperature, top_p=config.top_p,
                          max_tokens=config.query_max_tokens, stop=pre.stops, seed=_seed(ctx.seed, k))
        for k, system in enumerate(query_systems)
    ]
    bar = ctx.bar(len(requests), "magpie: queries", unit="query")
    try:
        replies = generate_sync(llm, requests, lambda i, c: bar.update(1))
    finally:
        bar.close()
    kept: list[Record] = []
    drops: list[Record] = []
    seen: set[str] = set()
    written_under: dict[str, str | None] = {}  # record id -> the system text its query was written under
    for k, (system, reply) in enumerate(zip(chosen, replies, strict=True)):
        query = reply.text.strip()
        record = Record(id=stable_id("magpie", str(ctx.seed), str(k), query, prefix="mp"), instruction=query,
                        meta=RecordMeta(source="magpie", system_prompt=system, model=llm.name,
                                        persona=chosen_personas[k]))
        written_under[record.id] = query_systems[k]
        failed = failure_reason(reply)
        reason = ("empty_query" if failed == "empty_reply" else failed) or query_problem(
            query, reply.finish_reasons[0] if reply.finish_reasons else "", config)
        if reason is None and " ".join(query.casefold().split()) in seen:
            reason = "duplicate_query"
        if reason is not None:
            drops.append(dropped(record, reason, error=reply.error) if reply.error else dropped(record, reason))
            continue
        seen.add(" ".join(query.casefold().split()))
        kept.append(record)
    stats: dict[str, Any] = {"queries_requested": len(requests), "queries_kept": len(kept),
                             "query_tokens": sum(r.completion_tokens for r in replies if not r.cached)}
    if personas:
        stats["personas"] = len(personas)
    if config.answer:
        kept, answer_drops = answer_queries(kept, llm, ctx, config)
        drops.extend(answer_drops)
    if config.n_turns > 1:
        kept, turn_drops, turn_stats = continue_dialogues(kept, written_under, pre, llm, ctx, config)
        drops.extend(turn_drops)
        stats.update(turn_stats)
    stats["language_mix"] = language_mix([r.instruction for r in kept])
    return StageResult(kept=(list(records) if config.keep_input else []) + kept, dropped=drops, stats=stats)


def query_system(system: str | None, persona: str | None, prompts_dir: str | None) -> str | None:
    """The system text a query is written under: the drawn system prompt, and with a persona the
    `magpie_persona` sentence naming who the user is (kept short: on the embedded model a longer
    paragraph left more queries unfinished)."""
    if persona is None:
        return system
    return render("magpie_persona", prompts_dir, system=system or "", persona=persona)


def query_problem(query: str, finish_reason: str, config: MagpieConfig) -> str | None:
    """Magpie's query filters, in order; the first that applies is the drop reason."""
    if not query:
        return "empty_query"
    if finish_reason == "length":
        return "incomplete_query"
    words = length_in_words(query)
    if words < config.min_words:
        return "too_short_query"
    if words > config.max_words:
        return "too_long_query"
    if repeated_ngram_ratio(query, 3) > config.max_repeated_ratio:
        return "repetitive_query"
    language = language_of(query)
    if config.languages and language != "und" and language not in config.languages:
        return "wrong_language"
    return None


def answer_queries(queries: list[Record], llm: Any, ctx: Any, config: MagpieConfig) -> tuple[list[Record], list[Record]]:
    """One chat request per query, under `answer_system_prompt`, else the query's system prompt when
    `answer_with_system`."""
    requests = []
    for k, record in enumerate(queries):
        system = _answer_system(record, config)
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": record.instruction}]
        requests.append(ChatRequest.chat(messages, temperature=config.answer_temperature,
                                         max_tokens=config.answer_max_tokens, seed=_seed(ctx.seed, k, salt=7)))
    bar = ctx.bar(len(requests), "magpie: answers", unit="answer")
    try:
        replies = generate_sync(llm, requests, lambda i, c: bar.update(1))
    finally:
        bar.close()
    kept, drops = [], []
    for record, reply in zip(queries, replies, strict=True):
        out = record.model_copy(deep=True)
        failed = failure_reason(reply)
        if failed:
            drops.append(dropped(out, failed, error=reply.error or "empty reply", step="answer"))
            continue
        out.output = reply.text.strip()
        out.meta.answer_finish_reason = reply.finish_reasons[0] if reply.finish_reasons else None
        kept.append(out)
    return kept, drops


def continue_dialogues(records: list[Record], written_under: dict[str, str | None], pre: PreQuery, llm: Any,
                       ctx: Any, config: MagpieConfig) -> tuple[list[Record], list[Record], dict[str, Any]]:
    """Turns 2..n_turns: the dialogue so far through the pre-query template gives the next user
    message (Magpie's filters apply), then the conversation stage's answer round answers it."""
    dialogues = [Dialogue(r, r.meta.persona, _answer_system(r, config)) for r in records]
    queries = 0
    for turn in range(2, config.n_turns + 1):
        todo = [d for d in dialogues if d.stop is None]
        if not todo:
            break
        queries += len(todo)
        requests = [
            PromptRequest.raw(pre.prompt(written_under[d.record.id], d.messages), temperature=config.temperature,
                              top_p=config.top_p, max_tokens=config.query_max_tokens, stop=pre.stops,
                              seed=ctx.rng(f"magpie:query:{d.record.id}:{turn}").randrange(2**31))
            for d in todo
        ]
        with ctx.bar(len(requests), f"magpie: user turn {turn}", unit="query") as bar:
            replies = generate_sync(llm, requests, lambda i, c: bar.update(1))
        for d, reply in zip(todo, replies, strict=True):
            next_user_turn(d, reply, turn, config)
        answer_now = [d for d in todo if d.stop is None]
        if answer_now:
            answer_round(answer_now, llm, ctx, temperature=config.answer_temperature, top_p=1.0,
                         max_tokens=config.answer_max_tokens, key="magpie", step=turn - 1)
    kept, drops, stops, truncated = settle_dialogues(dialogues, config.on_failed_turn, 1)
    stats = {"later_queries": queries, "stops": stops, "truncated": truncated,
             "turns_per_dialogue": turns_per_dialogue(kept)}
    return kept, drops, stats


def next_user_turn(d: Dialogue, reply: Any, turn: int, config: MagpieConfig) -> None:
    """Take a later query into the dialogue, or fail the turn with the reason Magpie's filters give."""
    query = reply.text.strip()
    failed = failure_reason(reply)
    finish_reason = reply.finish_reasons[0] if reply.finish_reasons else ""
    problem = query_problem(query, finish_reason, config) if not failed else None
    if failed or problem == "empty_query":
        d.fail("user_turn_failed", turn=turn, error=reply.error or failed or "empty query")
    elif problem == "incomplete_query":
        d.fail("user_turn_cut_off", turn=turn, max_tokens=config.query_max_tokens)
    elif problem is not None:
        d.fail("user_turn_filtered", turn=turn, filter=problem, text=query[:200])
    elif " ".join(query.casefold().split()) in {" ".join(m["content"].casefold().split())
                                                 for m in d.messages if m["role"] == "user"}:
        d.fail("user_turn_repeated", turn=turn, text=query[:200])
    else:
        d.messages.append({"role": "user", "content": query})


def _answer_system(record: Record, config: MagpieConfig) -> str | None:
    return config.answer_system_prompt or (record.meta.system_prompt if config.answer_with_system else None)


def _seed(run_seed: int, k: int, salt: int = 0) -> int:
    """A distinct, reproducible sampling seed per query (and per answer), within 31 bits."""
    return (run_seed * 1_000_003 + k * 31 + salt) % (2**31)


# ------------------------------------------------------------------ dry run and registration


def plan(flow: Records, config: MagpieConfig, default_llm: str, prompts_dir: str | None) -> StagePlan:
    """Upper bound: `count` raw-prompt queries, and an answer for every one of them."""
    calls = Calls(config.llm or default_llm)
    system = max((text_tokens(s) for s in config.system_prompts), default=24)
    pre = system + (text_tokens(config.pre_query) if config.pre_query else 16)
    if personas_enabled(config.personas):
        system += template_tokens("magpie_persona", prompts_dir) + 48  # the paragraph and a persona line
        pre += template_tokens("magpie_persona", prompts_dir) + 48
    calls.add(config.count, pre, config.query_max_tokens)
    if config.answer:
        calls.add(config.count, system + config.query_max_tokens + 8, config.answer_max_tokens)
    exchange = config.query_max_tokens + config.answer_max_tokens + 16
    for turn in range(2, config.n_turns + 1):  # each later turn sees the whole dialogue before it
        calls.add(config.count, pre + (turn - 1) * exchange, config.query_max_tokens)
        calls.add(config.count, system + (turn - 1) * exchange + config.query_max_tokens + 8, config.answer_max_tokens)
    count = config.count + (flow.count if config.keep_input else 0)
    out = Records(count, max(config.query_max_tokens, flow.instruction_tokens if config.keep_input else 0),
                  max(config.answer_max_tokens * config.n_turns if config.answer else 0,
                      flow.output_tokens if config.keep_input else 0),
                  turns=max(config.n_turns, flow.turns if config.keep_input else 1))
    return finish(StagePlan("", flow.count, count, merge_same_spec([calls])), out)


def _input_records(args: argparse.Namespace) -> list[Record]:
    from datagen.io import read_records

    return read_records(args.input) if args.input else []


STAGE = register(Stage(
    name="magpie",
    config=MagpieConfig,
    run=run,
    plan=plan,
    position=12,
    help="the model writes user queries from its own chat template (Magpie), then answers them",
    command=Command(
        verb="magpie",
        description=(
            "Magpie: sample --count user queries by giving the model its chat template up to the start of a user\n"
            "turn, filter them (empty, incomplete, too short/long, repetitive, wrong language, duplicate) and\n"
            "answer each one. No seeds needed. openai: endpoints need /v1/completions and --pre-query or\n"
            "--template-from (their chat template cannot be read)."
        ),
        input_required=False,
        records_from_args=_input_records,
    ),
    writes=frozenset({"source", "system_prompt", "model", "answer_finish_reason", "persona", "conversation_stop"}),
    prompts=frozenset({"magpie_persona"}),
    prompts_used=lambda config: frozenset({"magpie_persona"}) if personas_enabled(config.personas) else frozenset(),
))
