"""`datagen push` with the real huggingface_hub client against a loopback Hub (tests/hub_test_server.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hub_test_server import HubTestServer
from review_run import make_run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, scripted_module_server) -> Path:
    return make_run(tmp_path_factory.mktemp("push"), scripted_module_server.base_url)


@pytest.fixture
def hub():
    server = HubTestServer().start()
    yield server
    server.stop()


def push(args: list[str], hub: HubTestServer, tmp_path: Path, token: str | None = "hf_test_token"):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env |= {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": str(ROOT),
            "HF_HUB_DISABLE_TELEMETRY": "1"}
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "datagen.cli", "push", *args], env=env, capture_output=True,
                          text=True, timeout=240)


def test_push_uploads_export_and_card_in_one_commit(run_dir: Path, hub: HubTestServer, tmp_path: Path) -> None:
    done = push([str(run_dir), "me/reviewed", "--private"], hub, tmp_path)
    assert done.returncode == 0, done.stderr
    repo = hub.repos["me/reviewed"]
    assert repo["private"] is True and repo["type"] == "dataset"
    assert len(hub.commits) == 1
    local = sorted(p.relative_to(run_dir / "export").as_posix() for p in (run_dir / "export").rglob("*") if p.is_file())
    assert sorted(repo["files"]) == local and "README.md" in local
    assert repo["files"]["messages.jsonl"] == (run_dir / "export" / "messages.jsonl").read_bytes()
    assert repo["files"]["README.md"].startswith(b"---\n")


def test_dry_run_lists_files_and_calls_nothing(run_dir: Path, hub: HubTestServer, tmp_path: Path) -> None:
    done = push([str(run_dir), "me/reviewed", "--dry-run"], hub, tmp_path)
    assert done.returncode == 0, done.stderr
    size = (run_dir / "export" / "alpaca.json").stat().st_size
    assert f"{size:,d}  alpaca.json" in done.stdout and "README.md" in done.stdout
    assert done.stdout.strip().splitlines()[-1].endswith("-> datasets/me/reviewed")
    assert sum(hub.calls.values()) == 0


def test_bad_token_is_one_line_and_non_zero(run_dir: Path, hub: HubTestServer, tmp_path: Path) -> None:
    done = push([str(run_dir), "me/reviewed"], hub, tmp_path, token="hf_wrong")
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "401" in lines[0] and "HF_TOKEN" in lines[0], done.stderr
    assert "hf_wrong" not in done.stderr and not hub.commits


def test_no_token_is_one_line(run_dir: Path, hub: HubTestServer, tmp_path: Path) -> None:
    done = push([str(run_dir), "me/reviewed"], hub, tmp_path, token=None)
    assert done.returncode == 3 and done.stderr.strip().count("\n") == 0 and "HF_TOKEN" in done.stderr


def test_dropped_connections_are_retried(run_dir: Path, hub: HubTestServer, tmp_path: Path) -> None:
    hub.drop_first["create"] = 1
    hub.drop_first["commit"] = 1
    done = push([str(run_dir), "me/retried"], hub, tmp_path)
    assert done.returncode == 0, done.stderr
    assert hub.calls["create"] == 2 and hub.calls["commit"] == 2
    assert len(hub.commits) == 1 and "README.md" in hub.repos["me/retried"]["files"]
