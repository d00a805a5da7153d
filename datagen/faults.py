"""Crash injection for the reliability tests: die like `kill -9` at a chosen point.

`DATAGEN_KILL_AFTER_CALLS=N` kills the process right after the N-th fresh LLM completion
of this process has been handed to the cache (queued for its group commit, so the open commit
window dies with the process, as in a real kill -9). Deterministic points are what let a test
prove that resume repeats only calls the cache had not committed; it costs one env lookup per
completion.
"""

from __future__ import annotations

import os
import signal

_fresh_calls = 0


def after_committed_call() -> None:
    global _fresh_calls
    limit = os.environ.get("DATAGEN_KILL_AFTER_CALLS")
    if not limit:
        return
    _fresh_calls += 1
    if _fresh_calls >= int(limit):
        os.kill(os.getpid(), signal.SIGKILL)


def at_point(name: str) -> None:
    """Kill at a named point (e.g. `after_stage:dedup`) when `DATAGEN_KILL_AT` names it."""
    if os.environ.get("DATAGEN_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
