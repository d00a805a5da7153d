"""Self-Instruct: grow a few human-written seed tasks into many machine-written ones.

The algorithm of Wang et al. (2022), as Stanford Alpaca also runs it, in rounds:

1. Prompt with 8 example tasks (6 human seeds + 2 earlier machine tasks once there are some)
   and ask for more, as a numbered list. `request_batch_size` such prompts go out together.
2. Parse each reply leniently (models number items every which way); when a reply was cut off
   (finish_reason "length") its last item is dropped, since it is probably incomplete.
3. Filter: 3 < words <= 150, no blacklisted keyword (tasks a text model cannot do), not
   "Write a program...", no leading punctuation, and novelty: ROUGE-L F1 <= 0.7 against every
   instruction in the pool (seeds + everything accepted so far, including earlier items of the
   same round), computed exactly as rouge_score does but fast (`datagen.novelty`).
4. Ask whether each new task is a classification task (yes/no prompt).
5. Generate up to 5 instances: output-first for classification tasks (pick a label, then
   write an input for it, which avoids inputs that all share one label), input-first otherwise.

Replies are applied strictly in request order, and every random choice comes from
`ctx.rng(...)`, so the same seed and inputs give the same dataset (and a cached rerun makes no
calls). The run stops once `num_instructions` new tasks are kept, or at the `max_requests`
safety cap (reported in stats).

Beyond the paper, for robustness with weak models: exact duplicates are dropped even when
ROUGE sees no tokens (Chinese text), an instances reply with no fields at all counts as one
direct answer for a non-classification task (`accept_unlabelled_reply`), an unparseable yes/no
falls back to a keyword heuristic (counted), and after the first round a round sends only about
as many prompts as the remaining quota needs (`adaptive_batch`).
"""

from __future__ import annotations

import argparse
import math
import re
import string
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from datagen.errors import failure_reason
from datagen.records import Record, RecordMeta, StageResult, dropped, stable_id

if TYPE_CHECKING:
    from datagen.stages.context import StageContext

DEFAULT_BLACKLIST = [
    "image", "graph", "picture", "file", "map", "draw", "plot", "go to",
    "video", "audio", "music", "flowchart", "diagram",
]  # fmt: skip


class SelfInstructConfig(BaseModel):
    """Settings of the Self-Instruct stage (defaults follow the paper where it gives one)."""

    model_config = ConfigDict(extra="forbid")

    num_instructions: int = Field(
        100, ge=1, description="stop once this many new tasks are kept (each with instances)"
    )
    num_prompt_tasks: int = Field(8, ge=1, description="example tasks shown in each generation prompt")
    num_human: int = Field(6, ge=0, description="of which human seed tasks")
    num_machine: int = Field(
        2,
        ge=0,
        description="of which earlier machine tasks (seeds fill in while the machine pool is smaller)",
    )
    new_per_request: int = Field(8, ge=1, description="new tasks asked for in each generation prompt")
    request_batch_size: int = Field(8, ge=1, description="generation prompts sent together per round")
    adaptive_batch: bool = Field(
        True,
        description="after the first round, send only about as many prompts as the remaining quota needs "
        "at the yield seen so far (up to request_batch_size)",
    )
    temperature: float = Field(0.8, ge=0, description="sampling temperature for generating tasks")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling for generating tasks")
    max_tokens: int = Field(768, ge=16, description="token budget of one task-list reply")
    instance_temperature: float = Field(0.7, ge=0, description="sampling temperature for instances")
    instance_max_tokens: int = Field(768, ge=16, description="token budget of one instances reply")
    classify_max_tokens: int = Field(16, ge=1, description="token budget of the yes/no classification reply")
    classify_examples: int = Field(
        8, ge=0, description="seed tasks shown as labelled examples in the yes/no prompt"
    )
    instance_examples: int = Field(
        2, ge=0, description="seed tasks (with instances) shown in each instance prompt"
    )
    novelty_threshold: float = Field(
        0.7, ge=0, le=1, description="drop a task whose ROUGE-L F1 with any pool task is > this"
    )
    novelty_cjk_tokens: bool = Field(
        False,
        description="also count each CJK character as a ROUGE token (rouge_score ignores non-ASCII text, "
        "so by default Chinese tasks never count as near-duplicates; exact duplicates are always dropped)",
    )
    min_words: int = Field(
        3, ge=0, description="drop tasks with <= this many words (a CJK run counts ceil(chars/2))"
    )
    max_words: int = Field(150, ge=1, description="drop tasks with more than this many words")
    blacklist: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BLACKLIST),
        description="drop tasks containing one of these words (whole word, any case, plural s/es too)",
    )
    drop_write_a_program: bool = Field(True, description='drop tasks starting with "Write a program"')
    require_ascii_start: bool = Field(
        False,
        description="drop tasks whose first character is not ASCII (off: it would drop all Chinese tasks)",
    )
    max_instances: int = Field(5, ge=1, description="instances kept per task")
    accept_unlabelled_reply: bool = Field(
        True,
        description="for a non-classification task, take an instances reply with no Input/Output fields at "
        "all (a direct answer) as one instance with empty input; small models rarely follow the layout",
    )
    include_seeds: bool = Field(False, description="also emit the seed records among the kept ones")
    max_requests: int | None = Field(
        None,
        ge=1,
        description="cap on generation requests (None: 10 + 2 * num_instructions); stops a low-yield run",
    )
    llm: str | None = Field(None, description="backend spec for this stage (None: the run's default)")

    @model_validator(mode="after")
    def _check_mix(self) -> SelfInstructConfig:
        if self.num_human + self.num_machine != self.num_prompt_tasks:
            raise ValueError(
                f"num_human ({self.num_human}) + num_machine ({self.num_machine}) must equal "
                f"num_prompt_tasks ({self.num_prompt_tasks})"
            )
        if self.min_words >= self.max_words:
            raise ValueError("min_words must be smaller than max_words")
        return self

    def request_cap(self) -> int:
        return self.max_requests or 10 + 2 * self.num_instructions


