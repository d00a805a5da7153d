"""A real two-node Ray cluster on this machine for the `executor: ray` tests.

`ray start --head` plus a second `ray start --address ...` process, one CPU each, a small
object store and no dashboard: the same daemons (GCS, raylets, object stores) a multi-machine
cluster runs, only on loopback. Teardown kills exactly the processes this cluster started
(found through its own temp dir, then their children), never every Ray process on the
machine as `ray stop` would: other Ray users may share it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))
NODE_OPTIONS = ["--num-cpus", "1", "--object-store-memory", str(250 * 1024 * 1024), "--disable-usage-stats",
                "--node-ip-address", "127.0.0.1"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every process we can read."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        found[int(entry.name)] = (ppid, cmdline)
    return found


def _descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    out, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in table.items() if ppid in frontier} - out
        out |= frontier
    return out


def tcp_ports(pid: int) -> set[int]:
    """Local TCP ports of `pid`'s open sockets: matches a server's view of who is calling."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


class LocalRayCluster:
    def __init__(self) -> None:
        # Short path: Ray's unix socket paths must stay under 107 characters.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**os.environ, "RAY_TMPDIR": str(self.temp_dir), "RAY_AUTH_MODE": "disabled",
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.raylets: list[int] = []

    def start(self, nodes: int = 2) -> LocalRayCluster:
        self._ray("start", "--head", "--port", str(self.port), "--include-dashboard=false",
                  "--temp-dir", str(self.temp_dir), *NODE_OPTIONS)
        for _ in range(nodes - 1):
            self._ray("start", "--address", self.address, *NODE_OPTIONS)
        self.raylets = sorted(pid for pid, (_, cmd) in _processes().items()
                              if "raylet/raylet" in cmd and str(self.temp_dir) in cmd)
        assert len(self.raylets) == nodes, f"expected {nodes} raylets, found {self.raylets}"
        return self

    def _ray(self, *args: str) -> None:
        done = subprocess.run([RAY, *args], env=self.env, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray {' '.join(args[:2])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def workers(self, node: int, name: str) -> list[int]:
        """pids of worker processes on node `node` (0 = head) whose process title has `name`."""
        table = _processes()
        under = _descendants({self.raylets[node]}, table)
        return sorted(pid for pid in under if pid != self.raylets[node] and name in table[pid][1])

    def stop(self) -> None:
        table = _processes()
        roots = {pid for pid, (_, cmd) in table.items() if str(self.temp_dir) in cmd and pid != os.getpid()}
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in sorted(_descendants(roots, table)):
                if pid == os.getpid():
                    continue
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
            table = _processes()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@pytest.fixture(scope="session")
def two_node_cluster() -> Iterator[LocalRayCluster]:
    """One two-node cluster for every Ray test of the session (starting one takes ~20 s on 2
    busy cores); import it into a test module to use it."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    running = LocalRayCluster().start(nodes=2)
    try:
        yield running
    finally:
        from datagen.ray_cluster import disconnect

        disconnect()
        running.stop()
