"""Quality filter: cheap heuristics, an LLM judge, and optionally an IFD score.

Order is cheapest first, so nothing pays for a judge call on a record a regex already
rejected: heuristics (empty / too short / too long answer, refusal, degenerate repetition,
truncation, answer that just copies the instruction), then IFD (local forward passes, off by
default), then the judge (Alpagasus-style 1-5 score with a reason; keep >= 4.5 by default).

Every heuristic is a small pure function returning `(reason, detail)` or None, so each can
be tested and reused alone. Scores land in `meta.scores` ("quality_judge", "ifd"); the
judge's reason in `meta.quality_judge_reason`.
"""

from __future__ import annotations

import argparse
import math
import re
import threading
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from datagen.errors import failure_reason
from datagen.llm.base import Completion
from datagen.records import Record, StageResult, dropped
from datagen.stages.context import StageContext

Verdict = tuple[str, dict[str, Any]] | None

DEFAULT_REFUSAL_PHRASES = [
    "as an ai language model",
    "as a language model",
    "as an ai assistant, i",
    "i am an ai language model",
    "i'm an ai language model",
    "i don't have personal opinions",
    "i do not have personal opinions",
    "i'm not able to provide",
    "i am not able to provide",
]
# Phrases that are refusals only when the answer opens with them ("I cannot stress enough..."
# in the middle of a good answer is not a refusal).
DEFAULT_REFUSAL_OPENERS = [
    "i cannot",
    "i can't",
    "i can not",
    "i'm sorry, but",
    "i am sorry, but",
    "i'm sorry, i",
    "sorry, but i",
    "sorry, i can",
    "i apologize, but",
    "i apologise, but",
    "i'm unable to",
    "i am unable to",
    "i'm not able to",
    "i am not able to",
    "i won't be able to",
    "unfortunately, i cannot",
    "unfortunately, i can't",
    "unfortunately, as an ai",
]
# A long answer whose last word is one of these, with no closing punctuation, was cut off.
# Only words that (almost) never end an English sentence: "come in", "that's that" are fine.
_DANGLING_WORDS = frozenset(
    "the a an and or nor but of to with from into onto because than whose their its my your our".split()
)


class QualityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    heuristics: bool = Field(True, description="run the rule-based checks")
    min_output_words: int = Field(
        2, ge=0, description="answers with fewer words are dropped (output_too_short)"
    )
    short_ok_for_classification: bool = Field(
        True, description="classification records (one-word labels) are exempt from min_output_words"
    )
    max_output_words: int = Field(
        2000, ge=1, description="answers with more words are dropped (output_too_long)"
    )
    refusal_phrases: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_PHRASES),
        description="case-insensitive phrases that mark a refusal anywhere in the answer",
    )
    refusal_openers: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REFUSAL_OPENERS),
        description="case-insensitive phrases that mark a refusal when they open the answer",
    )
    refusal_window_chars: int = Field(120, ge=0, description="how far into the answer an opener may start")
    repetition_ngram: int = Field(4, ge=1, description="word n-gram size for the repetition check")
    max_repeated_ngram_ratio: float = Field(
        0.5, ge=0.0, le=1.0, description="drop when this share of the answer's n-grams are repeats"
    )
    repetition_min_words: int = Field(40, ge=1, description="the n-gram check applies from this many words")
    max_line_repeats: int = Field(
        3, ge=1, description="drop when one non-trivial line appears more often than this"
    )
    min_repeated_line_chars: int = Field(
        16, ge=1, description="shorter lines (braces, separators) are ignored"
    )
    check_truncation: bool = Field(
        True,
        description="drop answers cut off (finish_reason=length, unclosed code block, ends mid-sentence)",
    )
    truncation_min_words: int = Field(
        8, ge=1, description="the ends-mid-sentence check applies from this many words"
    )
    max_instruction_overlap: float = Field(
        0.8, ge=0.0, le=1.0, description="drop when answer and instruction overlap this much (word-bigram F1)"
    )

    judge: bool = Field(True, description="score each record with an LLM judge (1-5)")
    llm: str | None = Field(None, description="judge backend spec (None = the run's backend)")
    judge_scale: tuple[float, float] = Field(
        (1, 5),
        description="the judge's scale (low, high); prompts/quality_judge.txt is written for 1-5, change both "
        "together. min_judge_score is on this scale",
    )
    judge_retry: bool = Field(
        False, description="ask an unparseable judge once more for just the number (one extra call each)"
    )
    min_judge_score: float = Field(
        4.5, ge=1.0, le=5.0, description="keep records the judge scores at least this"
    )
    judge_max_tokens: int = Field(256, ge=16, description="token budget for the judge's reply")
    on_unparseable: Literal["drop", "keep"] = Field(
        "drop", description="a judge reply without a score: drop (judge_unparseable) or keep unscored"
    )

    ifd: bool = Field(False, description="compute Instruction-Following Difficulty with a local causal LM")
    ifd_model: str | None = Field(None, description="causal LM folder or hub id (None = embedded SmolLM2)")
    max_ifd: float = Field(
        1.0, gt=0.0, description="keep records with IFD below this (>= 1: instruction does not help)"
    )
    ifd_max_tokens: int = Field(512, ge=8, description="answer and prompt are each cut to this many tokens")


