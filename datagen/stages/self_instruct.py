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
import sys
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from datagen.errors import failure_reason
from datagen.records import Record, RecordMeta, StageResult, dropped, stable_id
from datagen.stages.self_instruct_filters import (  # noqa: F401 - also importable from here
    blacklist_pattern,
    count_words,
    filter_reason,
    guess_is_classification,
)
from datagen.stages.self_instruct_replies import (
    Instance,
    has_instance_fields,
    has_list_markers,
    parse_instances,
    parse_task_list,
)
from datagen.stages.self_instruct_tasks import (
    Candidate,
    Task,
    as_prompt_task,
    classify_examples,
    normalize,
    pick_examples,
    seed_task,
    task_records,
)

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
        True,
        description="also count each CJK character as a ROUGE token (rouge_score ignores non-ASCII text, so "
        "without it Chinese tasks never count as near-duplicates); English tasks score exactly as rouge_score",
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


# ------------------------------------------------------------------ the stage


def run(records: list[Record], ctx: StageContext, config: SelfInstructConfig) -> StageResult:
    """Generate `config.num_instructions` new tasks from the seed `records` (see module docstring)."""
    return _Run(records, ctx, config).execute()


class _Run:
    """State of one Self-Instruct run: the pools, the novelty index, counters, kept and dropped."""

    def __init__(self, records: list[Record], ctx: StageContext, config: SelfInstructConfig) -> None:
        from datagen.novelty import NoveltyIndex, tokenize, tokenize_cjk

        self.records, self.ctx, self.config = records, ctx, config
        self.seeds = [seed_task(r) for r in records if r.instruction.strip()]
        if not self.seeds:
            raise ValueError("self_instruct needs at least one seed task with an instruction")
        self.llm = ctx.llm(config.llm)
        self.novelty = NoveltyIndex(
            (t.instruction for t in self.seeds),
            threshold=config.novelty_threshold,
            tokenizer=tokenize_cjk if config.novelty_cjk_tokens else tokenize,
        )
        self.exact_seen = {normalize(t.instruction) for t in self.seeds}
        self.blacklist = blacklist_pattern(config.blacklist)
        self.prompt_rng = ctx.rng("self_instruct:prompts")
        example_rng = ctx.rng("self_instruct:examples")
        self.cls_examples = classify_examples(self.seeds, config.classify_examples, example_rng)
        self.inst_examples = {
            is_cls: [
                as_prompt_task(t)
                for t in pick_examples(self.seeds, config.instance_examples, example_rng, is_cls)
            ]
            for is_cls in (True, False)
        }
        self.machine: list[Task] = []
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
        self, text: str, reason: str, cand: Candidate | None = None, request: int = -1, **detail: Any
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
        # One seed per round, shared by the round's requests (their prompts already differ).
        # Kept as it is: a new seeding rule would change every cache key and repay a resumed run.
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
                        self.machine.append(Task(cand.instruction, cand.instances, cand.is_classification))
                        self.kept.extend(task_records(cand, self.llm.name))
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

    def generate(self, n_requests: int, quota: int) -> list[Candidate]:
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
        accepted: list[Candidate] = []
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
                cand = Candidate(text, self.round_no, req, j)
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

    def accept(self, cand: Candidate) -> bool:
        """Filters, then novelty against the pool; an accepted task joins the pool at once."""
        text = cand.instruction
        reason = filter_reason(text, self.config, self.blacklist)
        if reason:
            self.drop(text, reason[0], cand, **reason[1])
            return False
        norm = normalize(text)
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

    def classify(self, accepted: list[Candidate]) -> None:
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

    def make_instances(self, accepted: list[Candidate]) -> list[Candidate]:
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
        done: list[Candidate] = []
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


# ------------------------------------------------------------------ CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from datagen.cli_config import add_stage_command

    add_stage_command(
        subparsers, "self-instruct", SelfInstructConfig, run,
        help="grow seed tasks into new instruction data (Self-Instruct)",
        description=(
            "Generate new tasks from seed tasks with the Self-Instruct algorithm: few-shot task generation,\n"
            "filters, ROUGE-L novelty (> 0.7 dropped), classification identification and instance generation.\n"
            "Writes one record per (task, instance). --input (or --seeds) defaults to the bundled 175 seeds."
        ),
        input_aliases=["--seeds"],
        input_required=False,
        aliases={"num_instructions": ["--num"]},
        records_from_args=_seed_records,
    )


def _seed_records(args: argparse.Namespace) -> list[Record]:
    from datagen.io import default_seeds_path, read_records

    return read_records(args.input or default_seeds_path())
