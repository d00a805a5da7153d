"""One writer per folder: a second `datagen run` on a busy run directory stops instead of paying again.

Two runs on one run directory cannot see each other's in-flight LLM calls, so each would pay
for every call and both would write the same stage files and manifest. `hold` takes an OS
file lock (`flock`) for as long as a run writes there. The kernel releases it when the holder
exits in any way, kill -9 included, so there is never a stale lock to delete by hand.

The lock file is removed on release (while still locked; a process that then gets the lock on
the removed file sees that the path now names another file and locks that one instead), so a
finished run leaves nothing behind. `filelock` keeps its file in place for waiters to share;
it is used only where `fcntl` is missing (Windows).

Who holds the lock (PID, host, start time, command) is written beside it right after it is
acquired, only to name the holder when another process is refused or waits. A killed holder
leaves both files behind; they mean nothing without the lock, and the next holder takes them over.

Users: `Pipeline.run` (the run directory, CLI and Python API alike) and `finetune.train` (its
output folder, which is swapped in by rename, so the lock sits beside it). Review writes of a
future viewer can take `hold(lock_file_inside(run_dir, "review"), ...)` so they never wait on a
run. Stage commands are deliberately not locked: they write the files they are given, and
processes sharing one `--cache` are safe (SQLite WAL, one commit per completion).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

from datagen.errors import EXIT_BAD_INPUT, DatagenError
from datagen.io import atomic_write_text

# A new holder writes its info a moment after it acquires the lock: a refused process retries
# reading it this many times (50 ms apart) before it names the holder as unknown.
_HOLDER_READ_ATTEMPTS = 20
_HOLDER_READ_PAUSE = 0.05


class FolderBusy(DatagenError):
    """Another process holds the folder; the message names it (exit 2, like any input the user can fix)."""

    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True)
class Holder:
    """The process that holds a lock, as it recorded itself after acquiring it."""

    pid: int
    host: str
    started: str  # local time, to the second
    command: str

    def describe(self) -> str:
        return f"{self.command} (PID {self.pid} on {self.host}, started {self.started})"

    def is_alive(self) -> bool:
        """False only when it surely is not: a dead PID on this host. Another host cannot be checked."""
        if self.host != socket.gethostname() or os.name == "nt":
            return True
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except OSError:  # EPERM: alive, owned by someone else
            return True
        return True


class OsLock:
    """An exclusive `flock` on `path` that removes the file on release (`filelock` where there is no fcntl)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None
        self._fallback = None
        if fcntl is None:
            from filelock import FileLock

            self._fallback = FileLock(str(self.path))

    def try_acquire(self) -> bool:
        if self._fallback is not None:
            from filelock import Timeout

            try:
                self._fallback.acquire(timeout=0)
            except Timeout:
                return False
            return True
        return self._flock(blocking=False)

    def acquire(self) -> None:
        """Block until the lock is ours, however its holder ends."""
        if self._fallback is not None:
            self._fallback.acquire()
        else:
            self._flock(blocking=True)

    def release(self) -> None:
        if self._fallback is not None:
            self._fallback.release()
        elif self._fd is not None:
            self.path.unlink(missing_ok=True)  # still locked: nobody can take this file over meanwhile
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def _flock(self, blocking: bool) -> bool:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            if _names_this_file(self.path, fd):
                self._fd = fd
                return True
            os.close(fd)  # its holder removed this file on release: lock the one the path names now


def _names_this_file(path: Path, fd: int) -> bool:
    try:
        current = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


def lock_file_inside(folder: Path, purpose: str = "run") -> Path:
    """The lock for writers of `folder` itself (a run directory); `purpose` separates independent writers."""
    return Path(folder) / f".datagen-{purpose}.lock"


def lock_file_beside(folder: Path) -> Path:
    """The lock for a folder that is replaced by a rename (finetune's output): it cannot live inside."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.datagen.lock")


def holder_file(lock_file: Path) -> Path:
    return lock_file.with_suffix(".holder.json")


def read_holder(lock_file: Path) -> Holder | None:
    """Who last recorded holding `lock_file`; None when nobody did or the file is unreadable."""
    try:
        return Holder(**json.loads(holder_file(lock_file).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


@contextmanager
def hold(
    lock_file: Path,
    command: str,
    what: str,
    wait: bool = False,
    notify: Callable[[str], None] | None = None,
) -> Iterator[Holder]:
    """Hold `lock_file` for the body; `what` names the guarded folder in messages.

    Busy and `wait` false: `FolderBusy` at once, naming the holder. Busy and `wait` true: one
    line through `notify` (stderr by default) saying whom it waits for, then block until the
    holder ends, however it ends.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = OsLock(lock_file)
    acquired, holder = _try_acquire(lock, lock_file)
    if not acquired:
        named = holder.describe() if holder else "another process (it has not recorded its PID)"
        if not wait:
            raise FolderBusy(f"{what}: in use by {named}; wait for it to end, or rerun with --wait")
        (notify or _to_stderr)(f"{what}: in use by {named}; waiting for it to end")
        lock.acquire()
    try:
        me = Holder(pid=os.getpid(), host=socket.gethostname(), started=time.strftime("%Y-%m-%d %H:%M:%S"),
                    command=command)
        atomic_write_text(holder_file(lock_file), json.dumps(asdict(me)))
        yield me
    finally:
        holder_file(lock_file).unlink(missing_ok=True)
        lock.release()


def _try_acquire(lock: OsLock, lock_file: Path) -> tuple[bool, Holder | None]:
    """(True, None) when the lock is now ours; else (False, the live holder or None when it cannot be named).

    Retries briefly: a holder that just acquired the lock has not written its info yet, and
    the info left by a killed holder names a dead PID until the new holder replaces it.
    """
    for _ in range(_HOLDER_READ_ATTEMPTS):
        if lock.try_acquire():
            return True, None
        holder = read_holder(lock_file)
        if holder is not None and holder.is_alive():
            return False, holder
        time.sleep(_HOLDER_READ_PAUSE)
    return False, None


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