# ---------------------------------------------------------------------------------------------
# heuristics: each returns (reason, detail) or None


def _words(text: str) -> list[str]:
    return text.split()


def _norm_words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def _fold_quotes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


def check_empty(output: str) -> Verdict:
    if not output.strip():
        return "empty_output", {}
    return None


def check_length(output: str, min_words: int, max_words: int, exempt_short: bool = False) -> Verdict:
    count = len(_words(output))
    if count < min_words and not exempt_short:
        return "output_too_short", {"words": count, "min_words": min_words}
    if count > max_words:
        return "output_too_long", {"words": count, "max_words": max_words}
    return None


def check_refusal(output: str, phrases: list[str], openers: list[str], window: int = 120) -> Verdict:
    text = " ".join(_fold_quotes(output).casefold().split())
    for phrase in phrases:
        if phrase.casefold() in text:
            return "refusal", {"phrase": phrase}
    head = text[: window + 40]
    for opener in openers:
        pos = head.find(opener.casefold())
        if 0 <= pos <= window:
            return "refusal", {"phrase": opener}
    return None


def repeated_ngram_ratio(text: str, n: int = 4) -> float:
    """Share of word n-grams that repeat an earlier one (0 = all distinct, ->1 = a loop)."""
    words = _norm_words(text)
    if len(words) < n:
        return 0.0
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams)


def check_repetition(
    output: str,
    n: int = 4,
    max_ratio: float = 0.5,
    min_words: int = 40,
    max_line_repeats: int = 3,
    min_line_chars: int = 16,
) -> Verdict:
    """Degenerate loops: many repeated n-grams, or one substantial line over and over."""
    if len(_words(output)) >= min_words:
        ratio = repeated_ngram_ratio(output, n)
        if ratio > max_ratio:
            return "repetitive_output", {"signal": "ngram", "ratio": round(ratio, 3), "n": n}
    lines = [" ".join(line.split()) for line in output.splitlines()]
    counts = Counter(line for line in lines if len(line) >= min_line_chars)
    if counts:
        line, times = counts.most_common(1)[0]
        if times > max_line_repeats:
            return "repetitive_output", {"signal": "line", "times": times, "line": line[:80]}
    return None


def check_truncated(output: str, finish_reason: str | None = None, min_words: int = 8) -> Verdict:
    """Cut-off answers. Conservative on purpose: lists, code and labels often end without a
    full stop, so text alone only counts when the end is unmistakably mid-sentence."""
    if finish_reason == "length":
        return "truncated_output", {"signal": "finish_reason_length"}
    if output.count("```") % 2 == 1:
        return "truncated_output", {"signal": "unclosed_code_block"}
    tail = output.rstrip()
    if len(_words(tail)) < min_words:
        return None
    last = tail[-1]
    if last in ",;:(":
        return "truncated_output", {"signal": "ends_mid_sentence", "tail": tail[-40:]}
    if last.isalpha():
        last_word = re.findall(r"[A-Za-z']+$", tail)
        if last_word and last_word[0].casefold() in _DANGLING_WORDS:
            return "truncated_output", {"signal": "ends_mid_sentence", "tail": tail[-40:]}
    return None


