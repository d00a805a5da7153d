"""The failures a run can end with, and how a failed LLM call becomes a drop reason.

Two kinds of failure must never be confused:
- one record's problem (its prompt is too long, a content filter refused it): that record is
  dropped with its own reason and the run goes on;
- a problem no retry can fix (a wrong key, a model the server does not serve, an endpoint
  that is gone): the run stops at once with one line that says what to fix, and the stage
  is not marked done, so a rerun after the fix does the work.

Every expected failure is a `DatagenError`: the CLI prints its message on one line and exits
with its `exit_code`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol


class Failed(Protocol):
    """What reading a failure needs of a `datagen.llm.Completion` (this module sits below the LLM layer)."""

    error: str | None

# Exit codes of `datagen`: 2 bad input or config, 3 the LLM endpoint or a stage failed,
# 4 a step after the export failed (the exported data is complete)
# (75: the --budget cap stopped the run, see datagen/llm/budget.py).
EXIT_BAD_INPUT = 2
EXIT_LLM_FAILED = 3
EXIT_AFTER_EXPORT = 4

# Error kinds that belong to one request, not to the endpoint: they become that record's
# drop reason and do not count against a stage's `max_error_rate`.
PER_RECORD_ERROR_KINDS = frozenset({"context_too_long", "content_filtered"})

# Phrases servers use for those two (OpenAI, vLLM, Azure, Anthropic-compatible proxies).
_CONTEXT_PHRASES = (
    "context length",
    "context_length",
    "maximum context",
    "prompt is too long",
    "too many tokens",
    "input is too long",
    "exceeds the model",
    "longer than the model",
    "max_model_len",
    "reduce the length",
)
_CONTENT_PHRASES = ("content_filter", "content filter", "content management policy", "flagged", "safety system")


class DatagenError(Exception):
    """An expected failure, already phrased for the user."""

    exit_code = 1


class FatalLLMError(DatagenError):
    """No retry can fix this (bad key, unknown model, unreachable endpoint): stop the run."""

    exit_code = EXIT_LLM_FAILED


class StageFailed(DatagenError):
    """Too many of a stage's LLM calls failed for it to count as done."""

    exit_code = EXIT_LLM_FAILED


class AfterExportFailed(DatagenError):
    """A step after the export (training, eval, the report) failed: the data is safe.

    Its own exit code, because "bad input" (2) after a paid run that succeeded sends the user
    looking for a problem in their file that is not there."""

    exit_code = EXIT_AFTER_EXPORT


@contextmanager
def after_export(step: str, path: Path, exports: Path) -> Iterator[None]:
    """Run a step that comes after the exports; an unexpected failure names the step and its
    file and says the exports are complete. Failures that already explain themselves (an LLM
    that cannot answer: 3, the budget: 75) keep their own message and code."""
    try:
        yield
    except DatagenError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise AfterExportFailed(
            f"{step} failed writing {path}: {reason}; the exports in {exports} are complete, and rerunning "
            "the same command skips every finished stage"
        ) from exc


def classify_bad_request(message: str) -> str | None:
    """`context_too_long` / `content_filtered` when a 400's text says so, else None."""
    lowered = message.lower()
    if any(phrase in lowered for phrase in _CONTEXT_PHRASES):
        return "context_too_long"
    if any(phrase in lowered for phrase in _CONTENT_PHRASES):
        return "content_filtered"
    return None


def error_kind(error: str | None) -> str:
    """The machine-readable part of a `Completion.error` (`kind: detail`)."""
    return (error or "").split(":", 1)[0].strip()


def failure_reason(completion: Failed) -> str | None:
    """The drop reason for a request that gave no usable text, or None when it did.

    `llm_error` is what counts against `max_error_rate`; a per-record kind keeps its own name;
    an empty reply is its own reason (the model answered, with nothing)."""
    if completion.error:
        kind = error_kind(completion.error)
        return kind if kind in PER_RECORD_ERROR_KINDS else "llm_error"
    if not completion.texts or not any(text.strip() for text in completion.texts):
        return "empty_reply"
    return None


def counts_against_error_rate(kind: str) -> bool:
    return kind not in PER_RECORD_ERROR_KINDS


def check_error_rate(stage: str, usage: dict[str, dict], max_error_rate: float) -> None:
    """Raise `StageFailed` when more than `max_error_rate` of a stage's LLM requests failed.

    `usage` is the stage's own share of `UsageStats.as_dict()` per backend. Per-record
    failures (too long, filtered) are the data's, not the endpoint's, and do not count."""
    requests = sum(int(stats.get("requests", 0)) for stats in usage.values())
    by_kind: dict[str, int] = {}
    for stats in usage.values():
        for kind, count in (stats.get("errors") or {}).items():
            if counts_against_error_rate(kind):
                by_kind[kind] = by_kind.get(kind, 0) + int(count)
    failed = sum(by_kind.values())
    if not requests or failed / requests <= max_error_rate:
        return
    kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(by_kind.items(), key=lambda kv: -kv[1]))
    raise StageFailed(
        f"stage {stage}: {failed} of {requests} LLM requests failed ({kinds}), above max_error_rate "
        f"{max_error_rate:g}; not marked done. Fix the cause and rerun: finished calls come from the cache, "
        "only the failed ones are sent again"
    )
