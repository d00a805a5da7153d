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


@pytest.fixture(scope="module")
def scripted_module_server(_openai_server_session):
    """The loopback server answering every stage's prompts like a real model would
    (tests/pipeline_responder.py), for a module's pipeline runs; module-scoped so a baseline
    run can be shared by its tests."""
    from pipeline_responder import reply

    _openai_server_session.reset()
    _openai_server_session.responder = reply
    yield _openai_server_session
    _openai_server_session.responder = None
    _openai_server_session.reset()


@pytest.fixture
def scripted_server(scripted_module_server):
    """The scripted server with default settings and zeroed counters for each test."""
    scripted_module_server.reset()
    yield scripted_module_server
    scripted_module_server.reset()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny Llama with the embedded model's tokenizer, saved once per session."""
    from finetune_helpers import smol_tokenizer, tiny_llama

    folder = tmp_path_factory.mktemp("tiny")
    tokenizer = smol_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