def overlap_f1(a: str, b: str) -> float:
    """F1 of shared word bigrams (unigrams for texts under 2 words): 1 = same words in order."""
    wa, wb = _norm_words(a), _norm_words(b)
    n = 2 if min(len(wa), len(wb)) >= 2 else 1
    ga = Counter(tuple(wa[i : i + n]) for i in range(len(wa) - n + 1))
    gb = Counter(tuple(wb[i : i + n]) for i in range(len(wb) - n + 1))
    if not ga or not gb:
        return 0.0
    common = sum((ga & gb).values())
    if not common:
        return 0.0
    precision, recall = common / sum(ga.values()), common / sum(gb.values())
    return 2 * precision * recall / (precision + recall)


def check_copies_instruction(instruction: str, output: str, max_overlap: float = 0.8) -> Verdict:
    """An answer that restates the instruction instead of answering it. Compared with the
    instruction only: echoing the *input* is right for tasks like "fix the grammar"."""
    score = overlap_f1(output, instruction)
    if score >= max_overlap:
        return "copies_instruction", {"overlap": round(score, 3), "max_overlap": max_overlap}
    return None


def heuristic_verdict(record: Record, config: QualityConfig) -> Verdict:
    """The first heuristic that rejects `record`, or None when it passes them all."""
    output = record.output
    verdict = check_empty(output)
    if verdict:
        return verdict
    exempt = bool(record.meta.is_classification) and config.short_ok_for_classification
    verdict = check_length(output, config.min_output_words, config.max_output_words, exempt)
    verdict = verdict or check_refusal(
        output, config.refusal_phrases, config.refusal_openers, config.refusal_window_chars
    )
    verdict = verdict or check_repetition(
        output,
        config.repetition_ngram,
        config.max_repeated_ngram_ratio,
        config.repetition_min_words,
        config.max_line_repeats,
        config.min_repeated_line_chars,
    )
    if config.check_truncation and not verdict:
        finish = record.meta.answer_finish_reason
        verdict = check_truncated(
            output, finish if isinstance(finish, str) else None, config.truncation_min_words
        )
    return verdict or check_copies_instruction(record.instruction, output, config.max_instruction_overlap)


# ---------------------------------------------------------------------------------------------
# LLM judge

def parse_judgement(text: str) -> tuple[float | None, str]:
    """(score in the default 1-5 scale or None, reason): the shared judge's parser."""
    from datagen.judge import parse_judgement as shared

    low, high = QualityConfig.model_fields["judge_scale"].default
    return shared(text, low, high)


# ---------------------------------------------------------------------------------------------
# IFD: how much the instruction helps a model predict the answer

_IFD_MODELS: dict[str, tuple[Any, Any]] = {}
_IFD_LOCK = threading.Lock()


