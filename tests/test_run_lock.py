"""One run per run directory (datagen/run_lock.py): nothing is paid twice by two runs on one folder.

The process tests start real `datagen run` processes against the loopback server. They never
rely on timing: the server holds replies at a barrier (`barrier=2` while each run sends one
request at a time), so the first run provably sits inside its run directory, holding the lock,
until the test opens the barrier with one request of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from datagen.run_lock import (
    FolderBusy,
    OsLock,
    _names_this_file,
    hold,
    lock_file_beside,
    lock_file_inside,
    read_holder,
)

ROOT = Path(__file__).resolve().parent.parent
RECORDS = 40


# ---------------------------------------------------------------- the lock itself, in one process


def test_holder_is_recorded_while_held_and_removed_after(tmp_path: Path) -> None:
    lock_file = lock_file_inside(tmp_path / "run")
    with hold(lock_file, "datagen run", what="run") as me:
        assert read_holder(lock_file) == me
        assert me.pid == os.getpid()
    assert read_holder(lock_file) is None
    assert list(lock_file.parent.iterdir()) == []  # a finished holder leaves nothing behind


def test_busy_folder_is_refused_in_one_line_naming_the_holder(tmp_path: Path) -> None:
    lock_file = lock_file_inside(tmp_path / "run")
    with hold(lock_file, "datagen run", what="runs/x"):  # flock: a second open file conflicts, even in-process
        with pytest.raises(FolderBusy) as refused:
            with hold(lock_file, "datagen run", what="runs/x"):
                pytest.fail("entered a held folder")
    message = str(refused.value)
    assert "\n" not in message and refused.value.exit_code == 2
    assert message.startswith("runs/x: in use by datagen run (PID ") and f"PID {os.getpid()} " in message
    assert "--wait" in message


def test_wait_says_whom_it_waits_for_then_gets_the_lock(tmp_path: Path) -> None:
    lock_file = lock_file_inside(tmp_path / "run")
    waiting = threading.Event()
    holder_entered = threading.Event()

    def first_holder() -> None:
        with hold(lock_file, "datagen run", what="run"):
            holder_entered.set()
            waiting.wait(60)  # released only once the waiter has said it waits

    thread = threading.Thread(target=first_holder)
    thread.start()
    assert holder_entered.wait(60)
    said: list[str] = []
    with hold(lock_file, "datagen run", what="run", wait=True, notify=lambda line: (said.append(line), waiting.set())):
        assert read_holder(lock_file).pid == os.getpid()
    thread.join(60)
    assert len(said) == 1 and f"PID {os.getpid()} " in said[0] and "waiting" in said[0]


def test_stale_info_of_a_dead_holder_is_not_named(tmp_path: Path) -> None:
    """The lock is held (by a holder that has not written its info yet) and the info on disk is a
    killed holder's: the refusal must not name the dead PID."""
    lock_file = lock_file_inside(tmp_path / "run")
    lock_file.parent.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    with hold(lock_file, "datagen run", what="run"):
        info = lock_file.with_suffix(".holder.json")
        stale = json.loads(info.read_text())
        info.write_text(json.dumps({**stale, "pid": dead_pid}))
        with pytest.raises(FolderBusy, match="has not recorded its PID") as refused:
            with hold(lock_file, "datagen run", what="run"):
                pass
    assert f"PID {dead_pid}" not in str(refused.value)
    assert not lock_file.exists()