# ------------------------------------------------------------------ parsing task lists

_NUMBERED = re.compile(
    r"""^\s*(?:[*_]{1,2}\s*)?(?:
          (?:task|instruction|prompt|question|item|new\s+task)\s*\#?\s*(?P<n1>\d{1,3})
          \s*(?:[.):\uff1a\uff0e-]|(?=\s))
        | \#\s*(?P<n2>\d{1,3})\s*[.):\uff1a-]?
        | (?P<n3>\d{1,3})\s*(?:\.(?!\d)|[)\uff1a\uff0e\u3001]|:(?!\d)|\s-\s)
        | \((?P<n4>\d{1,3})\)
        )\s*(?:[*_]{1,2})?""",
    re.X | re.I,
)
_BULLET = re.compile(r"^\s*[-*\u2022\u00b7+]\s+")
# A label repeated inside the item: "9. Instruction: Write ..." / "Task: ..." / "**Task 3:**"
_INNER_LABEL = re.compile(
    r"^\s*(?:[*_]{1,2})?\s*(?:new\s+)?(?:task|instruction|prompt)\s*\#?\s*\d{0,3}\s*(?:[*_]{1,2})?"
    r"\s*[:\uff1a]\s*(?:[*_]{1,2})?\s*",
    re.I,
)
# Lines that end the instruction text of an item (a model adding an example or an answer).
_FIELD_LINE = re.compile(
    r"^\s*(?:[*_]{1,2})?\s*"
    r"(?:input|output|answer|response|solution|example(?:\s+(?:input|output))?|class\s*label)"
    r"\s*(?:[*_]{1,2})?\s*[:\uff1a]",
    re.I,
)
_CHATTER = re.compile(
    r"^\s*(?:sure|certainly|of course|absolutely|okay|ok|great|here\s+(?:are|is)|i\s+hope|let me know|"
    r"these\s+tasks|note\b|feel free)",
    re.I,
)
_QUOTE_PAIRS = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`", "\u300c": "\u300d"}


def _clean_item(lines: list[str]) -> str:
    text = "\n".join(line.strip() for line in lines).strip()
    text = _INNER_LABEL.sub("", text, count=1)
    text = text.replace("**", "").replace("__", "")
    text = re.sub(r"[ \t]+", " ", text).strip()
    if len(text) >= 2 and _QUOTE_PAIRS.get(text[0]) == text[-1] and text.count(text[0]) <= 2:
        text = text[1:-1].strip()
    return text


def has_list_markers(text: str) -> bool:
    """Whether any line of `text` starts like a numbered or bulleted list item."""
    return any(_NUMBERED.match(line) or _BULLET.match(line) for line in text.splitlines())


def parse_task_list(text: str) -> list[str]:
    """Items of a (numbered) list reply, lenient about how the model formats it.

    Handles "1.", "1)", "(1)", "#1", "Task 1:", "**Task 1:**", "9. Instruction: ...", bullets
    (only when nothing is numbered), items spanning several lines, a preamble and closing
    chatter. An item ends at a blank line, the next item, or an "Input:"/"Output:" line.
    With no list markers at all, each line that is not chatter is taken as one item (if there
    are at least two such lines).
    """
    lines = text.splitlines()
    numbered = any(_NUMBERED.match(line) for line in lines)
    items: list[list[str]] = []
    current: list[str] | None = None
    closed = False  # current item stopped accepting continuation lines

    def flush() -> None:
        nonlocal current
        if current is not None and any(part.strip() for part in current):
            items.append(current)
        current = None

    for line in lines:
        match = _NUMBERED.match(line) if numbered else _BULLET.match(line)
        if match:
            flush()
            current, closed = [line[match.end() :]], False
            continue
        if not line.strip():
            if current is not None and any(part.strip() for part in current):
                closed = True
            continue
        if current is None or closed:
            continue
        if _FIELD_LINE.match(line) or _CHATTER.match(line):
            closed = True
            continue
        current.append(line)
    flush()
    if not items and not numbered:
        # No list markers: one task per line, but a lone paragraph is commentary, not a list.
        plain = [
            line
            for line in lines
            if line.strip() and not line.rstrip().endswith(":") and not _CHATTER.match(line)
        ]
        items = [[line] for line in plain] if len(plain) >= 2 else []
    return [cleaned for cleaned in (_clean_item(item) for item in items) if cleaned]


# ------------------------------------------------------------------ filters

_CJK_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af]+")


def count_words(text: str) -> int:
    """Words in `text`; a run of CJK characters counts ceil(len/2) (about two characters per word),
    so Chinese tasks meet the same 3 < words <= 150 window as English ones."""
    total = sum((len(run) + 1) // 2 for run in _CJK_RUN.findall(text))
    rest = _CJK_RUN.sub(" ", text)
    return total + sum(1 for word in rest.split() if any(ch.isalnum() for ch in word))


def blacklist_pattern(words: list[str]) -> re.Pattern[str] | None:
    if not words:
        return None
    alternatives = "|".join(re.escape(w.strip()).replace(r"\ ", r"\s+") for w in words if w.strip())
    return re.compile(rf"\b(?:{alternatives})(?:s|es)?\b", re.I) if alternatives else None


def filter_reason(
    instruction: str, config: SelfInstructConfig, blacklist: re.Pattern[str] | None = None
) -> tuple[str, dict[str, Any]] | None:
    """Why a candidate task is dropped before the novelty check, or None when it passes."""
    words = count_words(instruction)
    if words <= config.min_words:
        return "too_short", {"words": words}
    if words > config.max_words:
        return "too_long", {"words": words}
    if blacklist is None and config.blacklist:
        blacklist = blacklist_pattern(config.blacklist)
    if blacklist is not None:
        hit = blacklist.search(instruction)
        if hit:
            return "blacklisted_keyword", {"keyword": hit.group(0).lower()}
    if config.drop_write_a_program and instruction.lower().startswith("write a program"):
        return "write_a_program", {}
    if instruction[0] in string.punctuation:
        return "leading_punctuation", {"char": instruction[0]}
    if config.require_ascii_start and not instruction[0].isascii():
        return "non_ascii_start", {"char": instruction[0]}
    return None


_CLASSIFICATION_HINT = re.compile(
    r"\b(?:classif\w*|categori[sz]\w*|sentiment|label\w*|positive or negative|true or false|yes or no|"
    r"fact or opinion|(?:decide|determine|tell|identify|check|say) (?:whether|if)|"
    r"which (?:category|class|type)|"
    r"is (?:it|this|the \w+) (?:a|an)\b)",
    re.I,
)


def guess_is_classification(instruction: str) -> bool:
    """Keyword heuristic (seed style) for when the model's yes/no reply cannot be parsed, or a
    seed file lacks the flag: classification tasks name their labels or ask to decide between them."""
    return bool(_CLASSIFICATION_HINT.search(instruction))


# ------------------------------------------------------------------ parsing instances

_EXAMPLE_HEADER = re.compile(
    r"^\s*(?:[*_#]+\s*)?(?:example|instance|sample)\s*#?\s*\d*\s*(?:[*_]+\s*)?[:.)\uff1a-]?\s*"
    r"(?:[*_]+\s*)?(?P<rest>.*)$",
    re.I,
)
_INSTANCE_FIELD = re.compile(
    r"^\s*(?:[*_#>-]+\s*)?(?P<label>class\s*labels?|labels?|class|category|input|output|answer|response)"
    r"\s*\d{0,2}\s*(?:[*_]+\s*)?[:\uff1a]\s*(?:[*_]+)?\s*(?P<rest>.*)$",
    re.I,
)
_EMPTY_INPUTS = {
    "", "none", "(none)", "<none>", "n/a", "na", "(n/a)", "null", "-", "nothing", "empty", "(empty)",
    "no input", "(no input)", "<noinput>", "<no input>", "not applicable", "(not applicable)",
    "\u65e0", "\uff08\u65e0\uff09",
}  # fmt: skip


def _label_kind(label: str) -> str:
    """input / output / answer / response, or "class" for Class label, Label, Class, Category."""
    label = label.lower()
    if label in {"input", "output", "answer", "response"}:
        return label
    return "class"


@dataclass(frozen=True)
class Instance:
    input: str
    output: str


def has_instance_fields(text: str) -> bool:
    """Whether any line looks like an "Input:" / "Output:" / "Class label:" field."""
    return any(_INSTANCE_FIELD.match(line) for line in text.splitlines())


def _field_value(lines: list[str]) -> str:
    value = "\n".join(lines).strip()
    value = value.strip("*_ ").strip() if value.startswith(("*", "_")) else value
    return value


def parse_instances(text: str, output_first: bool = False, truncated: bool = False) -> list[Instance]:
    """(input, output) pairs from an instances reply, in reply order, deduplicated.

    Understands "Example N" headers (optional), "Input:" / "Output:" fields in either order,
    "Class label:" (or Label/Class/Category) as the output of a classification example,
    multi-line values (code, lists), markdown bold around labels, and "(none)"-style empty
    inputs. When the reply was cut off (`truncated`) the last example is dropped.
    """
    lines = text.splitlines()
    if output_first:
        output_labels = {"output", "answer", "class"}
    else:
        # "Answer:"/"Response:" stand in for "Output:" only when the reply has no "Output:"
        # line: inside a real output they are just text (e.g. "Answer: 42" after a derivation).
        has_output = any(
            (m := _INSTANCE_FIELD.match(x)) and m.group("label").lower() == "output" for x in lines
        )
        output_labels = {"output"} if has_output else {"output", "answer", "response"}
    examples: list[dict[str, list[str]]] = []
    current: dict[str, list[str]] = {}
    last_key: str | None = None

    def flush() -> None:
        nonlocal current, last_key
        if current:
            examples.append(current)
        current, last_key = {}, None

    for line in lines:
        header = _EXAMPLE_HEADER.match(line)
        if header and (not header.group("rest") or _INSTANCE_FIELD.match(header.group("rest"))):
            flush()
            line = header.group("rest")
            if not line:
                continue
        field_match = _INSTANCE_FIELD.match(line)
        label = _label_kind(field_match.group("label")) if field_match else None
        if field_match and (label == "input" or label in output_labels):
            key = "input" if label == "input" else "output"
            if key in current:  # the same field again: a new example started without a header
                flush()
            current[key] = [field_match.group("rest")]
            last_key = key
            continue
        if last_key is not None:
            current[last_key].append(line)
    flush()
    if truncated and examples:
        examples.pop()
    seen: set[tuple[str, str]] = set()
    result: list[Instance] = []
    for ex in examples:
        output = _field_value(ex.get("output", []))
        inp = _field_value(ex.get("input", []))
        if inp.strip().strip(".").lower() in _EMPTY_INPUTS:
            inp = ""
        if not output or output.strip().lower() in _EMPTY_INPUTS or output == inp:
            continue
        key = (inp, output)
        if key not in seen:
            seen.add(key)
            result.append(Instance(inp, output))
    return result


# ------------------------------------------------------------------ the stage


@dataclass
class _Task:
    instruction: str
    instances: list[Instance]
    is_classification: bool


@dataclass
class _Candidate:
    instruction: str
    round: int
    request: int
    item: int
    is_classification: bool = False
    classified: bool = False
    classification_guessed: bool = False
    instances: list[Instance] = field(default_factory=list)


def _seed_task(record: Record) -> _Task:
    extra = record.meta.model_extra or {}
    raw = extra.get("instances")
    instances = []
    if isinstance(raw, list):
        for item in raw:
            if isinstance(item, dict) and str(item.get("output", "")).strip():
                instances.append(Instance(str(item.get("input") or ""), str(item["output"])))
    if not instances and record.output.strip():
        instances = [Instance(record.input, record.output)]
    is_cls = record.meta.is_classification
    if is_cls is None:
        is_cls = guess_is_classification(record.instruction)
    return _Task(record.instruction.strip(), instances, bool(is_cls))


def _pick_examples(tasks: list[_Task], k: int, rng: Any, classification: bool | None) -> list[_Task]:
    """k seed tasks with instances (short ones preferred, to keep prompts small), fixed per run."""
    pool = [
        t for t in tasks if t.instances and (classification is None or t.is_classification == classification)
    ]
    short = [t for t in pool if max(len(i.input) + len(i.output) for i in t.instances) <= 600] or pool
    return rng.sample(short, min(k, len(short)))


def run(records: list[Record], ctx: StageContext, config: SelfInstructConfig) -> StageResult:
    """Generate `config.num_instructions` new tasks from the seed `records` (see module docstring)."""
    return _Run(records, ctx, config).execute()


class _Run:
    """State of one Self-Instruct run: the pools, the novelty index, counters, kept and dropped."""

    def __init__(self, records: list[Record], ctx: StageContext, config: SelfInstructConfig) -> None:
        from datagen.novelty import NoveltyIndex, tokenize, tokenize_cjk

        self.records, self.ctx, self.config = records, ctx, config
        self.seeds = [_seed_task(r) for r in records if r.instruction.strip()]
        if not self.seeds:
            raise ValueError("self_instruct needs at least one seed task with an instruction")
        self.llm = ctx.llm(config.llm)
        self.novelty = NoveltyIndex(
            (t.instruction for t in self.seeds),
            threshold=config.novelty_threshold,
            tokenizer=tokenize_cjk if config.novelty_cjk_tokens else tokenize,
        )
        self.exact_seen = {_normalize(t.instruction) for t in self.seeds}
        self.blacklist = blacklist_pattern(config.blacklist)
        self.prompt_rng = ctx.rng("self_instruct:prompts")
        example_rng = ctx.rng("self_instruct:examples")
        self.cls_examples = _classify_examples(self.seeds, config.classify_examples, example_rng)
        self.inst_examples = {
            is_cls: [
                _as_prompt_task(t)
                for t in _pick_examples(self.seeds, config.instance_examples, example_rng, is_cls)
            ]
            for is_cls in (True, False)
        }
        self.machine: list[_Task] = []
        self.kept: list[Record] = []
        self.drops: list[Record] = []
        self.drop_counts: dict[str, int] = {}
        self.stats: dict[str, Any] = dict.fromkeys(
            ["rounds", "generation_requests", "classify_requests", "instance_requests", "candidates",
             "evaluated", "passed_filters", "classification_unparsed", "unnumbered_replies",
             "unlabelled_replies_used"], 0,
        )  # fmt: skip
        self.round_no = 0
        self.request_no = 0
        self.bar: Any = None

    # -------------------------------------------------------------- bookkeeping

    def drop(
        self, text: str, reason: str, cand: _Candidate | None = None, request: int = -1, **detail: Any
    ) -> None:
        where = (cand.round, cand.request, cand.item) if cand else (self.round_no, request, -1)
        rec = Record(
            id=stable_id("self_instruct_drop", text, *map(str, where), prefix="sid"),
            instruction=text,
            meta=RecordMeta(
                source="self_instruct",
                round=where[0],
                model=self.llm.name,
                is_classification=cand.is_classification if cand and cand.classified else None,
                request=where[1],
            ),
        )
        self.drops.append(dropped(rec, reason, **detail))
        self.drop_counts[reason] = self.drop_counts.get(reason, 0) + 1

    def show(self) -> None:
        top = ",".join(f"{k}:{v}" for k, v in sorted(self.drop_counts.items(), key=lambda kv: -kv[1])[:4])
        self.bar.set_postfix_str(
            f"generated={self.stats['candidates']} dropped={len(self.drops)} {top}", refresh=False
        )

    def requests_needed(self, remaining: int, n_kept: int) -> int:
        """Requests for the next round: a full batch at first, then (if `adaptive_batch`) only
        about what the remaining quota needs at the yield seen so far (items per reply x share
        passing the filters x share getting instances), with 50% headroom. A weak model's
        late rounds would otherwise generate dozens of items only to drop them as surplus."""
        batch = self.config.request_batch_size
        s = self.stats
        if not self.config.adaptive_batch or not s["generation_requests"] or not s["passed_filters"]:
            return batch
        per_request = (
            s["candidates"] / s["generation_requests"] * s["passed_filters"] / max(s["evaluated"], 1)
        )
        per_request *= max(n_kept / s["passed_filters"], 0.1)
        return max(1, min(batch, math.ceil(1.5 * remaining / max(per_request, 1e-6))))

    def round_seed(self) -> int:
        # One seed per round, shared by the round's requests: the local backend only batches
        # requests with equal settings, and the prompts already differ.
        return (self.ctx.seed * 1_000_003 + self.round_no) % (2**31)

    # -------------------------------------------------------------- the loop

    def execute(self) -> StageResult:
        config = self.config
        cap = config.request_cap()
        n_kept = 0
        self.bar = self.ctx.bar(total=config.num_instructions, desc="self-instruct", unit="task")
        try:
            while n_kept < config.num_instructions and self.request_no < cap:
                self.round_no += 1
                self.stats["rounds"] = self.round_no
                remaining = config.num_instructions - n_kept
                n_requests = min(self.requests_needed(remaining, n_kept), cap - self.request_no)
                accepted = self.generate(n_requests, remaining)
                self.show()
                if accepted:
                    self.classify(accepted)
                    for cand in self.make_instances(accepted):
                        n_kept += 1
                        self.machine.append(_Task(cand.instruction, cand.instances, cand.is_classification))
                        self.kept.extend(_records(cand, self.llm.name))
                        self.bar.update(1)
                    self.show()
        finally:
            self.bar.close()

        stop = "num_instructions_reached" if n_kept >= config.num_instructions else "max_requests_reached"
        if stop == "max_requests_reached":
            print(
                f"self-instruct: stopped at the request cap ({cap} generation requests) with {n_kept} of "
                f"{config.num_instructions} tasks; raise max_requests or use a stronger --llm",
                file=sys.stderr,
            )
        self.stats.update(
            stop_reason=stop,
            request_cap=cap,
            tasks_kept=n_kept,
            records_kept=len(self.kept),
            classification_tasks=sum(1 for t in self.machine if t.is_classification),
            novelty=self.novelty.stats.as_dict(),
        )
        kept = self.kept
        if config.include_seeds:
            kept = [r.model_copy(deep=True) for r in self.records] + kept
        return StageResult(kept=kept, dropped=self.drops, stats=self.stats)

    # -------------------------------------------------------------- steps 1-3

    def prompt(self) -> str:
        """A few-shot prompt: up to num_machine machine tasks, seeds for the rest, shuffled."""
        from datagen.prompts import render

        config = self.config
        n_machine = min(config.num_machine, len(self.machine))
        shown = [t.instruction for t in self.prompt_rng.sample(self.machine, n_machine)]
        n_human = min(config.num_prompt_tasks - n_machine, len(self.seeds))
        shown += [t.instruction for t in self.prompt_rng.sample(self.seeds, n_human)]
        self.prompt_rng.shuffle(shown)
        return render(
            "self_instruct_generate", self.ctx.prompts_dir, tasks=shown, num_new=config.new_per_request
        )

    def generate(self, n_requests: int, quota: int) -> list[_Candidate]:
        """One round of task-list requests; returns the candidates that pass every filter, in
        request order, at most `quota` of them (the rest are dropped as surplus)."""
        from datagen.llm import ChatRequest, generate_sync

        config = self.config
        requests = [
            ChatRequest.chat(
                self.prompt(),
                temperature=config.temperature,
                top_p=config.top_p,
                max_tokens=config.max_tokens,
                seed=self.round_seed(),
            )
            for _ in range(n_requests)
        ]
        replies = generate_sync(self.llm, requests)
        self.stats["generation_requests"] += len(requests)
        accepted: list[_Candidate] = []
        for k, reply in enumerate(replies):
            req = self.request_no + k
            failed = failure_reason(reply)
            if failed:
                self.drop("", failed, request=req, error=reply.error or "empty reply", step="generate")
                continue
            if not has_list_markers(reply.text):
                self.stats["unnumbered_replies"] += 1
            items = parse_task_list(reply.text)
            if not items:
                self.drop(reply.text[:1000], "unparseable", request=req)
                continue
            truncated = (reply.finish_reasons[0] if reply.finish_reasons else "") == "length"
            for j, text in enumerate(items):
                cand = _Candidate(text, self.round_no, req, j)
                self.stats["candidates"] += 1
                if truncated and j == len(items) - 1:
                    self.drop(text, "truncated", cand)
                elif len(accepted) >= quota:
                    self.drop(text, "surplus", cand)
                else:
                    self.stats["evaluated"] += 1
                    if self.accept(cand):
                        self.stats["passed_filters"] += 1
                        accepted.append(cand)
        self.request_no += len(requests)
        return accepted

    def accept(self, cand: _Candidate) -> bool:
        """Filters, then novelty against the pool; an accepted task joins the pool at once."""
        text = cand.instruction
        reason = filter_reason(text, self.config, self.blacklist)
        if reason:
            self.drop(text, reason[0], cand, **reason[1])
            return False
        norm = _normalize(text)
        if norm in self.exact_seen:
            self.drop(text, "not_novel", cand, similar_to=text, rouge_l=1.0, exact=True)
            return False
        match = self.novelty.most_similar(text, above=self.config.novelty_threshold)
        if match is not None:
            self.drop(text, "not_novel", cand, similar_to=match.text, rouge_l=round(match.score, 6))
            return False
        self.novelty.add(text)
        self.exact_seen.add(norm)
        return True

    # -------------------------------------------------------------- steps 4-5

    def classify(self, accepted: list[_Candidate]) -> None:
        from datagen.llm import ChatRequest, generate_sync
        from datagen.parsing import parse_yes_no
        from datagen.prompts import render

        requests = [
            ChatRequest.chat(
                render(
                    "self_instruct_classify",
                    self.ctx.prompts_dir,
                    examples=self.cls_examples,
                    instruction=c.instruction,
                ),
                temperature=0.0,
                max_tokens=self.config.classify_max_tokens,
            )
            for c in accepted
        ]
        self.stats["classify_requests"] += len(requests)
        for cand, reply in zip(accepted, generate_sync(self.llm, requests), strict=True):
            answer = parse_yes_no(reply.text) if reply.ok else None
            if answer is None:
                self.stats["classification_unparsed"] += 1
                answer = guess_is_classification(cand.instruction)
                cand.classification_guessed = True
            cand.is_classification, cand.classified = answer, True

    def make_instances(self, accepted: list[_Candidate]) -> list[_Candidate]:
        """Instances for each accepted task (output-first for classification); returns those
        that got at least one, in request order."""
        from datagen.llm import ChatRequest, generate_sync
        from datagen.prompts import render

        config = self.config
        requests = [
            ChatRequest.chat(
                render(
                    "self_instruct_instances_cls" if c.is_classification else "self_instruct_instances_io",
                    self.ctx.prompts_dir,
                    examples=self.inst_examples[c.is_classification],
                    instruction=c.instruction,
                    max_instances=config.max_instances,
                ),
                temperature=config.instance_temperature,
                max_tokens=config.instance_max_tokens,
                seed=self.round_seed(),
            )
            for c in accepted
        ]
        self.stats["instance_requests"] += len(requests)
        done: list[_Candidate] = []
        for cand, reply in zip(accepted, generate_sync(self.llm, requests), strict=True):
            failed = failure_reason(reply)
            if failed:
                self.drop(cand.instruction, failed, cand, error=reply.error or "empty reply", step="instances")
                continue
            truncated = (reply.finish_reasons[0] if reply.finish_reasons else "") == "length"
            instances = parse_instances(reply.text, cand.is_classification, truncated)[: config.max_instances]
            if (
                not instances
                and config.accept_unlabelled_reply
                and not cand.is_classification
                and not truncated
                and reply.text.strip()
                and not has_instance_fields(reply.text)
            ):
                instances = [Instance("", reply.text.strip())]
                self.stats["unlabelled_replies_used"] += 1
            if not instances:
                self.drop(cand.instruction, "no_instances", cand, reply=reply.text[:500], truncated=truncated)
                continue
            cand.instances = instances
            done.append(cand)
        return done


def _normalize(text: str) -> str:
    return " ".join(text.lower().split())


def _as_prompt_task(task: _Task) -> dict[str, Any]:
    return {
        "instruction": task.instruction,
        "is_classification": task.is_classification,
        "instances": [{"input": i.input, "output": i.output} for i in task.instances],
    }


def _classify_examples(seeds: list[_Task], k: int, rng: Any) -> list[dict[str, Any]]:
    """Balanced labelled examples (half yes, half no), interleaved so the order gives no hint."""
    yes = [t for t in seeds if t.is_classification]
    no = [t for t in seeds if not t.is_classification]
    n_yes = min(len(yes), math.ceil(k / 2))
    chosen = rng.sample(yes, n_yes) + rng.sample(no, min(len(no), k - n_yes))
    rng.shuffle(chosen)
    return [_as_prompt_task(t) for t in chosen]


def _records(cand: _Candidate, model: str) -> list[Record]:
    task_id = stable_id(cand.instruction, prefix="task")
    return [
        Record(
            id=stable_id(cand.instruction, inst.input, inst.output, prefix="si"),
            instruction=cand.instruction,
            input=inst.input,
            output=inst.output,
            meta=RecordMeta(
                source="self_instruct",
                round=cand.round,
                model=model,
                is_classification=cand.is_classification,
                task_id=task_id,
                instance_index=j,
                classification_guessed=cand.classification_guessed,
            ),
        )
        for j, inst in enumerate(cand.instances)
    ]


# ------------------------------------------------------------------ CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from datagen.cli_common import OUTPUT_FORMATS, add_llm_args

    parser = subparsers.add_parser(
        "self-instruct",
        help="grow seed tasks into new instruction data (Self-Instruct)",
        description="Generate new tasks from seed tasks with the Self-Instruct algorithm: few-shot task "
        "generation, filters, ROUGE-L novelty (> 0.7 dropped), classification identification and "
        "instance generation. Writes one record per (task, instance).",
    )
    parser.add_argument(
        "--seeds",
        default=None,
        help="seed tasks: Self-Instruct jsonl, Alpaca json(l) or our records (default: the bundled seeds)",
    )
    parser.add_argument("--num", type=int, default=100, help="new tasks to keep (default 100)")
    parser.add_argument("--out", required=True, help="output file (.jsonl, .json, .parquet or a folder)")
    parser.add_argument(
        "--format", choices=OUTPUT_FORMATS, default="records", help="output format (default records)"
    )
    parser.add_argument(
        "--dropped", default=None, help="also write dropped candidates with their reasons here"
    )
    parser.add_argument(
        "--request-batch-size", type=int, default=None, help="generation prompts per round (default 8)"
    )
    parser.add_argument(
        "--temperature", type=float, default=None, help="task generation temperature (default 0.8)"
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="token budget per task-list reply (default 768)"
    )
    parser.add_argument(
        "--instance-max-tokens", type=int, default=None, help="token budget per instances reply (default 768)"
    )
    parser.add_argument(
        "--max-requests", type=int, default=None, help="cap on generation requests (default 10 + 2*num)"
    )
    parser.add_argument("--include-seeds", action="store_true", help="also write the seed records")
    add_llm_args(parser)
    parser.set_defaults(func=_cli)


def _cli(args: argparse.Namespace) -> int:
    from datagen.cli_common import options_from_args, run_stage_cli
    from datagen.io import default_seeds_path, read_records

    overrides: dict[str, Any] = {"num_instructions": args.num, "include_seeds": args.include_seeds}
    overrides.update(
        options_from_args(
            args, ("request_batch_size", "temperature", "max_tokens", "instance_max_tokens", "max_requests")
        )
    )
    config = SelfInstructConfig(**overrides)
    seeds = read_records(args.seeds or default_seeds_path())
    return run_stage_cli(args, run, config, records=seeds)
