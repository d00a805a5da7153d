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

from datagen.errors import failure_reason
from datagen.personas import load_personas, personas_enabled, pick_persona
from datagen.plan import Calls, Records, StagePlan, finish, template_tokens
from datagen.records import Record, RecordMeta, StageResult, dropped, stable_id
from datagen.registry import Command, Stage, register
from datagen.stages.self_instruct_config import SelfInstructConfig
from datagen.stages.self_instruct_filters import (
    blacklist_pattern,
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
    from datagen.context import StageContext

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
        self.personas = load_personas(config.personas)
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

    def prompt(self, persona: str | None = None) -> str:
        """A few-shot prompt: up to num_machine machine tasks, seeds for the rest, shuffled; with
        a persona, one more paragraph asks for tasks in that person's voice (without one the
        prompt is byte for byte what it always was, so cached replies still match)."""
        from datagen.prompts import render

        config = self.config
        n_machine = min(config.num_machine, len(self.machine))
        shown = [t.instruction for t in self.prompt_rng.sample(self.machine, n_machine)]
        n_human = min(config.num_prompt_tasks - n_machine, len(self.seeds))
        shown += [t.instruction for t in self.prompt_rng.sample(self.seeds, n_human)]
        self.prompt_rng.shuffle(shown)
        text = render("self_instruct_generate", self.ctx.prompts_dir, tasks=shown, num_new=config.new_per_request)
        if persona is None:
            return text
        return text + "\n\n" + render("self_instruct_persona", self.ctx.prompts_dir, persona=persona)

    def generate(self, n_requests: int, quota: int) -> list[Candidate]:
        """One round of task-list requests; returns the candidates that pass every filter, in
        request order, at most `quota` of them (the rest are dropped as surplus)."""
        from datagen.llm import ChatRequest, generate_sync

        config = self.config
        personas = [pick_persona(self.personas, self.ctx.seed, f"self_instruct:{self.request_no + k}")
                    for k in range(n_requests)]
        requests = [
            ChatRequest.chat(
                self.prompt(persona),
                temperature=config.temperature,
                top_p=config.top_p,
                max_tokens=config.max_tokens,
                seed=self.round_seed(),
            )
            for persona in personas
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
                cand = Candidate(text, self.round_no, req, j, persona=personas[k])
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


# ------------------------------------------------------------------ dry run and registration


def plan(flow: Records, config: SelfInstructConfig, default_llm: str, prompts_dir: str | None) -> StagePlan:
    """Upper bound: every generation request up to the cap, each candidate classified and given instances."""
    calls = Calls(config.llm or default_llm)
    seed_task = flow.instruction_tokens + flow.output_tokens
    generation = config.request_cap()
    calls.add(generation, template_tokens("self_instruct_generate", prompts_dir) + config.num_prompt_tasks * seed_task,
              config.max_tokens)
    candidates = generation * config.new_per_request
    task_tokens = math.ceil(config.max_words * 2)  # a kept task has at most max_words words
    calls.add(candidates, template_tokens("self_instruct_classify", prompts_dir) + config.classify_examples * seed_task
              + task_tokens, config.classify_max_tokens)
    instance_template = max(template_tokens("self_instruct_instances_cls", prompts_dir),
                            template_tokens("self_instruct_instances_io", prompts_dir))
    calls.add(candidates, instance_template + config.instance_examples * seed_task + task_tokens,
              config.instance_max_tokens)
    out_count = config.num_instructions + (flow.count if config.include_seeds else 0)
    out = Records(out_count, max(task_tokens + config.instance_max_tokens, flow.instruction_tokens),
                  max(config.instance_max_tokens, flow.output_tokens))
    return finish(StagePlan("", flow.count, out_count, [calls], iterative=True), out)


def _seed_records(args: argparse.Namespace) -> list[Record]:
    from datagen.io import default_seeds_path, read_records

    return read_records(args.input or default_seeds_path())


STAGE = register(Stage(
    name="self_instruct",
    config=SelfInstructConfig,
    run=run,
    plan=plan,
    position=10,
    help="grow seed tasks into new instruction data (Self-Instruct)",
    command=Command(
        verb="self-instruct",
        description=(
            "Generate new tasks from seed tasks with the Self-Instruct algorithm: few-shot task generation,\n"
            "filters, ROUGE-L novelty (> 0.7 dropped), classification identification and instance generation.\n"
            "Writes one record per (task, instance). --input (or --seeds) defaults to the bundled 175 seeds."
        ),
        input_aliases=["--seeds"],
        input_required=False,
        flag_aliases={"num_instructions": ["--num"]},
        records_from_args=_seed_records,
    ),
    uses=frozenset({"instances", "is_classification"}),
    writes=frozenset({"source", "round", "model", "task_id", "instance_index", "is_classification",
                      "classification_guessed", "request", "name", "instances", "persona"}),
    prompts=frozenset({"self_instruct_persona"}),
    prompts_used=lambda config: frozenset({"self_instruct_persona"}) if personas_enabled(config.personas) else frozenset(),
))