def test_a_waiter_on_the_removed_lock_file_does_not_count_as_holder(tmp_path: Path) -> None:
    """Release removes the file while still locked. A waiter that opened it before then gets a
    flock on a file the path no longer names, while a newcomer locks the new file: the waiter
    must see that and not proceed as a second holder."""
    import fcntl

    lock_file = tmp_path / ".datagen-run.lock"
    first = OsLock(lock_file)
    assert first.try_acquire()
    waiter_fd = os.open(lock_file, os.O_RDWR)  # opened while the first one held it
    first.release()
    newcomer = OsLock(lock_file)
    assert newcomer.try_acquire()
    fcntl.flock(waiter_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds: the old file is nobody's now
    assert not _names_this_file(lock_file, waiter_fd)
    assert not OsLock(lock_file).try_acquire()
    os.close(waiter_fd)
    newcomer.release()


def test_without_fcntl_filelock_guards_the_folder(tmp_path: Path, monkeypatch) -> None:
    import datagen.run_lock as run_lock

    monkeypatch.setattr(run_lock, "fcntl", None)
    lock_file = lock_file_inside(tmp_path / "run")
    with hold(lock_file, "datagen run", what="run"):
        with pytest.raises(FolderBusy, match=f"PID {os.getpid()} "):
            with hold(lock_file, "datagen run", what="run"):
                pass
    with hold(lock_file, "datagen run", what="run"):
        pass


def test_pipeline_run_from_python_takes_the_same_lock(tmp_path: Path) -> None:
    from datagen.pipeline import Pipeline, validate_config

    run_dir = tmp_path / "run"
    config = validate_config({"name": "x", "llm": "openai:m", "stages": [{"distill": {"n": 1}}],
                              "llm_options": {"openai": {"base_url": "http://127.0.0.1:9/v1", "max_attempts": 1}}})
    with hold(lock_file_inside(run_dir), "datagen run", what=str(run_dir)):
        with pytest.raises(FolderBusy, match=f"PID {os.getpid()} "):
            Pipeline(config).run(run_dir=run_dir, progress=False)
    assert not (run_dir / "config.yaml").exists()  # refused before writing anything


def test_finetune_refuses_an_output_folder_another_process_trains_into(tmp_path: Path) -> None:
    from finetune.train import FinetuneConfig, train

    out = tmp_path / "model"
    with hold(lock_file_beside(out), "datagen finetune", what=str(out)):
        with pytest.raises(FolderBusy, match=f"{out}: in use by datagen finetune"):
            train(tmp_path / "no-data-needed.jsonl", FinetuneConfig(), out, progress=False)
    assert not out.exists()


# ---------------------------------------------------------------- real `datagen run` processes


def _config(base_url: str) -> dict:
    return {
        "name": "lock",
        "llm": "openai:test-model",
        "llm_options": {"openai": {"base_url": base_url, "max_concurrency": 1}},
        "input": {"path": str(ROOT / "seeds" / "seed_tasks.jsonl"), "limit": RECORDS},
        "stages": [{"distill": {"n": 1, "ranker": "none"}}],
        "export": {"formats": ["records"]},
    }


def _command(config_path: Path, run_dir: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "datagen.cli", "run", str(config_path), "--run-dir", str(run_dir),
            "--no-progress", *flags]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATAGEN_KILL")}
    return {**env, "OPENAI_API_KEY": "sk-lock-test", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def _start(config_path: Path, run_dir: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(_command(config_path, run_dir, *flags), env=_env(), stderr=subprocess.PIPE, text=True)


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    """Poll until `condition` holds; the deadline only stops a broken test from hanging."""
    deadline = time.monotonic() + 300
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def _open_barrier(server) -> None:
    """One request of the test's own: two in flight opens the barrier for good."""
    body = json.dumps({"model": "test-model", "messages": [{"role": "user", "content": "open the barrier"}]})
    request = urllib.request.Request(f"{server.base_url}/chat/completions", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as reply:
        assert reply.status == 200


@pytest.fixture
def first_run(tmp_path: Path, openai_server):
    """A `datagen run` stuck at the server's barrier inside its first call, holding the run dir."""
    openai_server.configure(barrier=2, barrier_timeout=300)
    config_path = tmp_path / "p.yaml"
    config_path.write_text(yaml.safe_dump(_config(openai_server.base_url)))
    run_dir = tmp_path / "run"
    process = _start(config_path, run_dir)
    try:
        _wait_for(lambda: openai_server.stats.in_flight >= 1 or process.poll() is not None,
                  "the first run is inside its first call")
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert read_holder(lock_file_inside(run_dir)).pid == process.pid
        yield process, config_path, run_dir
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


def test_second_run_refuses_and_a_waiting_one_resumes_paying_nothing(openai_server, first_run) -> None:
    first, config_path, run_dir = first_run
    refused = subprocess.run(_command(config_path, run_dir), env=_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and f"in use by datagen run (PID {first.pid} on " in lines[0], refused.stderr
    assert openai_server.stats.requests == 1  # only the first run's held call: the refusal paid nothing

    waiter = _start(config_path, run_dir, "--wait")
    said = ""
    while "waiting" not in said and waiter.poll() is None:
        said = waiter.stderr.readline()
    assert f"PID {first.pid} " in said and "waiting for it to end" in said

    _open_barrier(openai_server)
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-3000:]
    _, waiter_err = waiter.communicate(timeout=300)
    assert waiter.returncode == 0, waiter_err[-3000:]
    assert f"finished: {RECORDS} records" in waiter_err
    assert not lock_file_inside(run_dir).exists()
    assert openai_server.stats.requests == RECORDS + 1  # the first run's calls and the barrier opener, once


def test_kill9_of_the_holder_frees_the_run_directory(openai_server, first_run) -> None:
    first, config_path, run_dir = first_run
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=300)
    assert read_holder(lock_file_inside(run_dir)).pid == first.pid  # its info outlives it; the lock does not
    openai_server.configure(barrier=0)
    resumed = subprocess.run(_command(config_path, run_dir), env=_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"finished: {RECORDS} records" in resumed.stderr
    assert not lock_file_inside(run_dir).exists() and read_holder(lock_file_inside(run_dir)) is None
