"""Shared pytest fixtures. Keep each fixture small and documented; add new ones below."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the package is not pip-installed in the dev venv
    sys.path.insert(0, str(ROOT))
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:  # so tests can `from openai_test_server import ...`
    sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def _openai_server_session() -> Iterator[object]:
    from openai_test_server import OpenAITestServer

    server = OpenAITestServer().start()
    yield server
    server.stop()


@pytest.fixture
def openai_server(_openai_server_session):
    """A real OpenAI-compatible server on 127.0.0.1 (tests/openai_test_server.py).

    One server per session, reset to defaults (no latency, no faults, zero counters) for
    each test. Use `.base_url`, `.configure(latency=..., fail_first=..., ...)`, `.stats`.
    """
    _openai_server_session.reset()
    yield _openai_server_session
    _openai_server_session.reset()