def load_causal_lm(path: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) for IFD, loaded once per process. None = embedded SmolLM2 folder."""
    if path is None:
        from datagen.llm.local import embedded_model_dir

        path = str(embedded_model_dir())
    with _IFD_LOCK:
        if path not in _IFD_MODELS:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            model.eval()
            _IFD_MODELS[path] = (tokenizer, model)
        return _IFD_MODELS[path]


def _assistant_header(tokenizer: Any) -> str:
    """The text a chat template puts before an assistant turn ("<|im_start|>assistant\\n")."""
    probe = [{"role": "user", "content": "x"}]
    try:
        with_gen = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
        without = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=False)
    except Exception:  # no chat template: plain LM
        return tokenizer.bos_token or tokenizer.eos_token or ""
    if with_gen.startswith(without) and len(with_gen) > len(without):
        return with_gen[len(without) :]
    return tokenizer.bos_token or tokenizer.eos_token or ""


def _answer_nll(model: Any, prefix_ids: list[int], answer_ids: list[int]) -> float:
    """Mean negative log-likelihood of `answer_ids` following `prefix_ids`."""
    import torch

    ids = torch.tensor([prefix_ids + answer_ids])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0]
    start = len(prefix_ids)
    pred = logits[start - 1 : start - 1 + len(answer_ids)].float()
    target = ids[0, start : start + len(answer_ids)]
    return float(torch.nn.functional.cross_entropy(pred, target))


def ifd_score(record: Record, tokenizer: Any, model: Any, max_tokens: int = 512) -> dict[str, float] | None:
    """IFD = PPL(answer | instruction) / PPL(answer), both over the same answer tokens.

    The unconditioned answer follows only the assistant header, so both perplexities score
    exactly the same tokens and differ only by the instruction. None for an empty answer.
    """
    answer_ids = tokenizer(record.output.strip(), add_special_tokens=False)["input_ids"][:max_tokens]
    if not answer_ids:
        return None
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": record.prompt_text()}], tokenize=False, add_generation_prompt=True
    )
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"][-max_tokens:]
    header_ids = tokenizer(_assistant_header(tokenizer), add_special_tokens=False)["input_ids"]
    if not header_ids:
        header_ids = [tokenizer.eos_token_id]
    nll_cond = _answer_nll(model, prompt_ids, answer_ids)
    nll_plain = _answer_nll(model, header_ids, answer_ids)
    return {
        "ifd": math.exp(nll_cond - nll_plain),
        "ppl_conditioned": math.exp(nll_cond),
        "ppl_unconditioned": math.exp(nll_plain),
    }


# ---------------------------------------------------------------------------------------------
# the stage


def run(records: list[Record], ctx: StageContext, config: QualityConfig) -> StageResult:
    """Heuristics, then IFD (optional), then the judge; kept records stay in input order."""
    verdicts: dict[int, tuple[str, dict[str, Any]]] = {}
    updated: dict[int, Record] = {}
    stats: dict[str, Any] = {"input": len(records)}

    if config.heuristics:
        for i, rec in enumerate(records):
            verdict = heuristic_verdict(rec, config)
            if verdict:
                verdicts[i] = verdict
    stats["heuristic_drops"] = len(verdicts)

    def alive() -> list[int]:
        return [i for i in range(len(records)) if i not in verdicts]

    if config.ifd:
        tokenizer, model = load_causal_lm(config.ifd_model)
        todo = alive()
        scored, values = 0, []
        with ctx.bar(len(todo), "quality ifd", unit="rec") as bar:
            for i in todo:
                rec = updated.setdefault(i, records[i].model_copy(deep=True))
                result = ifd_score(rec, tokenizer, model, config.ifd_max_tokens)
                bar.update(1)
                if result is None:
                    continue
                scored += 1
                values.append(result["ifd"])
                rec.meta.scores["ifd"] = round(result["ifd"], 4)
                if result["ifd"] >= config.max_ifd:
                    verdicts[i] = (
                        "ifd_too_high",
                        {
                            "ifd": round(result["ifd"], 4),
                            "max_ifd": config.max_ifd,
                            "ppl_conditioned": round(result["ppl_conditioned"], 3),
                            "ppl_unconditioned": round(result["ppl_unconditioned"], 3),
                        },
                    )
                bar.set_postfix(dropped=len(verdicts))
        stats["ifd_scored"] = scored
        stats["ifd_mean"] = round(sum(values) / len(values), 4) if values else None

    if config.judge:
        _judge(records, alive(), updated, verdicts, ctx, config, stats)

    kept, gone = [], []
    for i, rec in enumerate(records):
        current = updated.get(i, rec)
        if i in verdicts:
            reason, detail = verdicts[i]
            gone.append(dropped(current, reason, **detail))
        else:
            kept.append(current if i in updated else rec.model_copy(deep=True))
    counts: dict[str, int] = {}
    for reason, _ in verdicts.values():
        counts[reason] = counts.get(reason, 0) + 1
    stats["drop_reasons"] = dict(sorted(counts.items()))
    stats["kept"] = len(kept)
    return StageResult(kept=kept, dropped=gone, stats=stats)


def _judge(
    records: list[Record],
    todo: list[int],
    updated: dict[int, Record],
    verdicts: dict[int, tuple[str, dict[str, Any]]],
    ctx: StageContext,
    config: QualityConfig,
    stats: dict[str, Any],
) -> None:
    from datagen.judge import score_answers

    llm = ctx.llm(config.llm)
    structured = bool(getattr(llm, "supports_json_schema", False))
    chosen = [records[i] for i in todo]
    low, high = config.judge_scale
    results = score_answers(
        llm, [(r.instruction, r.output) for r in chosen], ctx, low=low, high=high, prompt="quality_judge",
        max_tokens=config.judge_max_tokens, retry=config.judge_retry, structured=structured,
        desc="quality judge", inputs=[r.input for r in chosen], seed=ctx.seed, whole_numbers=False,
    )
    counts = {"low": 0, "unparseable": 0}
    scores: list[float] = []
    for i, judged in zip(todo, results, strict=True):  # applied in request order: deterministic
        rec = updated.setdefault(i, records[i].model_copy(deep=True))
        if judged.error:
            reason = failure_reason(Completion(error=judged.error)) or "llm_error"
            verdicts[i] = (reason, {"error": judged.error[:300]})
            continue
        score, reason = judged.score, judged.reason
        if score is None:
            counts["unparseable"] += 1
            if config.on_unparseable == "drop":
                verdicts[i] = ("judge_unparseable", {"reply": judged.raw[:300]})
            continue
        scores.append(score)
        rec.meta.scores["quality_judge"] = score
        rec.meta.quality_judge_reason = reason
        if score < config.min_judge_score:
            counts["low"] += 1
            verdicts[i] = (
                "low_judge_score",
                {"score": score, "min_score": config.min_judge_score, "judge_reason": reason},
            )
    stats.update(
        judge_requests=len(results),
        judge_scale=list(config.judge_scale),
        judge_structured_output=structured,
        judge_unparseable=counts["unparseable"],
        judge_low_score=counts["low"],
        llm_errors=sum(1 for r, _ in verdicts.values() if r == "llm_error"),
        judge_mean_score=round(sum(scores) / len(scores), 3) if scores else None,
    )


# ---------------------------------------------------------------------------------------------
# CLI


def register_cli(subparsers: argparse._SubParsersAction) -> None:
    from datagen.cli_common import add_io_args, add_llm_args

    parser = subparsers.add_parser(
        "filter",
        help="drop low-quality records: heuristics, LLM judge (1-5), optional IFD",
        description=(
            "Rule checks (empty, too short/long, refusal, repetition, truncation, answer copying the "
            "instruction), then an LLM judge scoring 1-5 (keep >= --min-score), optionally IFD from a local "
            "model. Every dropped record carries its reason; write them with --dropped."
        ),
    )
    add_io_args(parser)
    add_llm_args(parser)
    defaults = QualityConfig()
    parser.add_argument("--judge", default=None, help="judge backend spec (default: --llm)")
    parser.add_argument(
        "--min-score",
        type=float,
        default=defaults.min_judge_score,
        help=f"minimum judge score kept (default {defaults.min_judge_score})",
    )
    parser.add_argument("--no-judge", action="store_true", help="heuristics (and IFD) only, no LLM calls")
    parser.add_argument(
        "--keep-unparseable", action="store_true", help="keep records whose judge reply has no score"
    )
    parser.add_argument("--no-heuristics", action="store_true", help="skip the rule-based checks")
    parser.add_argument(
        "--min-words",
        type=int,
        default=defaults.min_output_words,
        help=f"minimum answer words (default {defaults.min_output_words})",
    )
    parser.add_argument(
        "--max-words",
        type=int,
        default=defaults.max_output_words,
        help=f"maximum answer words (default {defaults.max_output_words})",
    )
    parser.add_argument(
        "--ifd", action="store_true", help="also compute IFD with a local model and drop IFD >= --max-ifd"
    )
    parser.add_argument("--ifd-model", default=None, help="causal LM for IFD (default: embedded SmolLM2)")
    parser.add_argument(
        "--max-ifd", type=float, default=defaults.max_ifd, help=f"(default {defaults.max_ifd})"
    )
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    from datagen.cli_common import run_stage_cli

    config = QualityConfig(
        heuristics=not args.no_heuristics,
        min_output_words=args.min_words,
        max_output_words=args.max_words,
        judge=not args.no_judge,
        llm=args.judge,
        min_judge_score=args.min_score,
        on_unparseable="keep" if args.keep_unparseable else "drop",
        ifd=args.ifd,
        ifd_model=args.ifd_model,
        max_ifd=args.max_ifd,
    )
    return run_stage_cli(args, run, config)
